# Mask R-CNN 1x on COCO with TransNeXt-Small: the official TransNeXt recipe (detection/maskrcnn/configs/
# mask_rcnn_transnext_small_fpn_1x_coco.py at DaiShiResearch/TransNeXt@c8a9974, mmdet 2.28.2); reported box / mask AP
# 51.1 / 45.5. 8 GPUs x 2 images; AdamW lr 1e-4, wd 0.05 (none on query_embedding, relative_pos_bias_local, cpb,
# temperature, norms) (fp32); drop path 0.6 (hard-coded in the official dense backbone).
# The official backbone (img_size=800, pretrain_size=224, is_extrapolation=False) computes its relative position bias
# for 800x800 inputs and interpolates it to each input: pos_bias='interpolation', pos_bias_size=800.
_base_ = [
    "../_base_/models/mask_rcnn_fpn.py",
    "../_base_/backbones/transnext_small.py",
    "../_base_/datasets/coco_instance.py",
    "../_base_/schedules/det_1x.py",
    "../_base_/det_runtime.py",
]

model = dict(
    backbone=dict(
        _base_.backbone,
        model_kwargs=dict(drop_path_rate=0.6, pos_bias="interpolation", pos_bias_size=800),
        init_cfg=dict(type="Pretrained", checkpoint=_base_.backbone_checkpoint),
    ),
    neck=dict(in_channels=_base_.backbone_channels),
)

optim_wrapper = dict(
    type="OptimWrapper",
    optimizer=dict(type="AdamW", lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(
        custom_keys={
            "query_embedding": dict(decay_mult=0.0),
            "relative_pos_bias_local": dict(decay_mult=0.0),
            "cpb": dict(decay_mult=0.0),
            "temperature": dict(decay_mult=0.0),
            "norm": dict(decay_mult=0.0),
        }
    ),
)
