# Agent-DeiT-S (22.65 M parameters; all 12 blocks with 49 agents) as a VisionAttnBackbone. An isotropic ViT (one
# 384-channel map at stride 16): the family record (layout "isotropic") gives it the adapter's simple feature pyramid,
# four 256-channel maps at strides 4/8/16/32 from the last block's map, which gets a LayerNorm2d first (the record's
# dense recipe; DeiT has no official dense code). The agent biases are resized to each input's grid in every forward.
# A leaf config adds what its data needs:
#   model = dict(backbone=dict(_base_.backbone, model_kwargs=dict(drop_path_rate=0.1)), neck=dict(in_channels=_base_.backbone_channels))
backbone = dict(type="VisionAttnBackbone", model_name="agent_deit_small", model_kwargs=dict())
backbone_channels = [256, 256, 256, 256]
# the official ImageNet-1k weights (https://cloud.tsinghua.edu.cn/f/fdd43304372541db8ea7/?dl=1, converted on load):
#   init_cfg=dict(type='Pretrained', checkpoint=_base_.backbone_checkpoint)
backbone_checkpoint = "checkpoints/agent_deit_small_in1k.pth"
