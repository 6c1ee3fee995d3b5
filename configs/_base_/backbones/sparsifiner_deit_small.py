# Sparsifiner-S (DeiT-S with sparse attention, 22.2 M parameters) as a VisionAttnBackbone. An isotropic model: the
# adapter's simple feature pyramid (ViTDet style) turns its stride-16 tokens into maps at strides 4/8/16/32 of
# pyramid_channels each; a leaf config sets the neck's widths to match:
#   model = dict(backbone=_base_.backbone, neck=dict(in_channels=_base_.backbone_channels))
backbone = dict(
    type="VisionAttnBackbone", model_name="sparsifiner_deit_small", model_kwargs=dict(), pyramid_channels=256
)
backbone_channels = [256, 256, 256, 256]
# no Sparsifiner weights were released; a DeiT-S checkpoint initialises the backbone (the predictors keep their init):
#   init_cfg=dict(type='Pretrained', checkpoint=_base_.backbone_checkpoint)
backbone_checkpoint = "checkpoints/deit_small_patch16_224-cd65a155.pth"
