# DINO 12 epochs (mmdet's dino-4scale_r50_8xb2-12e_coco.py): AdamW lr 1e-4, wd 1e-4, gradient norm clipped at 0.1,
# lr x0.1 after epoch 11, no warm-up. Learning rates are for 16 images per step; a leaf sets the per-parameter rules.
optim_wrapper = dict(
    type="OptimWrapper",
    optimizer=dict(type="AdamW", lr=0.0001, weight_decay=0.0001),
    clip_grad=dict(max_norm=0.1, norm_type=2),
)
train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=12, val_interval=1)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
param_scheduler = [dict(type="MultiStepLR", begin=0, end=12, by_epoch=True, milestones=[11], gamma=0.1)]
auto_scale_lr = dict(enable=False, base_batch_size=16)
