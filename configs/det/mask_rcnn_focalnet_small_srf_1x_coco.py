# Mask R-CNN 1x on COCO with FocalNet-S (SRF): the official FocalNet recipe
# (detection/configs/focalnet/mask_rcnn_focalnet_small_patch4_mstrain_480-800_adamw_1x_coco_srf.py at
# microsoft/FocalNet@e8514bd); reported box / mask AP 48.0 / 42.7. Multi-scale 480-800 + crop, 8 GPUs x 2 images;
# AdamW lr 1e-4, wd 0.05 (none on norms); 12 epochs, lr x0.1 after epochs 9 and 11; mixed precision.
_base_ = [
    "../_base_/models/mask_rcnn_fpn.py",
    "../_base_/backbones/focalnet_small_srf.py",
    "../_base_/datasets/coco_instance_ms_crop.py",
    "../_base_/schedules/det_1x.py",
    "../_base_/schedules/det_adamw_amp.py",
    "../_base_/det_runtime.py",
]

model = dict(
    backbone=dict(
        _base_.backbone,
        # the official dense backbone's focal window 9; the output norms come from the family's dense recipe
        model_kwargs=dict(focal_windows=(9, 9, 9, 9), drop_path_rate=0.2),
        init_cfg=dict(type="Pretrained", checkpoint=_base_.backbone_checkpoint),
    ),
    neck=dict(in_channels=_base_.backbone_channels),
)

param_scheduler = [
    dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type="MultiStepLR", begin=0, end=12, by_epoch=True, milestones=[9, 11], gamma=0.1),
]
