# UPerNet 160k on ADE20K 512x512 with BiFormer-S: the official BiFormer recipe (semantic_segmentation/configs/
# ade20k/upernet.biformer_small.py at rayleizhu/BiFormer@1697bbb); reported mIoU 49.8 (50.8 multi-scale + flip).
# 8 GPUs x 2 images; AdamW lr 6e-5, wd 0.01 (none on norms and position tables); AMP, loss scale 512.
_base_ = [
    '../_base_/models/upernet.py',
    '../_base_/datasets/ade20k_512.py',
    '../_base_/schedules/seg_160k.py',
    '../_base_/seg_runtime.py',
]

model = dict(
    backbone=dict(
        model_name='biformer_small',
        # 8 regions per side at 512 px; mask_padding=False keeps the official auto_pad behaviour
        model_kwargs=dict(n_win=8, mask_padding=False, drop_path_rate=0.3),
        out_norm='ln2d',
        # the official ImageNet-1k checkpoint (biformer_small_best.pth in the BiFormer README), converted on load
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/biformer_small_in1k.pth'),
    ),
    decode_head=dict(in_channels=[64, 128, 256, 512], num_classes=150),
    auxiliary_head=dict(in_channels=256, num_classes=150),
)
# the official backbone converts its BatchNorms to SyncBN (distributed GPU runs only; BN elsewhere)
sync_bn = 'torch'

train_dataloader = dict(batch_size=2)
optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale=512.0,
    optimizer=dict(type='AdamW', lr=6e-05, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(
        custom_keys={
            'absolute_pos_embed': dict(decay_mult=0.0),
            'relative_position_bias_table': dict(decay_mult=0.0),
            'norm': dict(decay_mult=0.0),
        }
    ),
)
