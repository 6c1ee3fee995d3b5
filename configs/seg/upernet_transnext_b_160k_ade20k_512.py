# UPerNet 160k on ADE20K 512x512 with TransNeXt-Base: the official TransNeXt recipe (segmentation/upernet/
# configs/upernet_transnext_base_512x512_160k_ade20k_ss.py at DaiShiResearch/TransNeXt@c8a9974, mmseg 0.30.0);
# reported mIoU 53.0 (53.5 multi-scale + flip). 8 GPUs x 2 images; AdamW lr 6e-5, wd 0.05 (none on query_embedding,
# relative_pos_bias_local, cpb, temperature, norms); poly decay after a 1500-iteration warm-up; sliding-window test
# (512 crops, stride 341); drop path 0.7 (hard-coded in the official dense backbone). The official backbone (img_size=512,
# pretrain_size=224, is_extrapolation=False) interpolates a bias computed for 512x512 inputs: pos_bias='interpolation'
# (the same as the default extrapolation on 512 crops; the official multi-scale test differs between the two).
_base_ = [
    "../_base_/models/upernet.py",
    "../_base_/backbones/transnext_base.py",
    "../_base_/datasets/ade20k_512.py",
    "../_base_/schedules/seg_160k.py",
    "../_base_/seg_runtime.py",
]

model = dict(
    backbone=dict(
        _base_.backbone,
        model_kwargs=dict(drop_path_rate=0.7, pos_bias="interpolation", pos_bias_size=512),
        init_cfg=dict(type="Pretrained", checkpoint=_base_.backbone_checkpoint),
    ),
    decode_head=dict(in_channels=_base_.backbone_channels, num_classes=150),
    auxiliary_head=dict(in_channels=_base_.backbone_channels[2], num_classes=150),
    test_cfg=dict(mode="slide", crop_size=(512, 512), stride=(341, 341)),
)

train_dataloader = dict(batch_size=2)
optim_wrapper = dict(
    type="OptimWrapper",
    optimizer=dict(type="AdamW", lr=6e-05, betas=(0.9, 0.999), weight_decay=0.05),
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
