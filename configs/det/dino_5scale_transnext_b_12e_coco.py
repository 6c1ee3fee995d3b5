# DINO 5-scale 12e on COCO with TransNeXt-Base: the official TransNeXt recipe (detection/dino/configs/
# dino-5scale_transnext_base-12e_coco.py at DaiShiResearch/TransNeXt@c8a9974, mmdet 3.0.0, over mmdet's DINO
# model, data and schedule, as here); reported box AP 57.1 (110M parameters). 8 GPUs x 1 image, gradients
# accumulated over 2 iterations (16 images per step); AdamW lr 1e-4, wd 0.05, gradient clip 0.1, lr x0.1 after
# epoch 11; backbone at 0.1x lr with the official per-parameter decay rules
# (_base_/schedules/transnext_query_paramwise.py); drop path 0.6 (hard-coded in the official DINO backbone);
# backbone levels: all four maps, ChannelMapper adds a fifth (stride 64).
# The official backbone (img_size=800, pretrain_size=224, is_extrapolation=False) computes the relative position
# bias for 800x800 inputs and interpolates it to each input: pos_bias='interpolation', pos_bias_size=800. The
# official config's mmdet 2.x key `fp16 = dict(loss_scale=512.)` is not read by mmdet 3.x (it trained in fp32).
_base_ = [
    "../_base_/models/dino_4scale.py",
    "../_base_/backbones/transnext_base.py",
    "../_base_/datasets/coco_detection_detr.py",
    "../_base_/schedules/dino_12e.py",
    "../_base_/det_runtime.py",
    "../_base_/schedules/transnext_query_paramwise.py",
]

num_levels = 5
model = dict(
    num_feature_levels=num_levels,
    backbone=dict(
        _base_.backbone,
        out_indices=(0, 1, 2, 3),
        model_kwargs=dict(drop_path_rate=0.6, pos_bias="interpolation", pos_bias_size=800),
        init_cfg=dict(type="Pretrained", checkpoint=_base_.backbone_checkpoint),
    ),
    neck=dict(in_channels=_base_.backbone_channels, num_outs=num_levels),
    encoder=dict(layer_cfg=dict(self_attn_cfg=dict(num_levels=num_levels))),
    decoder=dict(layer_cfg=dict(cross_attn_cfg=dict(num_levels=num_levels))),
)

optim_wrapper = dict(
    optimizer=dict(lr=0.0001, weight_decay=0.05),
    paramwise_cfg=dict(
        custom_keys=_base_.transnext_query_keys,
        bias_decay_mult=0.0,
        norm_decay_mult=0.0,
        flat_decay_mult=0.0,
    ),
    accumulative_counts=2,
)
train_dataloader = dict(batch_size=1)
