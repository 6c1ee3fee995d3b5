# The optimizer of the Swin-style detection recipes (FocalNet's Mask R-CNN 1x / 3x): AdamW, lr 1e-4 for 16
# images, weight decay 0.05 except on position tables and norms, mixed precision. The schedule comes from
# det_1x.py, with the leaf's milestones.
optim_wrapper = dict(
    type="AmpOptimWrapper",
    optimizer=dict(type="AdamW", lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(
        custom_keys={
            "absolute_pos_embed": dict(decay_mult=0.0),
            "relative_position_bias_table": dict(decay_mult=0.0),
            "norm": dict(decay_mult=0.0),
        }
    ),
)
