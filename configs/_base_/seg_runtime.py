# mmseg 1.x runtime shared by the segmentation configs (default_hooks live in the schedules).
default_scope = "mmseg"
# lets stock mmseg tools build VisionAttnBackbone too (tools/train.py imports it anyway)
custom_imports = dict(imports=["visionattn", "visionattn.dense"], allow_failed_imports=False)

env_cfg = dict(
    cudnn_benchmark=True,
    mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
    dist_cfg=dict(backend="nccl"),
)
vis_backends = [dict(type="LocalVisBackend")]
visualizer = dict(type="SegLocalVisualizer", vis_backends=vis_backends, name="visualizer")
log_processor = dict(by_epoch=False)
log_level = "INFO"
load_from = None
resume = False
