# UPerNet 160k on ADE20K 512x512 with BiFormer-B: the official BiFormer recipe (semantic_segmentation/configs/
# ade20k/upernet.biformer_base.py at rayleizhu/BiFormer@1697bbb); reported mIoU 51.0 (51.7 multi-scale + flip).
# 8 GPUs x 2 images; AdamW lr 6e-5, wd 0.01 (none on norms and position tables); AMP, loss scale 512.
_base_ = [
    "../_base_/models/upernet.py",
    "../_base_/backbones/biformer_base.py",
    "../_base_/datasets/ade20k_512.py",
    "../_base_/schedules/seg_160k.py",
    "../_base_/seg_runtime.py",
]

model = dict(
    backbone=dict(
        _base_.backbone,
        # 8 regions per side at 512 px; mask_padding=False keeps the official auto_pad behaviour
        model_kwargs=dict(n_win=8, mask_padding=False, drop_path_rate=0.4),
        init_cfg=dict(type="Pretrained", checkpoint=_base_.backbone_checkpoint),
    ),
    decode_head=dict(in_channels=_base_.backbone_channels, num_classes=150),
    auxiliary_head=dict(in_channels=_base_.backbone_channels[2], num_classes=150),
)
# the official backbone converts its BatchNorms to SyncBN (distributed GPU runs only; BN elsewhere)
sync_bn = "torch"

train_dataloader = dict(batch_size=2)
optim_wrapper = dict(
    type="AmpOptimWrapper",
    loss_scale=512.0,
    optimizer=dict(type="AdamW", lr=6e-05, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(
        custom_keys={
            "absolute_pos_embed": dict(decay_mult=0.0),
            "relative_position_bias_table": dict(decay_mult=0.0),
            "norm": dict(decay_mult=0.0),
        }
    ),
)
