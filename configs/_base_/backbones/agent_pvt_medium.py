# Agent-PVT-M (35.9 M parameters) as a VisionAttnBackbone: four maps at strides 4/8/16/32.
# Its dense recipe comes from the family record (the official dense AgentPVT): the raw stage outputs (no output norm)
# and the agent grids (12, 12), (16, 16), (28, 28), (28, 28), the classification biases resized to them per forward.
backbone = dict(type="VisionAttnBackbone", model_name="agent_pvt_medium", model_kwargs=dict())
backbone_channels = [64, 128, 320, 512]
# the official ImageNet-1k weights (converted on load): init_cfg=dict(type='Pretrained', checkpoint=_base_.backbone_checkpoint)
backbone_checkpoint = "checkpoints/agent_pvt_m_max_acc.pth"
