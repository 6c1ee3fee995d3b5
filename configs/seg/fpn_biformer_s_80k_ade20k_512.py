# Semantic FPN 80k on ADE20K 512x512 with BiFormer-S: the official BiFormer recipe (semantic_segmentation/configs/
# ade20k/sfpn.biformer_small.py at rayleizhu/BiFormer@1697bbb); reported mIoU 48.9.
# 8 GPUs x 4 images; AdamW lr 2e-4, wd 1e-4; AMP, loss scale 512.
_base_ = [
    "../_base_/models/fpn_seg.py",
    "../_base_/backbones/biformer_small.py",
    "../_base_/datasets/ade20k_512.py",
    "../_base_/schedules/seg_80k.py",
    "../_base_/seg_runtime.py",
]

model = dict(
    backbone=dict(
        _base_.backbone,
        # 8 regions per side at 512 px; mask_padding=False keeps the official auto_pad behaviour
        model_kwargs=dict(n_win=8, mask_padding=False, drop_path_rate=0.15),
        init_cfg=dict(type="Pretrained", checkpoint=_base_.backbone_checkpoint),
    ),
    neck=dict(in_channels=_base_.backbone_channels),
    decode_head=dict(num_classes=150),
)
# the official backbone converts its BatchNorms to SyncBN (distributed GPU runs only; BN elsewhere)
sync_bn = "torch"

train_dataloader = dict(batch_size=4)
optim_wrapper = dict(
    type="AmpOptimWrapper",
    loss_scale=512.0,
    optimizer=dict(type="AdamW", lr=0.0002, weight_decay=0.0001),
)
