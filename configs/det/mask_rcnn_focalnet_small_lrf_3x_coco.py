# Mask R-CNN 3x on COCO with FocalNet-S (LRF): the official FocalNet recipe
# (detection/configs/focalnet/mask_rcnn_focalnet_small_patch4_mstrain_480-800_adamw_3x_coco_lrf.py at
# microsoft/FocalNet@e8514bd); reported box / mask AP 49.3 / 43.8. Multi-scale 480-800 + crop, 8 GPUs x 2 images;
# AdamW lr 1e-4, wd 0.05 (none on norms); 36 epochs, lr x0.1 after epochs 27 and 33; mixed precision.
_base_ = [
    "../_base_/models/mask_rcnn_fpn.py",
    "../_base_/backbones/focalnet_small_lrf.py",
    "../_base_/datasets/coco_instance_ms_crop.py",
    "../_base_/schedules/det_1x.py",
    "../_base_/schedules/det_adamw_amp.py",
    "../_base_/det_runtime.py",
]

model = dict(
    backbone=dict(
        _base_.backbone,
        # the official dense backbone's focal window 9; the output norms come from the family's dense recipe
        model_kwargs=dict(focal_windows=(9, 9, 9, 9), drop_path_rate=0.5),
        init_cfg=dict(type="Pretrained", checkpoint=_base_.backbone_checkpoint),
    ),
    neck=dict(in_channels=_base_.backbone_channels),
)

train_cfg = dict(max_epochs=36)

param_scheduler = [
    dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type="MultiStepLR", begin=0, end=36, by_epoch=True, milestones=[27, 33], gamma=0.1),
]
