# Cascade Mask R-CNN 3x on COCO with Agent-Swin-T: the official recipe (downstream/detection/configs/agent_swin/
# agent_swin_t_crcnn_3x_9-12-14-7.py, mmdet 2.25); reported box / mask AP 51.4 / 44.5. mmdet's Cascade Mask R-CNN
# (configs/_base_/models/cascade-mask-rcnn_r50_fpn.py, written out on the Mask R-CNN base here) with the Swin
# detection heads: three 4-conv 1-fc box heads with SyncBN and GIoU loss (weight 10, on decoded boxes).
# 8 GPUs x 2 images; AdamW lr 1e-4, wd 0.05 (none on position tables, norms and agent biases), fp32; drop path 0.1;
# the DETR-style multi-scale + crop augmentation; 36 epochs, lr x0.1 after epochs 27 and 33.
_base_ = [
    "../_base_/models/mask_rcnn_fpn.py",
    "../_base_/backbones/agent_swin_tiny.py",
    "../_base_/datasets/coco_instance_ms_crop.py",
    "../_base_/schedules/det_1x.py",
    "../_base_/det_runtime.py",
]


def _box_head(stds: list) -> dict:
    return dict(
        type="ConvFCBBoxHead",
        num_shared_convs=4,
        num_shared_fcs=1,
        in_channels=256,
        conv_out_channels=256,
        fc_out_channels=1024,
        roi_feat_size=7,
        num_classes=80,
        bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0, 0.0, 0.0, 0.0], target_stds=stds),
        reg_class_agnostic=False,
        reg_decoded_bbox=True,
        norm_cfg=dict(type="SyncBN", requires_grad=True),
        loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
        loss_bbox=dict(type="GIoULoss", loss_weight=10.0),
    )


def _rcnn_stage(iou: float) -> dict:
    return dict(
        assigner=dict(
            type="MaxIoUAssigner",
            pos_iou_thr=iou,
            neg_iou_thr=iou,
            min_pos_iou=iou,
            match_low_quality=False,
            ignore_iof_thr=-1,
        ),
        sampler=dict(type="RandomSampler", num=512, pos_fraction=0.25, neg_pos_ub=-1, add_gt_as_proposals=True),
        mask_size=28,
        pos_weight=-1,
        debug=False,
    )


model = dict(
    type="CascadeRCNN",
    backbone=dict(
        _base_.backbone,
        model_kwargs=dict(drop_path_rate=0.1),
        init_cfg=dict(type="Pretrained", checkpoint=_base_.backbone_checkpoint),
    ),
    neck=dict(in_channels=_base_.backbone_channels),
    roi_head=dict(
        _delete_=True,
        type="CascadeRoIHead",
        num_stages=3,
        stage_loss_weights=[1, 0.5, 0.25],
        bbox_roi_extractor=dict(
            type="SingleRoIExtractor",
            roi_layer=dict(type="RoIAlign", output_size=7, sampling_ratio=0),
            out_channels=256,
            featmap_strides=[4, 8, 16, 32],
        ),
        bbox_head=[
            _box_head([0.1, 0.1, 0.2, 0.2]),
            _box_head([0.05, 0.05, 0.1, 0.1]),
            _box_head([0.033, 0.033, 0.067, 0.067]),
        ],
        mask_roi_extractor=dict(
            type="SingleRoIExtractor",
            roi_layer=dict(type="RoIAlign", output_size=14, sampling_ratio=0),
            out_channels=256,
            featmap_strides=[4, 8, 16, 32],
        ),
        mask_head=dict(
            type="FCNMaskHead",
            num_convs=4,
            in_channels=256,
            conv_out_channels=256,
            num_classes=80,
            loss_mask=dict(type="CrossEntropyLoss", use_mask=True, loss_weight=1.0),
        ),
    ),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=2000, max_per_img=2000),
        rcnn=[_rcnn_stage(0.5), _rcnn_stage(0.6), _rcnn_stage(0.7)],
    ),
)
del _box_head, _rcnn_stage

_no_decay = ("absolute_pos_embed", "relative_position_bias_table", "norm")
_no_decay += ("an_bias", "na_bias", "ah_bias", "aw_bias", "ha_bias", "wa_bias")
optim_wrapper = dict(
    type="OptimWrapper",
    optimizer=dict(type="AdamW", lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={k: dict(decay_mult=0.0) for k in _no_decay}),
)
train_cfg = dict(max_epochs=36)
param_scheduler = [
    dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type="MultiStepLR", begin=0, end=36, by_epoch=True, milestones=[27, 33], gamma=0.1),
]
