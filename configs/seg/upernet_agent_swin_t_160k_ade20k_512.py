# UPerNet 160k on ADE20K 512x512 with Agent-Swin-T: the official Agent Attention recipe (downstream/segmentation/
# configs/agent_swin/upernet_agent_swin_t_9-12-14-7.py at LeapLabTHU/Agent-Attention, mmseg 0.28); reported mIoU
# 46.68. 8 GPUs x 2 images; AdamW lr 6e-5, wd 0.01 (none on position tables, norms and agent biases); drop path
# 0.3; poly decay after a 1500-iteration linear warm-up; SyncBN heads.
_base_ = [
    "../_base_/models/upernet.py",
    "../_base_/backbones/agent_swin_tiny.py",
    "../_base_/datasets/ade20k_512.py",
    "../_base_/schedules/seg_160k.py",
    "../_base_/seg_runtime.py",
]

model = dict(
    backbone=dict(
        _base_.backbone,
        model_kwargs=dict(drop_path_rate=0.3),
        init_cfg=dict(type="Pretrained", checkpoint=_base_.backbone_checkpoint),
    ),
    decode_head=dict(in_channels=_base_.backbone_channels, num_classes=150),
    auxiliary_head=dict(in_channels=_base_.backbone_channels[2], num_classes=150),
)

train_dataloader = dict(batch_size=2)
_no_decay = ("absolute_pos_embed", "relative_position_bias_table", "norm")
_no_decay += ("an_bias", "na_bias", "ah_bias", "aw_bias", "ha_bias", "wa_bias")
optim_wrapper = dict(
    type="OptimWrapper",
    optimizer=dict(type="AdamW", lr=6e-05, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={k: dict(decay_mult=0.0) for k in _no_decay}),
)
