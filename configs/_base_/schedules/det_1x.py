# 12 epochs, linear warm-up over 500 iterations from 0.001x, lr x0.1 after epochs 8 and 11 (mmdet "1x").
# The optimizer is set by each config (BiFormer's detectors use different AdamW settings).
train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=12, val_interval=1)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
param_scheduler = [
    dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type="MultiStepLR", begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1),
]
# learning rates in the configs are for 16 images per step (8 GPUs x 2); --cfg-options auto_scale_lr.enable=True
# rescales them to another total batch size
auto_scale_lr = dict(enable=False, base_batch_size=16)
