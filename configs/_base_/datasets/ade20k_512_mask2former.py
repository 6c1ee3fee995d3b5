# ADE20K 512x512 crops with the training augmentation of mmseg's Mask2Former configs (a random shortest edge in
# 256..1024, long side <= 2048, instead of ade20k_512.py's ratio range); validation and test as in ade20k_512.py.
_base_ = ["./ade20k_512.py"]

train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations", reduce_zero_label=True),
    dict(
        type="RandomChoiceResize",
        scales=[int(512 * x * 0.1) for x in range(5, 21)],
        resize_type="ResizeShortestEdge",
        max_size=2048,
    ),
    dict(type="RandomCrop", crop_size={{_base_.crop_size}}, cat_max_ratio=0.75),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PhotoMetricDistortion"),
    dict(type="PackSegInputs"),
]
train_dataloader = dict(batch_size=2, dataset=dict(pipeline=train_pipeline))
