# Mask R-CNN 1x on COCO with Agent-Swin-S: the official recipe (downstream/detection/configs/agent_swin/
# agent_swin_s_mrcnn_1x_9-12-14-7.py); reported box / mask AP 47.2 / 42.7. The -T recipe with the -S backbone
# (drop path 0.1 as well).
_base_ = ["./mask_rcnn_agent_swin_t_1x_coco.py"]

model = dict(
    backbone=dict(model_name="agent_swin_small", init_cfg=dict(checkpoint="checkpoints/agent_swin_small_in1k.pth")),
    neck=dict(in_channels=[96, 192, 384, 768]),
)
