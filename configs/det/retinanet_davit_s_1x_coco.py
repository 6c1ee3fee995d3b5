# RetinaNet 1x on COCO with DaViT-S: the DaViT-T recipe (retinanet_davit_t_1x_coco.py) with the
# backbone changed; the official repository (dingmyu/davit@fc79470) released DaViT-S checkpoints but no config.
_base_ = ["./retinanet_davit_t_1x_coco.py"]

model = dict(
    backbone=dict(model_name="davit_small", init_cfg=dict(checkpoint="checkpoints/davit_small_in1k.pth")),
    neck=dict(in_channels=[96, 192, 384, 768]),
)
