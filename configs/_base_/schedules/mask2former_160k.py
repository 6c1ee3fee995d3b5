# Mask2Former 160k iterations (mmseg's mask2former_r50_8xb2-160k_ade20k-512x512.py): AdamW lr 1e-4, wd 0.05,
# eps 1e-8, gradient norm clipped at 0.01, poly (power 0.9) decay to 0 without warm-up; evaluation and checkpoints
# every 5k iterations. Learning rates are for 16 images per step; a leaf sets the per-parameter rules.
optim_wrapper = dict(
    type="OptimWrapper",
    optimizer=dict(type="AdamW", lr=0.0001, weight_decay=0.05, eps=1e-8, betas=(0.9, 0.999)),
    clip_grad=dict(max_norm=0.01, norm_type=2),
)
train_cfg = dict(type="IterBasedTrainLoop", max_iters=160000, val_interval=5000)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
param_scheduler = [dict(type="PolyLR", eta_min=0, power=0.9, begin=0, end=160000, by_epoch=False)]
default_hooks = dict(
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type="ParamSchedulerHook"),
    checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=5000, save_best="mIoU"),
    sampler_seed=dict(type="DistSamplerSeedHook"),
    visualization=dict(type="SegVisualizationHook"),
)
auto_scale_lr = dict(enable=False, base_batch_size=16)
