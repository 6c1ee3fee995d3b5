# Per-parameter options of the official TransNeXt DINO and Mask2Former recipes (detection/dino/configs/
# dino-*_transnext_*-12e_coco.py, segmentation/mask2former/configs/mask2former_transnext_*_160k_ade20k-512x512.py at
# DaiShiResearch/TransNeXt@c8a9974), renamed for this model's parameters under VisionAttnBackbone (``backbone.trunk.
# stem`` / ``stages_{i}.downsample`` = official ``patch_embed{i+1}``, ``stages_{i}.norm`` = ``norm{i+1}``,
# ``mlp.dwconv`` = ``mlp.dwconv.dwconv``). The backbone trains at 0.1x the learning rate; its biases, norms,
# query_embedding, relative_pos_bias_local, cpb and temperature take no weight decay; its other weights (and
# learnable_tokens / learnable_bias) do.
# Kept as the official configs have it: their keys name patch_embed1-3 and norm1-3 only (``range(len(depths) - 1)``),
# so the last stage's downsampling and output norm fall through to the defaults: full learning rate, and only the
# leaf's bias / norm rules (no decay) apply to them.
# A leaf uses: optim_wrapper = dict(paramwise_cfg=dict(_delete_=True, custom_keys=_base_.transnext_query_keys,
#     bias_decay_mult=0.0, norm_decay_mult=0.0, flat_decay_mult=0.0))
transnext_query_keys = {
    **{
        key: dict(lr_mult=0.1)
        for key in [
            "attn.learnable",
            *(f"attn.{layer}.weight" for layer in ("q", "kv", "qkv", "sr", "proj")),
            *(f"mlp.{layer}.weight" for layer in ("fc1", "fc2", "dwconv")),
            # the official patch_embed1-3 convolutions
            "backbone.trunk.stem.proj.weight",
            *(f"backbone.trunk.stages_{i}.downsample.proj.weight" for i in (1, 2)),
        ]
    },
    **{
        key: dict(lr_mult=0.1, decay_mult=0.0)
        for key in [
            "attn.query_embedding",
            "relative_pos_bias_local",
            "cpb",
            "temperature",
            "attn.norm",
            *(f"attn.{layer}.bias" for layer in ("q", "kv", "qkv", "sr", "proj")),
            *(f"mlp.{layer}.bias" for layer in ("fc1", "fc2", "dwconv")),
            # every block's norm1 / norm2 (the official enumerates backbone.block{i}.{j}.norm)
            ".norm1.",
            ".norm2.",
            # the official patch_embed1-3 norms and biases, norm1-3
            "backbone.trunk.stem.norm",
            "backbone.trunk.stem.proj.bias",
            *(f"backbone.trunk.stages_{i}.downsample.norm" for i in (1, 2)),
            *(f"backbone.trunk.stages_{i}.downsample.proj.bias" for i in (1, 2)),
            *(f"backbone.trunk.stages_{i}.norm" for i in (0, 1, 2)),
        ]
    },
}
