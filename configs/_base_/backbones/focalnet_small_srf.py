# FocalNet-S (SRF, 49.89 M parameters) as a VisionAttnBackbone: four maps at strides 4/8/16/32.
# The official dense backbone: focal window 9 (kernels 9/11, set here) and a LayerNorm (eps 1e-5) on each
# output (the family's dense recipe). A leaf config adds what its data needs, e.g.
#   model = dict(backbone=dict(_base_.backbone, model_kwargs=dict(focal_windows=(9, 9, 9, 9), drop_path_rate=0.3)))
backbone = dict(
    type="VisionAttnBackbone", model_name="focalnet_small_srf", model_kwargs=dict(focal_windows=(9, 9, 9, 9))
)
backbone_channels = [96, 192, 384, 768]
# the official ImageNet-1k weights (focalnet_small_srf.pth, github.com/microsoft/FocalNet/releases v1.0.0) fitted to window
# 9 once by the official rule (kernels zero-padded about their centre):
#   python tools/convert_checkpoint.py focalnet_small_srf focalnet_small_srf.pth checkpoints/focalnet_small_srf_dense.pth \
#       --model-kwargs "focal_windows=(9,9,9,9)"
backbone_checkpoint = "checkpoints/focalnet_small_srf_dense.pth"
