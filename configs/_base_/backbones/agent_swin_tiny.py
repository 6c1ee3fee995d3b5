# Agent-Swin-t (28.9 M parameters) as a VisionAttnBackbone: four maps at strides 4/8/16/32.
# Its dense recipe comes from the family record: a LayerNorm (eps 1e-5) on each output (the official norm0..3), the
# official dense agent grids 9x9 / 12x12 / 14x14 / 7x7 (the trained agent biases resized over the agent axes) and
# the B blocks' window and shift kept on every map (always_partition=True). A leaf config adds what its data needs:
#   model = dict(backbone=dict(_base_.backbone, model_kwargs=dict(drop_path_rate=0.1)), neck=dict(in_channels=_base_.backbone_channels))
backbone = dict(type="VisionAttnBackbone", model_name="agent_swin_tiny", model_kwargs=dict())
backbone_channels = [96, 192, 384, 768]
# the official ImageNet-1k training save (Tsinghua Cloud, see model_cards/agent_attention.md); its pickled config is
# not unpickled and its keys are converted on load: init_cfg=dict(type='Pretrained', checkpoint=_base_.backbone_checkpoint)
backbone_checkpoint = "checkpoints/agent_swin_tiny_in1k.pth"
