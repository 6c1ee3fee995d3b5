# DaViT-T (28.4 M parameters) as a VisionAttnBackbone: four maps at strides 4/8/16/32.
# Its dense recipe (a LayerNorm2d with eps 1e-5 on each output, as the official dense DaViT's norm0..3) comes from
# the family record; a leaf config adds what its data needs:
#   model = dict(backbone=dict(_base_.backbone, model_kwargs=dict(drop_path_rate=0.1)), neck=dict(in_channels=_base_.backbone_channels))
backbone = dict(type="VisionAttnBackbone", model_name="davit_tiny", model_kwargs=dict())
backbone_channels = [96, 192, 384, 768]
# ImageNet-1k weights, the official file or timm's davit_tiny.msft_in1k (either layout is converted on load):
# init_cfg=dict(type='Pretrained', checkpoint=_base_.backbone_checkpoint)
backbone_checkpoint = "checkpoints/davit_tiny_in1k.pth"
