# UPerNet 160k on ADE20K 512x512 with DaViT-S: the DaViT-T recipe (upernet_davit_t_160k_ade20k_512.py) with the
# backbone changed; the official repository (dingmyu/davit@fc79470) released DaViT-S checkpoints but no config.
_base_ = ["./upernet_davit_t_160k_ade20k_512.py"]

model = dict(
    backbone=dict(model_name="davit_small", init_cfg=dict(checkpoint="checkpoints/davit_small_in1k.pth")),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384),
)
