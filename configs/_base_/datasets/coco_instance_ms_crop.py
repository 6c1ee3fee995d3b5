# COCO instance segmentation with the multi-scale + crop training pipeline of the Swin / FocalNet detection
# recipes (mmdet 3.x transform names), 2 images per GPU; validation and test as in coco_instance.py.
_base_ = ["./coco_instance.py"]

_scales = [(480, 1333), (512, 1333), (544, 1333), (576, 1333), (608, 1333), (640, 1333), (672, 1333), (704, 1333),
           (736, 1333), (768, 1333), (800, 1333)]  # fmt: skip
# flip, then a random short side in 480..800 (long side <= 1333), or a short side in {400, 500, 600}, a random
# 384..600 crop and again a short side in 480..800 (the official AutoAugment policies, mmdet 3.x names)
train_pipeline = [
    dict(type="LoadImageFromFile", backend_args={{_base_.backend_args}}),
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
# 2 images per GPU on 8 GPUs = 16, as the official README's training commands
train_dataloader = dict(batch_size=2, dataset=dict(pipeline=train_pipeline))
