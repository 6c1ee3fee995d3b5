# Semantic FPN 80k on ADE20K 512x512 with HaloNet-50ts. No HaloNet segmentation recipe was ever published: this is
# the BiFormer-S Semantic FPN recipe (configs/seg/fpn_biformer_s_80k_ade20k_512.py: 8 GPUs x 4 images, AdamW lr
# 2e-4, wd 1e-4, AMP with loss scale 512, SyncBN in distributed runs). No result is claimed.
_base_ = [
    "../_base_/models/fpn_seg.py",
    "../_base_/backbones/halonet_50ts.py",
    "../_base_/datasets/ade20k_512.py",
    "../_base_/schedules/seg_80k.py",
    "../_base_/seg_runtime.py",
]

model = dict(
    backbone=dict(
        _base_.backbone,
        model_kwargs=dict(drop_path_rate=0.15),
        init_cfg=dict(type="Pretrained", checkpoint=_base_.backbone_checkpoint),
    ),
    neck=dict(in_channels=_base_.backbone_channels),
    decode_head=dict(num_classes=150),
)
sync_bn = "torch"

train_dataloader = dict(batch_size=4)
optim_wrapper = dict(
    type="AmpOptimWrapper",
    loss_scale=512.0,
    optimizer=dict(type="AdamW", lr=0.0002, weight_decay=0.0001),
)
