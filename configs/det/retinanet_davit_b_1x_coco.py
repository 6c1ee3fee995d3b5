# RetinaNet 1x on COCO with DaViT-B: the DaViT-T recipe (retinanet_davit_t_1x_coco.py) with the
# backbone changed; the official repository (dingmyu/davit@fc79470) released DaViT-B checkpoints but no config.
_base_ = ["./retinanet_davit_t_1x_coco.py"]

model = dict(
    backbone=dict(model_name="davit_base", init_cfg=dict(checkpoint="checkpoints/davit_base_in1k.pth")),
    neck=dict(in_channels=[128, 256, 512, 1024]),
)
