"""FocalNet's dense prediction against the official code: the dense backbone's outputs, its checkpoints, the configs.

References: the four outputs of the official mmdet FocalNet backbone (``detection/mmdet/models/backbones/focalnet.py``
at microsoft/FocalNet@e8514bd, reduced width, random weights; tests/fixtures/focalnet_dense_reduced_*, see
tests/fixtures/README.md), the classification model's own outputs (a zero-padded kernel computes the same
convolution), and the official configs' values and the official README's parameter counts, written out below.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

import visionattn

pytest.importorskip("mmengine")

from visionattn.dense import VisionAttnBackbone  # noqa: E402
from visionattn.dense.backbone import resolve_dense_args  # noqa: E402
from visionattn.models.focalnet import DENSE_FOCAL_WINDOWS, convert_dense_checkpoint  # noqa: E402
from visionattn.pretrained import convert_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
# the official backbone of the fixture: FocalNet(embed_dim=16, depths=[1, 1, 2, 1], focal_levels=[2, 3, 2, 3],
# focal_windows=[9, 9, 9, 9]); focalnet_test has those depths and levels
REDUCED = dict(embed_dim=16)
DENSE = dict(REDUCED, focal_windows=(9, 9, 9, 9))
REDUCED_CHANNELS = [16, 32, 64, 128]
VARIANTS = [f"focalnet_{s}_{rf}" for s in ("tiny", "small", "base") for rf in ("srf", "lrf")]

pytestmark = pytest.mark.usefixtures("one_thread")


def _official() -> dict:
    return torch.load(FIXTURES / "focalnet_dense_reduced_official.pth", weights_only=True)


def _outputs() -> dict:
    return torch.load(FIXTURES / "focalnet_dense_reduced_outputs.pt", weights_only=True)


def _backbone(**kwargs) -> VisionAttnBackbone:
    return VisionAttnBackbone("focalnet_test", DENSE, **kwargs).eval()


def _assert_official_outputs(backbone: VisionAttnBackbone, ref: dict, atol: float = 1e-5) -> None:
    with torch.no_grad():
        outs = backbone(ref["input"].float())
    assert len(outs) == 4
    for i, out in enumerate(outs):
        torch.testing.assert_close(out.double(), ref[f"out{i}"], atol=atol, rtol=0)


def _load_bare(backbone: VisionAttnBackbone, converted: dict) -> None:
    backbone.load_state_dict({k[len("backbone.") :]: v.float() for k, v in converted.items() if "backbone." in k})


def test_record_holds_the_official_dense_recipe():
    """The official dense backbones: an nn.LayerNorm (eps 1e-5) on each of the four outputs (the record), focal
    window 9 (the backbone configs): kernels 9/11 srf, 9/11/13 lrf."""
    from mmengine.config import Config

    recipe = visionattn.get_family("focalnet").dense
    assert (recipe.out_norm, recipe.out_norm_eps) == ("ln2d", 1e-5)
    for name, kernels in (("focalnet_tiny_srf", [9, 11]), ("focalnet_tiny_lrf", [9, 11, 13])):
        cfg = Config.fromfile(str(ROOT / "configs/_base_/backbones" / f"{name}.py")).backbone
        assert cfg.model_name == name and cfg.model_kwargs == dict(focal_windows=DENSE_FOCAL_WINDOWS)
        with torch.device("meta"):
            b = VisionAttnBackbone(name, cfg.model_kwargs)
        assert b.channels == [96, 192, 384, 768] and b.strides == [4, 8, 16, 32]
        assert all(n.eps == 1e-5 for n in b.out_norms) and len(b.out_norms) == 4
        mod = b.trunk.get_submodule("layers_0.blocks.0.modulation")
        assert [layer[0].kernel_size[0] for layer in mod.focal_layers] == kernels


def test_converted_official_backbone_gives_the_official_outputs():
    b = _backbone()
    converted = convert_dense_checkpoint(_official(), b)
    _load_bare(b, converted)  # strict: every key of ours is in the checkpoint, every backbone key is used
    assert len([k for k in converted if k.startswith("backbone.")]) == len(b.state_dict())
    _assert_official_outputs(b, _outputs())
    # float64: the same arithmetic as the official run, far below the float32 tolerance
    ref = _outputs()
    with torch.no_grad():
        outs = b.double()(ref["input"].double())
    for i, out in enumerate(outs):
        torch.testing.assert_close(out, ref[f"out{i}"], atol=1e-9, rtol=0)


def test_out_norm_epsilon_matters_at_this_tolerance():
    """timm's LayerNorm2d default (eps 1e-6) instead of the official nn.LayerNorm's 1e-5 misses the fixture."""
    b = _backbone()
    _load_bare(b, convert_dense_checkpoint(_official(), b))
    for norm in b.out_norms:
        norm.eps = 1e-6
    with pytest.raises(AssertionError):
        _assert_official_outputs(b, _outputs())


def test_converter_keeps_other_keys_and_fits_partial_out_indices():
    official = _official()
    converted = convert_dense_checkpoint(official, _backbone())
    neck = "neck.lateral_convs.0.conv.weight"
    assert torch.equal(converted[neck], official["state_dict"][neck])
    # a backbone returning stages 1 and 3: norm1 / norm3 become its out_norms 0 / 1, norm0 / norm2 are not used
    b = _backbone(out_indices=(1, 3))
    part = convert_dense_checkpoint(official, b)
    assert torch.equal(part["backbone.out_norms.1.weight"], official["state_dict"]["backbone.norm3.weight"])
    _load_bare(b, part)
    ref = _outputs()
    with torch.no_grad():
        outs = b(ref["input"].float())
    for out, i in zip(outs, (1, 3), strict=True):
        torch.testing.assert_close(out.double(), ref[f"out{i}"], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="prefix"):
        convert_dense_checkpoint(official, b, prefix="model.")


def test_backbone_alone_from_a_converted_detector_checkpoint(tmp_path):
    """init_cfg with prefix='backbone.' takes the backbone out of a converted detector checkpoint."""
    path = tmp_path / "converted.pth"
    torch.save({"state_dict": convert_dense_checkpoint(_official(), _backbone())}, path)
    b = _backbone(init_cfg=dict(type="Pretrained", checkpoint=str(path), prefix="backbone."))
    b.init_weights()
    _assert_official_outputs(b.eval(), _outputs())


def test_classification_checkpoint_into_the_window_9_backbone(tmp_path):
    """A window-3 classification checkpoint, converted once by the official rule (tools/convert_checkpoint.py with
    focal_windows=(9, 9, 9, 9)), loads through init_cfg; the dense backbone then computes the classification model's
    stage outputs (zero-padded kernels, same convolution)."""
    torch.manual_seed(0)
    cls = timm.create_model("focalnet_test", **REDUCED).eval()
    src, dst = tmp_path / "cls.pth", tmp_path / "dense.pth"
    torch.save({"model": cls.state_dict()}, src)
    convert_checkpoint("focalnet_test", src, dst, model_kwargs=dict(REDUCED, focal_windows=(9, 9, 9, 9)))
    b = _backbone(out_norm="none", init_cfg=dict(type="Pretrained", checkpoint=str(dst)))
    b.init_weights()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        outs = b.eval()(x)
        _, ref = cls.forward_intermediates(x)
    for out, r in zip(outs, ref, strict=True):
        torch.testing.assert_close(out, r, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# configs


# microsoft/FocalNet@e8514bd detection/configs/focalnet/mask_rcnn_focalnet_*_mstrain_480-800_adamw_{1x,3x}_coco_*.py
DET_DROP_PATH = {("tiny", "1x"): 0.1, ("small", "1x"): 0.2, ("base", "1x"): 0.3}
DET_DROP_PATH |= {("tiny", "3x"): 0.3, ("small", "3x"): 0.5, ("base", "3x"): 0.5}
# official README, params of the whole model (M)
MASK_RCNN_PARAMS = {"tiny_srf": 48.6, "tiny_lrf": 48.8, "small_srf": 70.8, "small_lrf": 72.3}
MASK_RCNN_PARAMS |= {"base_srf": 109.4, "base_lrf": 111.4}
# The README's T-lrf figure (48.8M, 0.2M over T-srf) does not fit its S / B rows, where lrf adds a 13x13 level
# (S: +1.5M, B: +2.0M); T-srf's figure plus that level (13 * 13 weights and one gate row of C + 1 per channel of
# each block: depths 2, 2, 6, 2 at widths 96 ... 768) is used instead.
_TINY_CHANNELS = 2 * 96 + 2 * 192 + 6 * 384 + 2 * 768
MASK_RCNN_PARAMS["tiny_lrf"] = 48.6 + (13 * 13 * _TINY_CHANNELS + _TINY_CHANNELS + 12) / 1e6
UPERNET_PARAMS = {"tiny_srf": 61, "tiny_lrf": 61, "small_srf": 83, "small_lrf": 84, "base_srf": 124, "base_lrf": 126}
WIDTH = {"tiny": 96, "small": 96, "base": 128}


def _configs() -> list[str]:
    names = [f"det/mask_rcnn_{v}_{s}_coco.py" for v in VARIANTS for s in ("1x", "3x")]
    return names + [f"seg/upernet_{v}_160k_ade20k_512.py" for v in VARIANTS]


def test_official_hyper_parameters_in_configs():
    from mmengine.config import Config

    for name in _configs():
        cfg = Config.fromfile(str(ROOT / "configs" / name))
        variant = next(v for v in VARIANTS if f"_{v}_" in name)
        size = variant.split("_")[1]
        b = cfg.model.backbone
        kwargs, out_norm = resolve_dense_args(b.model_name, b.get("model_kwargs"), b.get("out_norm"))
        det = name.startswith("det/")
        dpr = DET_DROP_PATH[(size, "1x" if "_1x_" in name else "3x")] if det else 0.3
        assert (b.model_name, out_norm) == (variant, "ln2d"), name
        assert kwargs == dict(focal_windows=(9, 9, 9, 9), drop_path_rate=dpr), name
        assert b.init_cfg.checkpoint == f"checkpoints/{variant}_dense.pth", name
        c = WIDTH[size]
        head = cfg.model.neck if det else cfg.model.decode_head
        assert list(head.in_channels) == [c, 2 * c, 4 * c, 8 * c], name
        opt = cfg.optim_wrapper
        assert opt.paramwise_cfg.custom_keys.norm.decay_mult == 0.0, name
        assert cfg.train_dataloader.batch_size == 2, name
        if det:
            lr_wd, epochs = (1e-4, 0.05), 12 if "_1x_" in name else 36
            assert opt.type == "AmpOptimWrapper", name  # official: apex mixed precision (use_fp16=True)
            assert cfg.train_cfg.max_epochs == epochs, name
            assert cfg.param_scheduler[1].milestones == ([9, 11] if epochs == 12 else [27, 33]), name
            assert cfg.param_scheduler[1].end == epochs and cfg.param_scheduler[0].end == 500, name
            ms = cfg.train_dataloader.dataset.pipeline[3]
            assert ms.type == "RandomChoice" and len(ms.transforms) == 2, name
            assert [t.type for t in ms.transforms[1]] == ["RandomChoiceResize", "RandomCrop", "RandomChoiceResize"]
            assert ms.transforms[1][1].crop_size == (384, 600), name
            assert [s[0] for s in ms.transforms[0][0].scales] == list(range(480, 801, 32)), name
        else:
            lr_wd = (6e-5, 0.01)
            assert opt.type == "OptimWrapper", name  # official segmentation: fp32
            assert cfg.train_cfg.max_iters == 160000 and cfg.param_scheduler[-1].end == 160000, name
            assert cfg.param_scheduler[0].end == 1500, name
            assert cfg.model.auxiliary_head.in_channels == 4 * c and cfg.model.decode_head.num_classes == 150
        assert (opt.optimizer.type, opt.optimizer.lr, opt.optimizer.weight_decay) == ("AdamW", *lr_wd), name


def _build(config: str, meta: bool = True, **backbone):
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope

    from visionattn.dense.runner import cpu_safe_config

    cfg = cpu_safe_config(Config.fromfile(str(ROOT / "configs" / config)))
    init_default_scope(cfg.default_scope)
    cfg.model.backbone.init_cfg = None
    cfg.model.backbone.update(backbone)
    if meta:
        with torch.device("meta"):
            return MODELS.build(cfg.model)
    return MODELS.build(cfg.model).eval()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("config", _configs())
def test_every_config_builds_with_the_official_parameter_count(config):
    """Each config builds its full model (on the meta device: shapes only), with the official README's parameter
    count (whole Mask R-CNN / UPerNet, within 1 %)."""
    pytest.importorskip("mmdet" if config.startswith("det/") else "mmseg")
    model = _build(config)
    n = sum(p.numel() for p in model.parameters()) / 1e6
    variant = next(v for v in VARIANTS if f"_{v}_" in config).removeprefix("focalnet_")
    stated = (MASK_RCNN_PARAMS if config.startswith("det/") else UPERNET_PARAMS)[variant]
    assert abs(n / stated - 1) < 0.01, f"{config}: {n:.2f}M, official {stated}M"


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(
    "config, heads",
    [
        ("det/mask_rcnn_focalnet_tiny_srf_1x_coco.py", dict(neck=REDUCED_CHANNELS)),
        ("seg/upernet_focalnet_tiny_lrf_160k_ade20k_512.py", dict(decode_head=REDUCED_CHANNELS, auxiliary_head=64)),
    ],
)
def test_official_dense_checkpoint_loads_into_our_model(config, heads, tmp_path):
    """A whole official-layout checkpoint (the fixture's backbone, neck and heads drawn here) converts and loads
    strictly with mmengine's load_checkpoint (as ``load_from=`` does): the backbone computes the official outputs,
    the neck and heads hold the checkpoint's values."""
    pytest.importorskip("mmdet" if config.startswith("det/") else "mmseg")
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope
    from mmengine.runner import load_checkpoint

    from visionattn.dense.runner import cpu_safe_config

    cfg = cpu_safe_config(Config.fromfile(str(ROOT / "configs" / config)))
    init_default_scope(cfg.default_scope)
    cfg.model.backbone.update(model_name="focalnet_test", model_kwargs=dict(DENSE), init_cfg=None)
    for key, value in heads.items():
        cfg.model[key].in_channels = value
    model = MODELS.build(cfg.model).eval()
    g = torch.Generator().manual_seed(1)
    official = dict(_official()["state_dict"])
    official.pop("neck.lateral_convs.0.conv.weight")
    for k, v in model.state_dict().items():
        if not k.startswith("backbone."):
            official[k] = torch.randn(v.shape, generator=g).to(v.dtype) if v.is_floating_point() else v.clone()
    path = tmp_path / "converted.pth"
    torch.save({"state_dict": convert_dense_checkpoint({"state_dict": official}, model.backbone)}, path)
    load_checkpoint(model, str(path), map_location="cpu", strict=True)
    _assert_official_outputs(model.backbone, _outputs())
    state = model.state_dict()
    others = [k for k in official if not k.startswith("backbone.")]
    assert others and all(torch.equal(state[k], official[k].to(state[k].dtype)) for k in others)
