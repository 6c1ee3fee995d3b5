# HaloNet-50ts (22.7 M parameters): timm's halonet50ts with its halo layers on visionattn's op (va_halonet50ts), as a
# VisionAttnBackbone. Five maps at strides 2/4/8/16/32 (stem, three stages, final_conv); detection and segmentation
# take the four of stride 4-32 (out_indices 1-4). Any input size works (no block-multiple padding needed).
#   model = dict(backbone=dict(_base_.backbone, model_kwargs=dict(drop_path_rate=0.1)), neck=dict(in_channels=_base_.backbone_channels))
backbone = dict(type="VisionAttnBackbone", model_name="va_halonet50ts", model_kwargs=dict(), out_indices=(1, 2, 3, 4))
backbone_channels = [256, 512, 1024, 2048]
# timm's ImageNet-1k weights (timm/halonet50ts.a1h_in1k; the same keys as timm's halonet50ts), saved to a file:
#   python -c "import visionattn, torch; torch.save(visionattn.create_model('va_halonet50ts', pretrained=True).state_dict(), 'checkpoints/halonet50ts_a1h_in1k.pth')"
# init_cfg=dict(type='Pretrained', checkpoint=_base_.backbone_checkpoint)
backbone_checkpoint = "checkpoints/halonet50ts_a1h_in1k.pth"
