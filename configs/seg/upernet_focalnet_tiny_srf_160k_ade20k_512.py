# UPerNet 160k on ADE20K 512x512 with FocalNet-T (SRF): the official FocalNet recipe
# (segmentation/configs/focalnet/upernet_focalnet_tiny_patch4_512x512_160k_ade20k_srf.py at microsoft/FocalNet@e8514bd);
# reported mIoU 46.5 / 47.2 (single / multi-scale). 8 GPUs x 2 images; AdamW lr 6e-5, wd 0.01 (none on norms).
_base_ = [
    "../_base_/models/upernet.py",
    "../_base_/backbones/focalnet_tiny_srf.py",
    "../_base_/datasets/ade20k_512.py",
    "../_base_/schedules/seg_160k.py",
    "../_base_/seg_runtime.py",
]

model = dict(
    backbone=dict(
        _base_.backbone,
        # the official dense backbone's focal window 9; the output norms come from the family's dense recipe
        model_kwargs=dict(focal_windows=(9, 9, 9, 9), drop_path_rate=0.3),
        init_cfg=dict(type="Pretrained", checkpoint=_base_.backbone_checkpoint),
    ),
    decode_head=dict(in_channels=_base_.backbone_channels, num_classes=150),
    auxiliary_head=dict(in_channels=_base_.backbone_channels[2], num_classes=150),
)

train_dataloader = dict(batch_size=2)
optim_wrapper = dict(
    type="OptimWrapper",
    optimizer=dict(type="AdamW", lr=6e-05, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(
        custom_keys={
            "absolute_pos_embed": dict(decay_mult=0.0),
            "relative_position_bias_table": dict(decay_mult=0.0),
            "norm": dict(decay_mult=0.0),
        }
    ),
)
