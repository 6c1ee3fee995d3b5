# Mask R-CNN 1x on COCO with SHViT-S4: the official SHViT recipe (downstream/configs/mask_rcnn_shvit_s4_fpn_1x_coco.py
# at ysj9909/SHViT@6a729cc, mmdet 2.25); reported box / mask AP 39.0 / 35.9.
# 8 GPUs x 2 images; AdamW lr 1e-4, wd 0.05; 1x with 500 linear warm-up iterations; no gradient clipping.
_base_ = [
    "../_base_/models/mask_rcnn_fpn.py",
    "../_base_/backbones/shvit_s4.py",
    "../_base_/datasets/coco_instance.py",
    "../_base_/schedules/det_1x.py",
    "../_base_/det_runtime.py",
]

model = dict(
    backbone=dict(_base_.backbone, init_cfg=dict(type="Pretrained", checkpoint=_base_.backbone_checkpoint)),
    # two transposed-conv levels (strides 8 and 4) under the backbone's 16/32/64: the five levels the RPN
    # (4 ... 64) and the RoI extractors (4 ... 32) expect
    neck=dict(
        _delete_=True,
        type="EfficientViTFPN",
        in_channels=_base_.backbone_channels,
        out_channels=256,
        start_level=0,
        num_outs=5,
        num_extra_trans_convs=2,
    ),
)

# the official paramwise keys (attention_biases) name EfficientViT parameters SHViT does not have
optim_wrapper = dict(
    type="OptimWrapper",
    optimizer=dict(type="AdamW", lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05),
)
