# RetinaNet 1x on COCO with SHViT-S4: the official SHViT recipe (downstream/configs/retinanet_shvit_s4_fpn_1x_coco.py
# at ysj9909/SHViT@6a729cc, mmdet 2.25); reported box AP 38.8 (AP50 59.8, AP75 41.1).
# 8 GPUs x 2 images; AdamW lr 1e-4, wd 0.05; 1x with 500 linear warm-up iterations; no gradient clipping.
_base_ = [
    "../_base_/models/retinanet_fpn.py",
    "../_base_/backbones/shvit_s4.py",
    "../_base_/datasets/coco_detection.py",
    "../_base_/schedules/det_1x.py",
    "../_base_/det_runtime.py",
]

model = dict(
    backbone=dict(_base_.backbone, init_cfg=dict(type="Pretrained", checkpoint=_base_.backbone_checkpoint)),
    # one transposed-conv level (stride 8) under the backbone's 16/32/64 and one stride-2 conv on the last
    # backbone map (stride 128): the five levels RetinaNet's anchors expect (8 ... 128)
    neck=dict(
        _delete_=True,
        type="EfficientViTFPN",
        in_channels=_base_.backbone_channels,
        out_channels=256,
        start_level=0,
        add_extra_convs="on_input",
        num_outs=5,
        num_extra_trans_convs=1,
    ),
)

# the official paramwise keys (attention_biases) name EfficientViT parameters SHViT does not have
optim_wrapper = dict(
    type="OptimWrapper",
    optimizer=dict(type="AdamW", lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05),
)
