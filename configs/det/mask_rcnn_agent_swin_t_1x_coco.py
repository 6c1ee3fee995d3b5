# Mask R-CNN 1x on COCO with Agent-Swin-T: the official Agent Attention recipe (downstream/detection/configs/
# agent_swin/agent_swin_t_mrcnn_1x_9-12-14-7.py at LeapLabTHU/Agent-Attention, mmdet 2.25); reported box / mask AP
# 44.6 / 40.7. 8 GPUs x 2 images; AdamW lr 1e-4, wd 0.05 (none on position tables, norms and agent biases), fp32;
# drop path 0.1; the DETR-style multi-scale + crop augmentation; lr x0.1 after epochs 8 and 11.
_base_ = [
    "../_base_/models/mask_rcnn_fpn.py",
    "../_base_/backbones/agent_swin_tiny.py",
    "../_base_/datasets/coco_instance_ms_crop.py",
    "../_base_/schedules/det_1x.py",
    "../_base_/det_runtime.py",
]

model = dict(
    backbone=dict(
        _base_.backbone,
        model_kwargs=dict(drop_path_rate=0.1),
        init_cfg=dict(type="Pretrained", checkpoint=_base_.backbone_checkpoint),
    ),
    neck=dict(in_channels=_base_.backbone_channels),
)

_no_decay = ("absolute_pos_embed", "relative_position_bias_table", "norm")
_no_decay += ("an_bias", "na_bias", "ah_bias", "aw_bias", "ha_bias", "wa_bias")
optim_wrapper = dict(
    type="OptimWrapper",
    optimizer=dict(type="AdamW", lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={k: dict(decay_mult=0.0) for k in _no_decay}),
)
