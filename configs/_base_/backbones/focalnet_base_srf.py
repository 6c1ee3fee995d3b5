# FocalNet-B (SRF, 88.15 M parameters) as a VisionAttnBackbone: four maps at strides 4/8/16/32.
# Its dense recipe comes from the family record: a LayerNorm (eps 1e-5) on each output and focal window 9
# (kernels 9/11) as in the official mmdet / mmseg backbones. A leaf config adds what its data needs:
#   model = dict(backbone=dict(_base_.backbone, model_kwargs=dict(drop_path_rate=0.3)), neck=dict(in_channels=_base_.backbone_channels))
backbone = dict(type="VisionAttnBackbone", model_name="focalnet_base_srf", model_kwargs=dict())
backbone_channels = [128, 256, 512, 1024]
# the official ImageNet-1k weights (focalnet_base_srf.pth, github.com/microsoft/FocalNet/releases v1.0.0) fitted to
# the dense window 9 once (kernels zero-padded about their centre, the official rule):
#   python tools/convert_checkpoint.py focalnet_base_srf focalnet_base_srf.pth checkpoints/focalnet_base_srf_dense.pth --model-kwargs "focal_windows=(9,9,9,9)"
backbone_checkpoint = "checkpoints/focalnet_base_srf_dense.pth"
