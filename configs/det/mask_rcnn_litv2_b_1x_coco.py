# Mask R-CNN 1x on COCO with LITv2-B, HiLo window 2: the official LITv2 recipe (detection/configs/litv2/
# mask_rcnn_litv2_b_fpn_1x_coco.py at ziplab/LITv2@7501c86, whose base model file no longer exists there
# and whose mmdet-2 optimizer keys mmdet 3 ignores: written here for mmengine); reported box / mask AP 47.3 / 42.6.
# 8 GPUs x 2 images; AdamW lr 2e-4, wd 1e-4 (none on norms), DTM offset convs at 0.01x lr; mixed precision.
_base_ = [
    "../_base_/models/mask_rcnn_fpn.py",
    "../_base_/backbones/litv2_base.py",
    "../_base_/datasets/coco_instance.py",
    "../_base_/schedules/det_1x.py",
    "../_base_/det_runtime.py",
]

model = dict(
    backbone=dict(
        _base_.backbone,
        # local window 2 in stage 3 (stage 4 is plain attention); padding unmasked as in the official backbone
        model_kwargs=dict(local_ws=(0, 0, 2, 1), mask_padding=False, drop_path_rate=0.3),
        init_cfg=dict(type="Pretrained", checkpoint=_base_.backbone_checkpoint),
    ),
    neck=dict(in_channels=_base_.backbone_channels),
)

optim_wrapper = dict(
    type="AmpOptimWrapper",
    loss_scale="dynamic",
    optimizer=dict(type="AdamW", lr=0.0002, betas=(0.9, 0.999), weight_decay=0.0001),
    paramwise_cfg=dict(custom_keys={"norm": dict(decay_mult=0.0), "conv_offset": dict(lr_mult=0.01)}),
)
