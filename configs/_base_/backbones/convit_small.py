# ConViT-Small (27.8 M parameters): timm's convit_small (visionattn's subclass, any input size) as a VisionAttnBackbone.
# An isotropic ViT (one 432-channel map at stride 16): the family record (layout "isotropic") gives it the adapter's
# simple feature pyramid, four 256-channel maps at strides 4/8/16/32 from the last block's map, which gets a
# LayerNorm2d first (the record's dense recipe; ConViT has no official dense code). A leaf config adds what its
# data needs:
#   model = dict(backbone=dict(_base_.backbone, model_kwargs=dict(drop_path_rate=0.1)), neck=dict(in_channels=_base_.backbone_channels))
backbone = dict(type="VisionAttnBackbone", model_name="convit_small", model_kwargs=dict())
backbone_channels = [256, 256, 256, 256]
# timm's ImageNet-1k weights (timm/convit_small.fb_in1k, the official file's keys), saved to a file:
#   python -c "import visionattn, torch; torch.save(visionattn.create_model('convit_small', pretrained=True).state_dict(), 'checkpoints/convit_small_fb_in1k.pth')"
# init_cfg=dict(type='Pretrained', checkpoint=_base_.backbone_checkpoint)
backbone_checkpoint = "checkpoints/convit_small_fb_in1k.pth"
