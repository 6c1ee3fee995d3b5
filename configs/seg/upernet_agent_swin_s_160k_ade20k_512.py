# UPerNet 160k on ADE20K 512x512 with Agent-Swin-S: the official recipe (downstream/segmentation/configs/agent_swin/
# upernet_agent_swin_s_9-12-14-7.py); reported mIoU 48.08. The -T recipe with the -S backbone. Its agent grids are
# 9-12-7-7 despite the file name; stage 3 of -S holds no agent block, so this is the recipe's 9-12-14-7 model.
_base_ = ["./upernet_agent_swin_t_160k_ade20k_512.py"]

model = dict(
    backbone=dict(
        model_name="agent_swin_small",
        model_kwargs=dict(agent_shapes=((9, 9), (12, 12), (7, 7), (7, 7))),
        init_cfg=dict(checkpoint="checkpoints/agent_swin_small_in1k.pth"),
    ),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384),
)
