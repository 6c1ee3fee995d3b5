"""DaViT: Dual Attention Vision Transformers (ECCV 2022), bound from timm's implementation.

Paper: https://arxiv.org/abs/2204.03645 (Mingyu Ding, Bin Xiao, Noel Codella, Ping Luo, Jingdong Wang, Lu Yuan).
The models are timm's own (``timm.models.davit``): this file declares the family so that visionattn's shared
tests, dense adapter, export and benchmarks cover it, and so that ``visionattn.create_model(name, pretrained=True)``
loads its weights through visionattn's safe loader (weights_only / safetensors, sha256) and timm's converter of the
official Microsoft layout. Nothing is re-registered: ``timm.create_model("davit_tiny")`` builds exactly timm's model.
"""

from __future__ import annotations

from timm.models.davit import checkpoint_filter_fn

from ._registry import DenseRecipe, Family, register_family

register_family(
    Family(
        name="davit",
        source="timm",
        models=("davit_tiny", "davit_small", "davit_base", "davit_large", "davit_huge", "davit_giant"),
        converter=checkpoint_filter_fn,
        params_m={
            "davit_tiny": 28.4,
            "davit_small": 49.7,
            "davit_base": 88.0,
            "davit_large": 196.8,
            "davit_huge": 348.9,
            "davit_giant": 1406.5,
        },
        card="model_cards/davit.md",
        min_input_size=1,  # timm pads every stage: even a 1x1 input runs
        layout="hierarchical",
        num_stages=4,
        test_kwargs=dict(depths=(1, 1, 1, 1), embed_dims=(32, 64, 64, 64), num_heads=(1, 2, 2, 2)),
        # the official dense backbones put a LayerNorm on each output
        dense=DenseRecipe(out_norm="ln2d"),
        onnx_dynamic_size=True,
    )
)
