# SHViT-S1 (6.33 M parameters) as a VisionAttnBackbone: three maps at strides 16/32/64. RetinaNet / Mask R-CNN
# need finer levels: the leaves use the official neck EfficientViTFPN (visionattn/dense/shvit_neck.py, transposed-conv
# levels at strides 8 and 4) instead of FPN. BatchNorm stays in eval mode while training, as in the official
# dense backbone; a leaf config adds what its data needs:
#   model = dict(backbone=_base_.backbone, neck=dict(type="EfficientViTFPN", in_channels=_base_.backbone_channels, ...))
backbone = dict(type="VisionAttnBackbone", model_name="shvit_s1", model_kwargs=dict(), norm_eval=True)
backbone_channels = [128, 224, 320]
# ImageNet-1k weights: the official shvit_s1.pth (converted on load by the family converter) or a file in timm's
# layout: init_cfg=dict(type='Pretrained', checkpoint=_base_.backbone_checkpoint)
backbone_checkpoint = "checkpoints/shvit_s1_in1k.pth"
