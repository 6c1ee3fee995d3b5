# Semantic FPN 80k on ADE20K 512x512 with ConViT-S through the simple feature pyramid. ConViT has no published
# segmentation recipe: this is the BiFormer-S Semantic FPN recipe (configs/seg/fpn_biformer_s_80k_ade20k_512.py:
# 8 GPUs x 4 images, AdamW lr 2e-4, wd 1e-4, AMP with a static loss scale of 512). No result is claimed.
_base_ = [
    "../_base_/models/fpn_seg.py",
    "../_base_/backbones/convit_small.py",
    "../_base_/datasets/ade20k_512.py",
    "../_base_/schedules/seg_80k.py",
    "../_base_/seg_runtime.py",
]

model = dict(
    backbone=dict(
        _base_.backbone,
        model_kwargs=dict(drop_path_rate=0.1, fused_gpsa=True),
        init_cfg=dict(type="Pretrained", checkpoint=_base_.backbone_checkpoint),
    ),
    neck=dict(in_channels=_base_.backbone_channels),
    decode_head=dict(num_classes=150),
)

train_dataloader = dict(batch_size=4)
optim_wrapper = dict(
    type="AmpOptimWrapper",
    loss_scale=512.0,
    optimizer=dict(type="AdamW", lr=0.0002, weight_decay=0.0001),
)
