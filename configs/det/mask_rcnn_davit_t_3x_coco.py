# Mask R-CNN 3x on COCO with DaViT-T: the official DaViT recipe (mmdet/configs/davit_maskrcnn_3x_coco.py at
# dingmyu/davit@fc79470); reported box / mask AP 47.4 / 42.9. The 1x recipe with drop path 0.2 and 36 epochs
# (lr x0.1 after epochs 27 and 33).
_base_ = ["./mask_rcnn_davit_t_1x_coco.py"]

model = dict(backbone=dict(model_kwargs=dict(drop_path_rate=0.2)))

train_cfg = dict(max_epochs=36)
param_scheduler = [
    dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type="MultiStepLR", begin=0, end=36, by_epoch=True, milestones=[27, 33], gamma=0.1),
]
