# Mask R-CNN 1x on COCO with Agent-DeiT-S through the simple feature pyramid. The official repository has no DeiT
# detection recipe: this is its Agent-Swin-T Mask R-CNN 1x recipe (downstream/detection/configs/agent_swin/
# agent_swin_t_mrcnn_1x_9-12-14-7.py at LeapLabTHU/Agent-Attention): multi-scale 480-800 + crop, 8 GPUs x 2 images,
# AdamW lr 1e-4, wd 0.05 (none on norms and position tables), drop path 0.1, 12 epochs, lr x0.1 after epochs 8 and
# 11; mixed precision. No result is claimed. At 1333x800 the agent blocks see about 4,150 tokens (50x83) through 49
# agents each; the biases are resized to that grid in every forward.
_base_ = [
    "../_base_/models/mask_rcnn_fpn.py",
    "../_base_/backbones/agent_deit_small.py",
    "../_base_/datasets/coco_instance_ms_crop.py",
    "../_base_/schedules/det_1x.py",
    "../_base_/schedules/det_adamw_amp.py",
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

optim_wrapper = dict(
    paramwise_cfg=dict(
        custom_keys={
            "pos_embed": dict(decay_mult=0.0),
            "cls_token": dict(decay_mult=0.0),
            "norm": dict(decay_mult=0.0),
        }
    )
)
