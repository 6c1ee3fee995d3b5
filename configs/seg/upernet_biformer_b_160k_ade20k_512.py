# UPerNet 160k on ADE20K 512x512 with BiFormer-B: the official recipe (upernet.biformer_base.py); reported
# mIoU 51.0 (51.7 multi-scale + flip).
_base_ = ['./upernet_biformer_s_160k_ade20k_512.py']

model = dict(
    backbone=dict(
        model_name='biformer_base',
        model_kwargs=dict(n_win=8, mask_padding=False, drop_path_rate=0.4),
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/biformer_base_in1k.pth'),
    ),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384),
)
