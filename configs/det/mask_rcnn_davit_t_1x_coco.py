# Mask R-CNN 1x on COCO with DaViT-T: the official DaViT recipe (mmdet/configs/davit_maskrcnn_1x_coco.py at
# dingmyu/davit@fc79470, mmdet 2.x); reported box / mask AP 45.0 / 41.1. 8 GPUs x 2 images; AdamW lr 1e-4, wd 0.05
# on every parameter, fp32; the DETR-style multi-scale + crop augmentation even for 1x.
# The official repository holds configs for DaViT-T only; the -S / -B leaves change the backbone and nothing else.
_base_ = [
    "../_base_/models/mask_rcnn_fpn.py",
    "../_base_/backbones/davit_tiny.py",
    "../_base_/datasets/coco_instance.py",
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

# augmentation from DETR / Sparse R-CNN: a multi-scale resize, or a resize, an absolute-range crop and a second one
_scales = [(480, 1333), (512, 1333), (544, 1333), (576, 1333), (608, 1333), (640, 1333), (672, 1333), (704, 1333),
           (736, 1333), (768, 1333), (800, 1333)]  # fmt: skip
train_pipeline = [
    dict(type="LoadImageFromFile", backend_args=None),
    dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
    dict(type="RandomFlip", prob=0.5),
    dict(
        type="RandomChoice",
        transforms=[
            [dict(type="RandomChoiceResize", scales=_scales, keep_ratio=True)],
            [
                dict(type="RandomChoiceResize", scales=[(400, 1333), (500, 1333), (600, 1333)], keep_ratio=True),
                dict(type="RandomCrop", crop_type="absolute_range", crop_size=(384, 600), allow_negative_crop=True),
                dict(type="RandomChoiceResize", scales=_scales, keep_ratio=True),
            ],
        ],
    ),
    dict(type="PackDetInputs"),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))

optim_wrapper = dict(
    type="OptimWrapper", optimizer=dict(type="AdamW", lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05)
)
