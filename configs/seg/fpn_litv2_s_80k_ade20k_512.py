# Semantic FPN 80k on ADE20K 512x512 with LITv2-S: the official LITv2 recipe (segmentation/configs/litv2/
# litv2_s_fpn_r50_512x512_80k_ade20k.py at ziplab/LITv2@7501c86, mmseg 0.x); reported mIoU 44.3.
# 8 GPUs x 2 images; AdamW lr 1e-4, wd 1e-4, poly decay (power 0.9, min lr 1e-6) over 80k iterations.
_base_ = [
    "../_base_/models/fpn_seg.py",
    "../_base_/backbones/litv2_small.py",
    "../_base_/datasets/ade20k_512.py",
    "../_base_/schedules/seg_80k.py",
    "../_base_/seg_runtime.py",
]

model = dict(
    backbone=dict(
        _base_.backbone,
        # the official mmseg backbone norms all four outputs (its mmdet twin skips the first)
        out_norm_levels=(0, 1, 2, 3),
        model_kwargs=dict(mask_padding=False, drop_path_rate=0.2),
        init_cfg=dict(type="Pretrained", checkpoint=_base_.backbone_checkpoint),
    ),
    neck=dict(in_channels=_base_.backbone_channels),
    decode_head=dict(num_classes=150),
)

train_dataloader = dict(batch_size=2)
optim_wrapper = dict(
    type="OptimWrapper",
    optimizer=dict(type="AdamW", lr=0.0001, weight_decay=0.0001),
    paramwise_cfg=dict(custom_keys={"conv_offset": dict(lr_mult=0.01)}),
)
# the official schedule: poly decay from the start (mmseg 0.x schedule_80k), no warm-up
param_scheduler = [dict(type="PolyLR", power=0.9, eta_min=1e-6, begin=0, end=80000, by_epoch=False)]
auto_scale_lr = dict(enable=False, base_batch_size=16)
