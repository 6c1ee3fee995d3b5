# Semantic FPN 40k on ADE20K 512x512 with Agent-PVT-M: the official recipe (downstream/segmentation/configs/agent_pvt/
# fpn_agent_pvt_m_12-16-28-28.py at LeapLabTHU/Agent-Attention@207ce3e, mmseg 0.28); reported mIoU 44.30.
# 8 GPUs x 2 images; AdamW lr 2e-4, wd 1e-4, poly decay (power 0.9, to 0) over 40k iterations, no warm-up;
# drop path 0.2.
_base_ = [
    "../_base_/models/fpn_seg.py",
    "../_base_/backbones/agent_pvt_medium.py",
    "../_base_/datasets/ade20k_512.py",
    "../_base_/schedules/seg_80k.py",
    "../_base_/seg_runtime.py",
]

model = dict(
    backbone=dict(
        _base_.backbone,
        model_kwargs=dict(drop_path_rate=0.2),
        init_cfg=dict(type="Pretrained", checkpoint=_base_.backbone_checkpoint),
    ),
    neck=dict(in_channels=_base_.backbone_channels),
    decode_head=dict(num_classes=150),
)

train_dataloader = dict(batch_size=2)
optim_wrapper = dict(type="OptimWrapper", optimizer=dict(type="AdamW", lr=0.0002, weight_decay=0.0001))
# the official schedule (mmseg 0.x schedule_40k with the config's lr_config): poly decay from the start, no warm-up
train_cfg = dict(max_iters=40000, val_interval=4000)
param_scheduler = [dict(type="PolyLR", power=0.9, eta_min=0.0, begin=0, end=40000, by_epoch=False)]
auto_scale_lr = dict(enable=False, base_batch_size=16)
