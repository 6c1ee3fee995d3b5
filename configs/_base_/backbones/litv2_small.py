# LITv2-S (27.8 M parameters) as a VisionAttnBackbone: four maps at strides 4/8/16/32.
# Its dense recipe comes from the family record (the official mmdet-3 backbone): a LayerNorm (eps 1e-5) on outputs
# 1-3, HiLo window padding unmasked (mask_padding=False). Segmentation leaves norm all four outputs, as the
# official mmseg backbone does: backbone=dict(_base_.backbone, out_norm_levels=(0, 1, 2, 3)).
backbone = dict(type="VisionAttnBackbone", model_name="litv2_small", model_kwargs=dict())
backbone_channels = [96, 192, 384, 768]
# the official ImageNet-1k weights (converted on load): init_cfg=dict(type='Pretrained', checkpoint=_base_.backbone_checkpoint)
backbone_checkpoint = "checkpoints/litv2_s.pth"
