# Embedded demo: RetinaNet on BiFormer-T (random init) on the synthetic shapes set, CPU-sized.
#   python tools/train.py configs/det/retinanet_biformer_tiny_shapes.py            # generates data/shapes_demo if missing
#   python tools/train.py configs/det/retinanet_biformer_tiny_shapes.py --resume   # continues from the last checkpoint
#   python tools/test.py configs/det/retinanet_biformer_tiny_shapes.py work_dirs/retinanet_biformer_tiny_shapes/iter_800.pth
# 64 px images with 1-3 circles / squares / triangles of 12-24 px, class hues within 90 degrees of their own (see
# the seg config); reports COCO bbox mAP.
_base_ = ["../_base_/backbones/biformer_tiny.py"]
custom_imports = dict(
    imports=["mmdet.datasets", "visionattn.dense", "visionattn.dense.shapes"], allow_failed_imports=False
)
default_scope = "mmdet"

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

model = dict(
    type="RetinaNet",
    data_preprocessor=dict(
        type="DetDataPreprocessor",
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_size_divisor=32,
    ),
    backbone=dict(
        _base_.backbone,
        # 64 px -> 16/8/4/2 px maps, 4 regions per side in the routing stages (as the seg demo).
        model_kwargs=dict(n_win=4, drop_path_rate=0.0),
        out_indices=(1, 2, 3),
    ),
    neck=dict(type="FPN", in_channels=_base_.backbone_channels[1:], out_channels=96, start_level=0, num_outs=3),
    bbox_head=dict(
        type="RetinaHead",
        num_classes=3,
        in_channels=96,
        stacked_convs=2,
        feat_channels=96,
        # Anchors of 16-25 px at stride 8 and 32-50 px at stride 16 cover the 12-36 px boxes.
        anchor_generator=dict(
            type="AnchorGenerator",
            octave_base_scale=2,
            scales_per_octave=3,
            ratios=[0.5, 1.0, 2.0],
            strides=[8, 16, 32],
        ),
        bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0, 0.0, 0.0, 0.0], target_stds=[1.0, 1.0, 1.0, 1.0]),
        loss_cls=dict(type="FocalLoss", use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
        loss_bbox=dict(type="L1Loss", loss_weight=1.0),
    ),
    train_cfg=dict(
        assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0, ignore_iof_thr=-1),
        sampler=dict(type="PseudoSampler"),
        allowed_border=-1,
        pos_weight=-1,
        debug=False,
    ),
    test_cfg=dict(
        nms_pre=1000, min_bbox_size=0, score_thr=0.05, nms=dict(type="nms", iou_threshold=0.5), max_per_img=20
    ),
)

train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations", with_bbox=True),
    dict(type="Resize", scale=(img_size, img_size), keep_ratio=True),
    # Shapes look the same flipped either way.
    dict(type="RandomFlip", prob=0.5, direction=["horizontal", "vertical"]),
    dict(type="PackDetInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(img_size, img_size), keep_ratio=True),
    dict(type="LoadAnnotations", with_bbox=True),
    dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")),
]
train_dataloader = dict(
    batch_size=batch_size,
    num_workers=0,
    sampler=dict(type="InfiniteSampler", shuffle=True),
    batch_sampler=None,
    dataset=dict(
        type="ShapesCocoDataset",
        data_root=data_root,
        generate=shapes,
        ann_file="annotations/instances_train.json",
        data_prefix=dict(img="images/train/"),
        filter_cfg=dict(filter_empty_gt=True, min_size=4),
        pipeline=train_pipeline,
    ),
)
val_dataloader = dict(
    batch_size=16,
    num_workers=0,
    drop_last=False,
    sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(
        type="ShapesCocoDataset",
        data_root=data_root,
        generate=shapes,
        ann_file="annotations/instances_val.json",
        data_prefix=dict(img="images/val/"),
        test_mode=True,
        pipeline=test_pipeline,
    ),
)
test_dataloader = val_dataloader
val_evaluator = dict(
    type="CocoMetric", ann_file=data_root + "/annotations/instances_val.json", metric="bbox", format_only=False
)
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
    visualization=dict(type="DetVisualizationHook"),
)
env_cfg = dict(
    cudnn_benchmark=False, mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0), dist_cfg=dict(backend="gloo")
)
vis_backends = [dict(type="LocalVisBackend")]
visualizer = dict(type="DetLocalVisualizer", vis_backends=vis_backends, name="visualizer")
log_processor = dict(by_epoch=False)
log_level = "INFO"
load_from = None
resume = False
randomness = dict(seed=0)
