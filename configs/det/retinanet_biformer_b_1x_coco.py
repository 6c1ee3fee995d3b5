# RetinaNet 1x on COCO with BiFormer-B: the official recipe (retinanet.1x.biformer_base.py); reported box AP 47.1.
_base_ = ['./retinanet_biformer_s_1x_coco.py']

model = dict(
    backbone=dict(
        model_name='biformer_base',
        model_kwargs=dict(n_win=16, mask_padding=False, drop_path_rate=0.3),
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/biformer_base_in1k.pth'),
    ),
    neck=dict(in_channels=[96, 192, 384, 768]),
)
