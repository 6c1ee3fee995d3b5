# Mask R-CNN 1x on COCO with Agent-PVT-T: the official recipe (downstream/detection/configs/agent_pvt/
# agent_pvt_t_mrcnn_1x_12-16-28-28.py at LeapLabTHU/Agent-Attention@207ce3e, mmdet 2; written here for mmdet 3);
# reported box / mask AP 41.4 / 38.7. 8 GPUs x 2 images; AdamW lr 2e-4, wd 1e-4; drop path 0.1.
_base_ = [
    "../_base_/models/mask_rcnn_fpn.py",
    "../_base_/backbones/agent_pvt_tiny.py",
    "../_base_/datasets/coco_instance.py",
    "../_base_/schedules/det_1x.py",
    "../_base_/det_runtime.py",
]

model = dict(
    backbone=dict(
        _base_.backbone,
        model_kwargs=dict(drop_path_rate=0.1),
        init_cfg=dict(type="Pretrained", checkpoint=_base_.backbone_checkpoint),
    ),
    neck=dict(in_channels=_base_.backbone_channels),
)

optim_wrapper = dict(type="OptimWrapper", optimizer=dict(type="AdamW", lr=0.0002, weight_decay=0.0001))
