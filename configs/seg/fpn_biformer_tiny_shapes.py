# Embedded demo: Semantic FPN on BiFormer-T (random init) on the synthetic shapes set, CPU-sized.
#   python tools/train.py configs/seg/fpn_biformer_tiny_shapes.py            # generates data/shapes_demo if missing
#   python tools/train.py configs/seg/fpn_biformer_tiny_shapes.py --resume   # continues from the last checkpoint
#   python tools/test.py configs/seg/fpn_biformer_tiny_shapes.py work_dirs/fpn_biformer_tiny_shapes/iter_800.pth
# 64 px images with 1-3 shapes of 12-24 px, 4 classes (background, circle, square, triangle); an image is mostly
# background, so predicting background everywhere scores mIoU ~0.22. Each class's hue lies within 90 degrees of
# its own, so colour narrows the class down to two and the outline decides: this keeps a from-scratch model
# far above chance within ~10 CPU minutes (tools/make_shapes.py --hard makes the harder set).
_base_ = ["../_base_/backbones/biformer_tiny.py"]
custom_imports = dict(
    imports=["mmseg.datasets", "visionattn.dense", "visionattn.dense.shapes"], allow_failed_imports=False
)
default_scope = "mmseg"

data_root = "data/shapes_demo"
# ShapesSpec settings: the dataset writes data_root with them where it is missing (tools/make_shapes.py does the same).
shapes = dict(
    img_size=64,
    num_train=1000,
    num_val=100,
    min_objects=1,
    max_objects=3,
    min_size=12.0,
    max_size=24.0,
    hue_spread=90.0,
    seed=0,
)
img_size = 64
max_iters = 800
batch_size = 16

norm_cfg = dict(type="BN", requires_grad=True)
model = dict(
    type="EncoderDecoder",
    data_preprocessor=dict(
        type="SegDataPreProcessor",
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_val=0,
        seg_pad_val=255,
        size=(img_size, img_size),
    ),
    backbone=dict(
        _base_.backbone,
        # 64 px -> 16/8/4/2 px maps; 4 regions per side (of 4x4, 2x2, 1x1 tokens in stages 1-3) keep routing
        # a real choice in stages 1-2; stage 4 attends globally.
        model_kwargs=dict(n_win=4, drop_path_rate=0.0),
        out_indices=(0, 1, 2, 3),
    ),
    neck=dict(type="FPN", in_channels=_base_.backbone_channels, out_channels=64, num_outs=4),
    decode_head=dict(
        type="FPNHead",
        in_channels=[64, 64, 64, 64],
        in_index=[0, 1, 2, 3],
        feature_strides=[4, 8, 16, 32],
        channels=64,
        dropout_ratio=0.0,
        num_classes=4,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
    ),
    train_cfg=dict(),
    test_cfg=dict(mode="whole"),
)

train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations"),
    # Shapes look the same flipped either way.
    dict(type="RandomFlip", prob=0.5, direction=["horizontal", "vertical"]),
    dict(type="PackSegInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations"),
    dict(type="PackSegInputs"),
]
train_dataloader = dict(
    batch_size=batch_size,
    num_workers=0,
    sampler=dict(type="InfiniteSampler", shuffle=True),
    dataset=dict(
        type="ShapesSegDataset",
        data_root=data_root,
        generate=shapes,
        data_prefix=dict(img_path="images/train", seg_map_path="annotations/semantic/train"),
        pipeline=train_pipeline,
    ),
)
val_dataloader = dict(
    batch_size=16,
    num_workers=0,
    sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(
        type="ShapesSegDataset",
        data_root=data_root,
        generate=shapes,
        data_prefix=dict(img_path="images/val", seg_map_path="annotations/semantic/val"),
        pipeline=test_pipeline,
    ),
)
test_dataloader = val_dataloader
val_evaluator = dict(type="IoUMetric", iou_metrics=["mIoU"])
test_evaluator = val_evaluator

optim_wrapper = dict(
    type="OptimWrapper",
    optimizer=dict(type="AdamW", lr=1e-3, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0),
    clip_grad=dict(max_norm=5.0),
)
param_scheduler = [
    dict(type="LinearLR", start_factor=0.01, by_epoch=False, begin=0, end=30),
    dict(type="CosineAnnealingLR", eta_min=2e-5, by_epoch=False, begin=30, end=max_iters),
]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=200)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")

default_hooks = dict(
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=10, log_metric_by_epoch=False),
    param_scheduler=dict(type="ParamSchedulerHook"),
    checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=100, max_keep_ckpts=2, save_last=True),
    sampler_seed=dict(type="DistSamplerSeedHook"),
    visualization=dict(type="SegVisualizationHook"),
)
env_cfg = dict(
    cudnn_benchmark=False, mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0), dist_cfg=dict(backend="gloo")
)
vis_backends = [dict(type="LocalVisBackend")]
visualizer = dict(type="SegLocalVisualizer", vis_backends=vis_backends, name="visualizer")
log_processor = dict(by_epoch=False)
log_level = "INFO"
load_from = None
resume = False
randomness = dict(seed=0)
