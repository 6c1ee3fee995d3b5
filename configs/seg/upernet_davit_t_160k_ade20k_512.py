# UPerNet 160k on ADE20K 512x512 with DaViT-T: the official DaViT recipe (mmseg/configs/
# upernet_davit_512x512_160k_ade20k.py at dingmyu/davit@fc79470, mmseg 0.x); reported mIoU 46.3 (multi-scale +
# flip). 8 GPUs x 2 images; AdamW lr 6e-5, wd 0.01 on every parameter; poly decay after a 1500-iteration warm-up.
# The official repository holds configs for DaViT-T only; the -S / -B leaves change the backbone and nothing else.
_base_ = [
    "../_base_/models/upernet.py",
    "../_base_/backbones/davit_tiny.py",
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
    # the official heads use BN (per-GPU statistics, 2 images each), not SyncBN (its model config says "# SyncBN" but
    # sets BN)
    decode_head=dict(
        in_channels=_base_.backbone_channels, num_classes=150, norm_cfg=dict(type="BN", requires_grad=True)
    ),
    auxiliary_head=dict(
        in_channels=_base_.backbone_channels[2], num_classes=150, norm_cfg=dict(type="BN", requires_grad=True)
    ),
)

train_dataloader = dict(batch_size=2)
optim_wrapper = dict(type="OptimWrapper", optimizer=dict(type="AdamW", lr=6e-05, betas=(0.9, 0.999), weight_decay=0.01))
