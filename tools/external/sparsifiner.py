"""The official Sparsifiner (lim142857/Sparsifiner) to benchmark beside ours (``tools/benchmark.py --compare``):

    PYTHONPATH=/path/to/deps python tools/benchmark.py sparsifiner_deit_small --batch 4 \
        --compare tools/external/sparsifiner.py:official,VISIONATTN_OFFICIAL=/path/to/Sparsifiner/src

``VISIONATTN_OFFICIAL`` names the checkout's ``src`` folder; the official code needs ``yacs`` (and imports timm).
The official forward returns a dict of every block's attention maps; the wrapper returns its logits, as ours.
No Sparsifiner weights exist, so both run from random initialisation.
"""

from __future__ import annotations

import os
import sys

import torch.nn as nn


def _official_cfg():
    from config.default_config import _C

    cfg = _C.clone()
    # experiments-results-analysis/experiments/sparsifiner_default_config.yaml, the released configuration
    cfg.merge_from_list(
        ["SPAR.REDUCE_N_FACTOR", 6, "SPAR.REDUCE_C_FACTOR", 2, "SPAR.ATTN_KEEP_RATE", 0.25, "SPAR.TOKEN_PRUNING_LOC",
         [], "SPAR.BASIS_THRESHOLD", 2e-2, "SPAR.BASIS_COEF.USE_TOPK", True, "SPAR.BASIS_COEF.TOPK", 8,
         "SPAR.ATTN_SCORE.USE_TOPK", True]
    )  # fmt: skip
    return cfg


class _Logits(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)["x"]


def official(variant: str = "sparsifiner_deit_small", num_classes: int = 1000) -> nn.Module:
    path = os.environ.get("VISIONATTN_OFFICIAL", "")
    if not os.path.isdir(path):
        raise RuntimeError(f"VISIONATTN_OFFICIAL={path!r} is not a directory; set it to the checkout's src folder")
    sys.path.insert(0, path)
    cfg = _official_cfg()
    if variant == "sparsifiner_deit_small":
        from models.sparsifiner import Sparsifiner

        model = Sparsifiner(
            patch_size=16, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4, qkv_bias=True, num_classes=num_classes,
            attn_keep_rate_list=[0.25] * 12, token_keep_rate_list=[1.0] * 12, token_pruning_loc_indicator=[False] * 12,
            reduce_n_factor=6, reduce_c_factor=2, share_inout_proj=False, cfg=cfg,
        )  # fmt: skip
    elif variant == "sparsifiner_lvvit_small":
        from models.sparsifiner_lvvit import SparsifinerLVViT

        model = SparsifinerLVViT(
            patch_size=16, embed_dim=384, depth=16, num_heads=6, mlp_ratio=3, p_emb="4_2", skip_lam=2.0,
            return_dense=True, mix_token=True, num_classes=num_classes, attn_keep_rate_list=[0.25] * 16,
            reduce_n_factor=6, reduce_c_factor=2, share_inout_proj=False, cfg=cfg,
        )  # fmt: skip
    else:
        raise ValueError(f"variant={variant!r} is not sparsifiner_deit_small or sparsifiner_lvvit_small")
    return _Logits(model)
