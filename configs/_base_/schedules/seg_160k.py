# 160k iterations: linear warm-up over 1500 iterations from 1e-6x, then poly (power 1) decay to 0;
# evaluation and checkpoints every 16k iterations (UPerNet recipe of BiFormer, after UniFormer / CSWin).
# (mmcv 1.x, used officially, scaled the decay curve by the warm-up factor from iteration 0; here the decay
# starts after the warm-up, which shifts it by under 2% of the schedule.)
train_cfg = dict(type="IterBasedTrainLoop", max_iters=160000, val_interval=16000)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type="PolyLR", power=1.0, eta_min=0.0, by_epoch=False, begin=1500, end=160000),
]
default_hooks = dict(
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type="ParamSchedulerHook"),
    checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=16000, max_keep_ckpts=1, save_best="mIoU"),
    sampler_seed=dict(type="DistSamplerSeedHook"),
    visualization=dict(type="SegVisualizationHook"),
)
auto_scale_lr = dict(enable=False, base_batch_size=16)
