# RetinaNet 1x on COCO with BiFormer-B: the official BiFormer recipe (object_detection/configs/coco/
# retinanet.1x.biformer_base.py at rayleizhu/BiFormer@1697bbb); reported box AP 47.1.
# 8 GPUs x 2 images; AdamW lr 1e-4, wd 1e-4; AMP with a static loss scale of 512.
_base_ = [
    "../_base_/models/retinanet_fpn.py",
    "../_base_/backbones/biformer_base.py",
    "../_base_/datasets/coco_detection.py",
    "../_base_/schedules/det_1x.py",
    "../_base_/det_runtime.py",
]

model = dict(
    backbone=dict(
        _base_.backbone,
        # 16 regions per side at COCO resolution; mask_padding=False keeps the official auto_pad behaviour
        # (padded tokens take part in routing and attention)
        model_kwargs=dict(n_win=16, mask_padding=False, drop_path_rate=0.3),
        init_cfg=dict(type="Pretrained", checkpoint=_base_.backbone_checkpoint),
    ),
    neck=dict(in_channels=_base_.backbone_channels),
)

optim_wrapper = dict(
    type="AmpOptimWrapper",
    loss_scale=512.0,
    optimizer=dict(type="AdamW", lr=0.0001, betas=(0.9, 0.999), weight_decay=0.0001),
)
find_unused_parameters = True
