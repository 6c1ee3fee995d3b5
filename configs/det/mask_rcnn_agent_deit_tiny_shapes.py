# Mask R-CNN 1x-style detector with Agent-DeiT-T (random init) on the synthetic shapes set, CPU-sized: boxes and
# instance masks through the adapter's simple feature pyramid.
#   python tools/train.py configs/det/mask_rcnn_agent_deit_tiny_shapes.py     # generates data/shapes_demo if missing
#   python tools/test.py configs/det/mask_rcnn_agent_deit_tiny_shapes.py work_dirs/mask_rcnn_agent_deit_tiny_shapes/iter_800.pth
# The 64 px images of the demo set (1-3 circles / squares / triangles of 12-24 px) are resized to 128 px, so that the
# stride-16 tokens form an 8 x 8 grid (the 49 agents pool it; the biases are resized to it); the pyramid makes maps at
# strides 4/8/16/32 from it. Reports COCO bbox and segm mAP.
_base_ = ["../_base_/models/mask_rcnn_fpn.py", "../_base_/backbones/agent_deit_tiny.py"]
custom_imports = dict(
    imports=["mmdet.datasets", "visionattn.dense", "visionattn.dense.shapes"], allow_failed_imports=False
)
default_scope = "mmdet"

data_root = "data/shapes_demo"
# ShapesSpec settings (those of configs/det/retinanet_biformer_tiny_shapes.py: the same data_root serves both)
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
img_size = 128
max_iters = 800
batch_size = 16
width = 64  # FPN / RPN / RoI head channels, reduced for the CPU

model = dict(
    backbone=dict(_base_.backbone, model_kwargs=dict(drop_path_rate=0.0), pyramid_channels=width),
    neck=dict(in_channels=[width] * 4, out_channels=width),
    rpn_head=dict(
        in_channels=width,
        feat_channels=width,
        # 16-256 px anchors at strides 4-64 (objects are 24-48 px after the resize)
        anchor_generator=dict(type="AnchorGenerator", scales=[4], ratios=[0.5, 1.0, 2.0], strides=[4, 8, 16, 32, 64]),
    ),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=width),
        bbox_head=dict(in_channels=width, fc_out_channels=256, num_classes=3),
        mask_roi_extractor=dict(out_channels=width),
        mask_head=dict(num_convs=2, in_channels=width, conv_out_channels=width, num_classes=3),
    ),
    train_cfg=dict(
        rpn=dict(sampler=dict(num=64)),
        rpn_proposal=dict(nms_pre=300, max_per_img=100),
        rcnn=dict(sampler=dict(num=64)),
    ),
    test_cfg=dict(
        rpn=dict(nms_pre=300, max_per_img=100),
        rcnn=dict(max_per_img=20),
    ),
)

train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
    dict(type="Resize", scale=(img_size, img_size), keep_ratio=True),
    # Shapes look the same flipped either way.
    dict(type="RandomFlip", prob=0.5, direction=["horizontal", "vertical"]),
    dict(type="PackDetInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(img_size, img_size), keep_ratio=True),
    dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
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
    type="CocoMetric",
    ann_file=data_root + "/annotations/instances_val.json",
    metric=["bbox", "segm"],
    format_only=False,
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
