# TransNeXt-Micro-AAAA (13.1 M parameters) as a VisionAttnBackbone: four maps at strides 4/8/16/32, each after its stage's
# own LayerNorm (the official dense backbones' norm1..norm4, part of the model here); the family record adds nothing.
# The attention geometry follows each input size (any size from 32 px); a leaf config adds what its data needs:
#   model = dict(backbone=dict(_base_.backbone, model_kwargs=dict(drop_path_rate=0.4)), neck=dict(in_channels=_base_.backbone_channels))
backbone = dict(type="VisionAttnBackbone", model_name="transnext_micro_aaaa", model_kwargs=dict())
backbone_channels = [48, 96, 192, 384]
# the official ImageNet-1k weights (raw state_dict from the Hugging Face hub, converted on load):
# init_cfg=dict(type='Pretrained', checkpoint=_base_.backbone_checkpoint)
backbone_checkpoint = "checkpoints/transnext_micro_aaaa_in1k.pth"
