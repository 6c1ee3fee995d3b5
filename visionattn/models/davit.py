"""DaViT: Dual Attention Vision Transformers (ECCV 2022), bound from timm's implementation.

Paper: https://arxiv.org/abs/2204.03645 (Mingyu Ding, Bin Xiao, Noel Codella, Ping Luo, Jingdong Wang, Lu Yuan).
The models are timm's own (``timm.models.davit``): this file declares the family so that visionattn's shared
tests, dense adapter, export and benchmarks cover it, and so that ``visionattn.create_model(name, pretrained=True)``
loads its weights through visionattn's safe loader (weights_only / safetensors, sha256) and timm's converter of the
official Microsoft layout. Nothing is re-registered: ``timm.create_model("davit_tiny")`` builds exactly timm's model.

What the family adds over timm: the official dense recipe (a LayerNorm ``norm{i}`` on each of the four outputs, eps
1e-5, through ``visionattn.dense.VisionAttnBackbone``) and :func:`convert_dense_checkpoint`, which maps the official
detection / segmentation checkpoints (dingmyu/davit ``mmdet/`` and ``mmseg/``) onto our detectors and segmentors.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from timm.models.davit import checkpoint_filter_fn

from ._registry import Checkpoint, DenseRecipe, Family, register_family

__all__ = ["convert_dense_checkpoint"]

_OUT_NORM = re.compile(r"^norm(\d+)\.(weight|bias)$")
_STAGE = re.compile(r"^stages\.(\d+)\.")


def convert_dense_checkpoint(checkpoint: Mapping[str, Any], prefix: str = "backbone.") -> dict[str, torch.Tensor]:
    """An official DaViT detection / segmentation checkpoint -> the state_dict of our detector / segmentor.

    The official dense code (dingmyu/davit ``mmdet/`` and ``mmseg/``, mmdet 2.x / mmseg 0.x) saves mmcv checkpoints,
    ``{'state_dict': {...}, 'meta': ...}``, whose backbone keys are the official classification layout
    (``backbone.patch_embeds.*``, ``backbone.main_blocks.*``) plus one LayerNorm per output (``backbone.norm{i}.*``).
    Our models hold ``VisionAttnBackbone('davit_*')`` as their backbone: timm's ``features_only`` DaViT under
    ``backbone.trunk.`` (stage ``i`` as ``stages_{i}``) and the output norms under ``backbone.out_norms.{i}.``. The
    backbone keys go through timm's converter of the official layout; every other key (neck, heads: mmdet 3.x and
    mmseg 1.x kept their names for FPN, RPN / RoI / RetinaNet heads, UPerHead and FCNHead) is passed on unchanged.

    Args:
        checkpoint: the loaded file (``{'state_dict': ...}``) or its state_dict.
        prefix: the backbone's key prefix in the checkpoint and in the model.

    Returns:
        a state_dict for ``model.load_state_dict`` (or ``mmengine.runner.load_checkpoint``, ``load_from=``).
    """
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping):
        raise TypeError(f"checkpoint must be a state_dict or {{'state_dict': ...}}, got {type(checkpoint).__name__}")
    backbone = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not backbone:
        raise ValueError(
            f"no key of the checkpoint starts with prefix={prefix!r} (first keys: {list(state)[:3]}); pass the "
            "prefix the official model used for its backbone"
        )
    if any(k.startswith(("trunk.", "out_norms.")) for k in backbone):
        raise ValueError(f"the checkpoint's {prefix}* keys are already in visionattn's layout; load it as it is")
    out: dict[str, torch.Tensor] = {k: v for k, v in state.items() if not k.startswith(prefix)}
    trunk = {}
    for k, v in backbone.items():
        m = _OUT_NORM.match(k)
        if m:
            out[f"{prefix}out_norms.{m[1]}.{m[2]}"] = v
        else:
            trunk[k] = v
    for k, v in checkpoint_filter_fn(trunk, None).items():
        # timm's features_only wrapper flattens the stages Sequential: stages.1.x -> stages_1.x
        out[prefix + "trunk." + _STAGE.sub(r"stages_\1.", k)] = v
    return out


# The official release (github.com/dingmyu/davit README, commit fc79470): SharePoint share links, one per
# checkpoint. timm's `msft_in1k` tags are its conversions of the classification ones, on the Hugging Face hub.
_SHAREPOINT = "https://connecthkuhk-my.sharepoint.com/:u:/g/personal/u3007305_connect_hku_hk/{}"
_UNCHECKED = "SharePoint share link from the official README; not checked (a share page may need a browser)"
_CLS = {  # model: (top-1, official link)
    "davit_tiny": (82.8, "EcJYlVYP9y5FsDbMP-nwjtABgLmdrNGZBxgR5--Kg3MZ7Q?e=v9OrXB"),
    "davit_small": (84.2, "ERN_Gzm8oKdIvO01r0X2cscB_owuRAnnQPNGJEVGP23xHQ?e=MVW3ZO"),
    "davit_base": (84.6, "Ea8kCpdM949CvTM0w7DWbGwBxxiACMSik4zx-emrNY0uKQ?e=aEjC7u"),
}
_DENSE = {  # (model, tag): (task, official result, official link)
    ("davit_tiny", "coco_maskrcnn_1x"): (
        "det",
        "box AP 45.0 / mask AP 41.1",
        "ERgc6486IzJPpPWDPJUwKP0BCc4oFtTgdudnPmmPqozqug?e=QWsLYg",
    ),
    ("davit_tiny", "coco_maskrcnn_3x"): (
        "det",
        "box AP 47.4 / mask AP 42.9",
        "Ed1Su_p29_5KuX5Lbc2oq6gB3AVKnI-ojAT-yyICXWRbgg?e=XdJPsp",
    ),
    ("davit_small", "coco_maskrcnn_1x"): (
        "det",
        "box AP 47.7 / mask AP 42.9",
        "EVgVH-9l--pJpBuly1xwsAkBx57Ph9ZAajt31vk-TqQPrA?e=byv2uC",
    ),
    ("davit_small", "coco_maskrcnn_3x"): (
        "det",
        "box AP 49.5 / mask AP 44.3",
        "EQCvUkIhwxNOrR1KibewNU0BqDDxzt311xANejUHprm0yQ?e=LiK9hX",
    ),
    ("davit_base", "coco_maskrcnn_1x"): (
        "det",
        "box AP 48.2 / mask AP 43.3",
        "EY5MU9O8n0ZPrvzCgakS4PoBdg6H3FCOSi1QVNCpJSQJ7g?e=MtdUGz",
    ),
    ("davit_base", "coco_maskrcnn_3x"): (
        "det",
        "box AP 49.9 / mask AP 44.6",
        "Ed8kh4c1G41OmfIzo5sOS74Bccp1G65qg0H2s0WtcXUJZA?e=lnqLoQ",
    ),
    ("davit_tiny", "coco_retinanet_1x"): (
        "det",
        "box AP 44.0",
        "EdNCWmdUArpPgjNn2JY37_QBs5KVNy8d-8bNK7DNyjYHyg?e=osMprJ",
    ),
    ("davit_tiny", "coco_retinanet_3x"): (
        "det",
        "box AP 46.5",
        "EZ10htYokJhOi0serTLAx5cBGcJLL7PgWSO1uzlIXUw1Jg?e=zsMh4y",
    ),
    ("davit_small", "coco_retinanet_1x"): (
        "det",
        "box AP 46.0",
        "EfWFiJY0iEpGhPzwQA5nv7IB-8bgnVfCHQVT4FqX8UeK9w?e=sr0Ed6",
    ),
    ("davit_small", "coco_retinanet_3x"): (
        "det",
        "box AP 48.2",
        "Ef9u9l_81_1PvCKGngnrkPoB1mGjelED0CzXr7RJwoQB7w?e=zTYozh",
    ),
    ("davit_base", "coco_retinanet_1x"): (
        "det",
        "box AP 46.7",
        "ESKE9OFCDzxGo2D2Eyr29c0BFhc-j8OjF2WRoSxSK0gn4g?e=KfyJCA",
    ),
    ("davit_base", "coco_retinanet_3x"): (
        "det",
        "box AP 48.7",
        "Ea7c6g_OkqpHrGIviK2Ua-4B2wc4Rd0PTdXAlA2IyTZxGQ?e=N4askR",
    ),
    ("davit_tiny", "ade20k_upernet_160k"): (
        "seg",
        "mIoU 46.3 (ms+flip)",
        "ERajqEKtzIBGgX2slZxCYrEBoEL-ZnLkUaXP9SHT-rp13w?e=Ga9U8a",
    ),
    ("davit_small", "ade20k_upernet_160k"): (
        "seg",
        "mIoU 48.8 (ms+flip)",
        "Ef5hJPsJXNZLiRkUTL9-ozcBaVyVEAvolNwMUlsmJhm2Yg?e=BnJ6Et",
    ),
    ("davit_base", "ade20k_upernet_160k"): (
        "seg",
        "mIoU 49.4 (ms+flip)",
        "EWl80Je0fUlNlbJzI_qKgIkBFX-epbfK3Vzgdq1C2iOsuA?e=wumOBS",
    ),
}
_CHECKPOINTS = (
    *(
        Checkpoint(
            model,
            "msft_in1k",
            urls=(_SHAREPOINT.format(link),),
            top1=top1,
            evidence=(
                "the hub copy (timm's conversion) is not checked; the official link is a SharePoint share page"
                + (
                    " reported inaccessible (https://github.com/dingmyu/davit/issues/15)"
                    if model == "davit_small"
                    else ""
                )
            ),
            notes="official repository: MIT; the official file is in the official layout (the converter maps it)",
        )
        for model, (top1, link) in _CLS.items()
    ),
    *(
        Checkpoint(
            model,
            tag,
            task=task,
            urls=(_SHAREPOINT.format(link),),
            format="mmcv",
            license="mit",
            result=result,
            evidence=_UNCHECKED,
            notes="full mmdet 2.x / mmseg 0.x model: backbone.* in the official layout plus norm0..3 (LN per output)",
            converter=f"{__name__}.convert_dense_checkpoint",
        )
        for (model, tag), (task, result, link) in _DENSE.items()
    ),
    *(
        Checkpoint(
            model,
            "",
            status="none",
            evidence="no weights were released (https://github.com/dingmyu/davit/issues/10)",
        )
        for model in ("davit_large", "davit_huge", "davit_giant")
    ),
)

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
        # the official dense backbones (dingmyu/davit mmdet/ and mmseg/) put an nn.LayerNorm (eps 1e-5) on each output
        dense=DenseRecipe(out_norm="ln2d", out_norm_eps=1e-5),
        onnx_dynamic_size=True,
        checkpoints=_CHECKPOINTS,
    )
)
