# Mask R-CNN 1x on COCO with BiFormer-B: the official BiFormer recipe (object_detection/configs/coco/
# maskrcnn.1x.biformer_base.py at rayleizhu/BiFormer@1697bbb); reported box / mask AP 48.6 / 43.7.
# 8 GPUs x 2 images; AdamW lr 1e-4, wd 0.05 (none on norms and position tables); AMP, loss scale 512.
_base_ = [
    "../_base_/models/mask_rcnn_fpn.py",
    "../_base_/backbones/biformer_base.py",
    "../_base_/datasets/coco_instance.py",
    "../_base_/schedules/det_1x.py",
    "../_base_/det_runtime.py",
]

model = dict(
    backbone=dict(
        _base_.backbone,
        # 16 regions per side at COCO resolution; mask_padding=False keeps the official auto_pad behaviour
        model_kwargs=dict(n_win=16, mask_padding=False, drop_path_rate=0.3),
        init_cfg=dict(type="Pretrained", checkpoint=_base_.backbone_checkpoint),
    ),
    neck=dict(in_channels=_base_.backbone_channels),
)

optim_wrapper = dict(
    type="AmpOptimWrapper",
    loss_scale=512.0,
    optimizer=dict(type="AdamW", lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(
        custom_keys={
            "absolute_pos_embed": dict(decay_mult=0.0),
            "relative_position_bias_table": dict(decay_mult=0.0),
            "norm": dict(decay_mult=0.0),
        }
    ),
)
