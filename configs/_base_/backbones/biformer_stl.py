# BiFormer-STL (28.4 M parameters) as a VisionAttnBackbone: four maps at strides 4/8/16/32.
# Its dense recipe (a LayerNorm2d on each output, n_win 16) comes from the family record; a leaf config adds what
# its data needs:
#   model = dict(backbone=dict(_base_.backbone, model_kwargs=dict(n_win=8)), neck=dict(in_channels=_base_.backbone_channels))
backbone = dict(type="VisionAttnBackbone", model_name="biformer_stl", model_kwargs=dict())
backbone_channels = [96, 192, 384, 768]
# the official ImageNet-1k weights (converted on load): init_cfg=dict(type='Pretrained', checkpoint=_base_.backbone_checkpoint)
backbone_checkpoint = "checkpoints/biformer_stl_in1k.pth"
