# RetinaNet 1x on COCO with LITv2-M, HiLo window 4: the official LITv2 recipe (detection/configs/litv2/
# retinanet_litv2_m_fpn_1x_coco_ws_4.py at ziplab/LITv2@7501c86, whose mmdet-2 optimizer keys mmdet 3 ignores:
# written here for mmengine); reported box AP 45.8.
# 8 GPUs x 2 images; AdamW lr 1e-4, wd 1e-4 (none on norms), DTM offset convs at 0.01x lr; mixed precision.
_base_ = [
    "../_base_/models/retinanet_fpn.py",
    "../_base_/backbones/litv2_medium.py",
    "../_base_/datasets/coco_detection.py",
    "../_base_/schedules/det_1x.py",
    "../_base_/det_runtime.py",
]

model = dict(
    backbone=dict(
        _base_.backbone,
        # local window 4 in stage 3 (stage 4 is plain attention); padding unmasked as in the official backbone
        model_kwargs=dict(local_ws=(0, 0, 4, 1), mask_padding=False, drop_path_rate=0.2),
        init_cfg=dict(type="Pretrained", checkpoint=_base_.backbone_checkpoint),
    ),
    neck=dict(in_channels=_base_.backbone_channels),
)

optim_wrapper = dict(
    type="AmpOptimWrapper",
    loss_scale="dynamic",
    optimizer=dict(type="AdamW", lr=0.0001, betas=(0.9, 0.999), weight_decay=0.0001),
    paramwise_cfg=dict(custom_keys={"norm": dict(decay_mult=0.0), "conv_offset": dict(lr_mult=0.01)}),
)
