# Semantic FPN 80k on ADE20K 512x512 with BiFormer-B: the official recipe (sfpn.biformer_base.py); reported mIoU 49.9.
_base_ = ['./fpn_biformer_s_80k_ade20k_512.py']

model = dict(
    backbone=dict(
        model_name='biformer_base',
        model_kwargs=dict(n_win=8, mask_padding=False, drop_path_rate=0.3),
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/biformer_base_in1k.pth'),
    ),
    neck=dict(in_channels=[96, 192, 384, 768]),
)
