# UPerNet 160k on ADE20K 512x512 with Agent-Swin-B: the official recipe (downstream/segmentation/configs/agent_swin/
# upernet_agent_swin_b_9-12-14-7.py); reported mIoU 48.73. The -T recipe with the -B backbone and drop path 0.5.
_base_ = ["./upernet_agent_swin_t_160k_ade20k_512.py"]

model = dict(
    backbone=dict(
        model_name="agent_swin_base",
        model_kwargs=dict(drop_path_rate=0.5),
        init_cfg=dict(checkpoint="checkpoints/agent_swin_base_in1k.pth"),
    ),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512),
)
