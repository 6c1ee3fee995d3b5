# SHViT-S3 (14.25 M parameters) as a VisionAttnBackbone: three maps at strides 16/32/64. RetinaNet / Mask R-CNN
# need finer levels: the leaves use the official neck EfficientViTFPN (visionattn/dense/shvit_neck.py, transposed-conv
# levels at strides 8 and 4) instead of FPN. BatchNorm stays in eval mode while training, as in the official
# dense backbone; a leaf config adds what its data needs:
#   model = dict(backbone=_base_.backbone, neck=dict(type="EfficientViTFPN", in_channels=_base_.backbone_channels, ...))
backbone = dict(type="VisionAttnBackbone", model_name="shvit_s3", model_kwargs=dict(), norm_eval=True)
backbone_channels = [192, 352, 448]
# ImageNet-1k weights: the official shvit_s3.pth (converted on load by the family converter) or a file in timm's
# layout: init_cfg=dict(type='Pretrained', checkpoint=_base_.backbone_checkpoint)
backbone_checkpoint = "checkpoints/shvit_s3_in1k.pth"
