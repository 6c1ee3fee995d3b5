# Mask2Former 160k on ADE20K 512x512 with TransNeXt-Small: the official TransNeXt recipe (segmentation/
# mask2former/configs/mask2former_transnext_small_160k_ade20k-512x512.py at DaiShiResearch/TransNeXt@c8a9974,
# mmseg 1.0.0, over mmseg's Mask2Former model, data and schedule, as here); reported mIoU 54.1 (69.0M parameters).
# 8 GPUs x 2 images; AdamW lr 1e-4, wd 0.05, gradient clip 0.01, poly decay; backbone at 0.1x lr with the official
# per-parameter decay rules (_base_/schedules/transnext_query_paramwise.py), no decay on the decoder's query_embed /
# query_feat / level_embed; drop path 0.5 (hard-coded in the official Mask2Former backbone).
# The official backbone (img_size=512, pretrain_size=224, is_extrapolation=False) computes the relative position
# bias for 512x512 inputs and interpolates it to each input: pos_bias='interpolation', pos_bias_size=512.
_base_ = [
    "../_base_/models/mask2former.py",
    "../_base_/backbones/transnext_small.py",
    "../_base_/datasets/ade20k_512_mask2former.py",
    "../_base_/schedules/mask2former_160k.py",
    "../_base_/seg_runtime.py",
    "../_base_/schedules/transnext_query_paramwise.py",
]

model = dict(
    backbone=dict(
        _base_.backbone,
        model_kwargs=dict(drop_path_rate=0.5, pos_bias="interpolation", pos_bias_size=512),
        init_cfg=dict(type="Pretrained", checkpoint=_base_.backbone_checkpoint),
    ),
    decode_head=dict(in_channels=_base_.backbone_channels),
)

optim_wrapper = dict(
    paramwise_cfg=dict(
        custom_keys=dict(
            _base_.transnext_query_keys,
            **{
                f"decode_head.{name}": dict(lr_mult=1.0, decay_mult=0.0)
                for name in ("query_embed", "query_feat", "level_embed")
            },
        ),
        bias_decay_mult=0.0,
        norm_decay_mult=0.0,
        flat_decay_mult=0.0,
    ),
)
