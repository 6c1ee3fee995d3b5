# COCO 2017 boxes with the DETR-family training augmentation of mmdet's DINO configs (flip, then a random short side
# in 480..800 with the long side <= 1333, or a short side in {400, 500, 600}, a random 384..600 crop and again a
# short side in 480..800); images without boxes are kept. Validation and test as in coco_detection.py.
_base_ = ["./coco_detection.py"]

_scales = [(480, 1333), (512, 1333), (544, 1333), (576, 1333), (608, 1333), (640, 1333), (672, 1333), (704, 1333),
           (736, 1333), (768, 1333), (800, 1333)]  # fmt: skip
train_pipeline = [
    dict(type="LoadImageFromFile", backend_args={{_base_.backend_args}}),
    dict(type="LoadAnnotations", with_bbox=True),
    dict(type="RandomFlip", prob=0.5),
    dict(
        type="RandomChoice",
        transforms=[
            [dict(type="RandomChoiceResize", scales=_scales, keep_ratio=True)],
            [
                # the ratio of every COCO train image is below 7
                dict(type="RandomChoiceResize", scales=[(400, 4200), (500, 4200), (600, 4200)], keep_ratio=True),
                dict(type="RandomCrop", crop_type="absolute_range", crop_size=(384, 600), allow_negative_crop=True),
                dict(type="RandomChoiceResize", scales=_scales, keep_ratio=True),
            ],
        ],
    ),
    dict(type="PackDetInputs"),
]
train_dataloader = dict(dataset=dict(filter_cfg=dict(filter_empty_gt=False), pipeline=train_pipeline))
