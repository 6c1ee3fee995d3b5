# 80k iterations: linear warm-up over 1000 iterations from 0.1x, then cosine decay to 1e-8x;
# evaluation and checkpoints every 4k iterations (Semantic FPN recipe of BiFormer, after UniFormer).
# (mmcv 1.x, used officially, scaled the decay curve by the warm-up factor from iteration 0; here the decay
# starts after the warm-up, which shifts it by under 2% of the schedule.)
train_cfg = dict(type="IterBasedTrainLoop", max_iters=80000, val_interval=4000)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
param_scheduler = [
    dict(type="LinearLR", start_factor=0.1, by_epoch=False, begin=0, end=1000),
    dict(type="CosineAnnealingLR", T_max=79000, eta_min_ratio=1e-8, by_epoch=False, begin=1000, end=80000),
]
default_hooks = dict(
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type="ParamSchedulerHook"),
    checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=4000, max_keep_ckpts=1, save_best="mIoU"),
    sampler_seed=dict(type="DistSamplerSeedHook"),
    visualization=dict(type="SegVisualizationHook"),
)
auto_scale_lr = dict(enable=False, base_batch_size=32)
