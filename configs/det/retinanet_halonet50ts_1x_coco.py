# RetinaNet 1x on COCO with HaloNet-50ts. No HaloNet detection recipe was ever published: this is the BiFormer-S
# RetinaNet 1x recipe (configs/det/retinanet_biformer_s_1x_coco.py: 8 GPUs x 2 images, AdamW lr 1e-4, wd 1e-4,
# AMP with a static loss scale of 512), with what a BatchNorm backbone needs: BN statistics frozen (norm_eval) and
# the stem frozen, as for mmdet's ResNets. No result is claimed.
_base_ = [
    "../_base_/models/retinanet_fpn.py",
    "../_base_/backbones/halonet_50ts.py",
    "../_base_/datasets/coco_detection.py",
    "../_base_/schedules/det_1x.py",
    "../_base_/det_runtime.py",
]

model = dict(
    backbone=dict(
        _base_.backbone,
        model_kwargs=dict(drop_path_rate=0.2),
        norm_eval=True,
        frozen_stages=0,
        init_cfg=dict(type="Pretrained", checkpoint=_base_.backbone_checkpoint),
    ),
    neck=dict(in_channels=_base_.backbone_channels),
)

optim_wrapper = dict(
    type="AmpOptimWrapper",
    loss_scale=512.0,
    optimizer=dict(type="AdamW", lr=0.0001, betas=(0.9, 0.999), weight_decay=0.0001),
)
