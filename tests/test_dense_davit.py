"""DaViT's dense-prediction parity: the official dense backbone's outputs, its checkpoints in our detectors and
segmentors, and the official configs' values.

References: the four outputs of the official dense DaViT (``mmdet/mmdet/models/backbones/davit.py`` of
dingmyu/davit@fc79470, LayerNorm ``norm{i}`` on each) for a reduced model, in tests/fixtures/davit_dense_reduced_*
(see tests/fixtures/README.md), and the official configs (``mmdet/configs/davit_*``, ``mmseg/configs/
upernet_davit_512x512_160k_ade20k.py`` at the same commit), whose values are written out below. The
family-independent adapter tests are in tests/test_dense.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import visionattn
from visionattn.models.davit import convert_dense_checkpoint

pytest.importorskip("mmengine")

from visionattn.dense import VisionAttnBackbone  # noqa: E402
from visionattn.dense.backbone import resolve_dense_args  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
OFFICIAL = FIXTURES / "davit_dense_reduced_official.pth"
OUTPUTS = FIXTURES / "davit_dense_reduced_outputs.pt"
# davit_tiny reduced as the official model of the fixture (tests/fixtures/README.md): window 7, head dim 32
REDUCED = dict(depths=(1, 1, 2, 1), embed_dims=(32, 64, 64, 64), num_heads=(1, 2, 2, 2))
REDUCED_CHANNELS = [32, 64, 64, 64]
CASES = [("input", ""), ("input_square", "_square")]  # 100x76 (every stage padded to the window), 64x64 batch 2

pytestmark = pytest.mark.usefixtures("one_thread")


def _official() -> dict:
    return torch.load(OFFICIAL, weights_only=True)


def _outputs() -> dict:
    return torch.load(OUTPUTS, weights_only=True)


def _assert_official_outputs(backbone, ref: dict, atol: float = 1e-5) -> None:
    backbone.eval()
    for inp, suffix in CASES:
        with torch.no_grad():
            outs = backbone(ref[inp].float())
        assert len(outs) == 4
        for i, out in enumerate(outs):
            expect = ref[f"out{i}{suffix}"]
            assert out.shape == expect.shape, (inp, i)
            torch.testing.assert_close(out.double(), expect, atol=atol, rtol=0, msg=f"{inp}: output {i}")


def test_record_holds_the_official_dense_recipe():
    """The official dense DaViT: an nn.LayerNorm (eps 1e-5) on each of the four outputs, nothing else changed."""
    recipe = visionattn.get_family("davit").dense
    assert (recipe.out_norm, recipe.out_norm_eps, dict(recipe.model_kwargs)) == ("ln2d", 1e-5, {})
    with torch.device("meta"):
        b = VisionAttnBackbone("davit_tiny")
    assert b.channels == [96, 192, 384, 768] and b.strides == [4, 8, 16, 32]
    assert [(n.normalized_shape[0], n.eps) for n in b.out_norms] == [(c, 1e-5) for c in b.channels]


def test_converted_official_backbone_gives_the_official_outputs():
    """The official dense checkpoint's backbone, converted, loads strictly and reproduces the four normed outputs."""
    state = convert_dense_checkpoint(_official())
    b = VisionAttnBackbone("davit_tiny", REDUCED)
    b.load_state_dict({k.removeprefix("backbone."): v.float() for k, v in state.items()}, strict=True)
    _assert_official_outputs(b, _outputs())


def test_out_norm_epsilon_matters_at_this_tolerance():
    """The recipe's eps 1e-5 is needed: the adapter's default 1e-6 misses the official outputs by more than 1e-5."""
    state = convert_dense_checkpoint(_official())
    b = VisionAttnBackbone("davit_tiny", REDUCED, out_norm_eps=1e-6).eval()
    b.load_state_dict({k.removeprefix("backbone."): v.float() for k, v in state.items()}, strict=True)
    ref = _outputs()
    with torch.no_grad():
        outs = b(ref["input"].float())
    assert max((o.double() - ref[f"out{i}"]).abs().max().item() for i, o in enumerate(outs)) > 1e-5


def test_converter_maps_every_official_key_once():
    src = _official()["state_dict"]
    state = convert_dense_checkpoint(src)
    assert len(state) == len(src)
    assert all(torch.equal(state[f"backbone.out_norms.{i}.weight"], src[f"backbone.norm{i}.weight"]) for i in range(4))
    assert torch.equal(state["backbone.trunk.stem.conv.weight"], src["backbone.patch_embeds.0.proj.weight"])
    assert torch.equal(
        state["backbone.trunk.stages_2.blocks.1.0.cpe2.proj.weight"],
        src["backbone.main_blocks.2.1.0.cpe.1.proj.weight"],
    )
    assert torch.equal(
        state["backbone.trunk.stages_3.downsample.conv.weight"], src["backbone.patch_embeds.3.proj.weight"]
    )
    assert torch.equal(state["backbone.trunk.stages_1.downsample.norm.bias"], src["backbone.patch_embeds.1.norm.bias"])
    # the bare state_dict and the mmcv file give the same result
    assert convert_dense_checkpoint(_official()).keys() == state.keys()


def test_converter_errors():
    with pytest.raises(ValueError, match=r"prefix='model\.'"):
        convert_dense_checkpoint(_official(), prefix="model.")
    converted = convert_dense_checkpoint(_official())
    with pytest.raises(ValueError, match="already in visionattn's layout"):
        convert_dense_checkpoint(converted)
    with pytest.raises(TypeError, match="state_dict"):
        convert_dense_checkpoint([1, 2])


def _official_full_checkpoint(model, prefix="backbone.") -> dict:
    """An official-style mmcv checkpoint for ``model``: the fixture's backbone (official layout) plus the model's
    own neck and heads (key names mmdet 2.x / mmseg 0.x share with 3.x / 1.x), with values drawn here."""
    g = torch.Generator().manual_seed(1)
    state = dict(_official()["state_dict"])
    for k, v in model.state_dict().items():
        if not k.startswith(prefix):
            state[k] = torch.randn(v.shape, generator=g).to(v.dtype) if v.is_floating_point() else v.clone()
    return {"meta": {"mmdet_version": "2.x"}, "state_dict": state}


def _build(config: str, **overrides):
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope

    from visionattn.dense.runner import cpu_safe_config

    cfg = cpu_safe_config(Config.fromfile(str(ROOT / "configs" / config)))
    init_default_scope(cfg.default_scope)
    cfg.model.backbone.model_kwargs = dict(REDUCED)
    cfg.model.backbone.init_cfg = None
    for key, value in overrides.items():
        cfg.model[key].in_channels = value
    return MODELS.build(cfg.model).eval()


@pytest.mark.parametrize(
    "config, overrides",
    [
        ("det/mask_rcnn_davit_t_1x_coco.py", dict(neck=REDUCED_CHANNELS)),
        ("det/retinanet_davit_t_1x_coco.py", dict(neck=REDUCED_CHANNELS)),
        ("seg/upernet_davit_t_160k_ade20k_512.py", dict(decode_head=REDUCED_CHANNELS, auxiliary_head=64)),
    ],
)
def test_official_dense_checkpoint_loads_into_our_model(config, overrides, tmp_path):
    """The whole converted checkpoint loads strictly (mmengine's load_checkpoint, as ``load_from=`` does): the
    backbone computes the official outputs and the neck / heads hold the checkpoint's values."""
    pytest.importorskip(config.split("/")[0].replace("det", "mmdet").replace("seg", "mmseg"))
    from mmengine.runner import load_checkpoint

    model = _build(config, **overrides)
    official = _official_full_checkpoint(model)
    path = tmp_path / "converted.pth"
    torch.save({"state_dict": convert_dense_checkpoint(official)}, path)
    load_checkpoint(model, str(path), map_location="cpu", strict=True)
    _assert_official_outputs(model.backbone, _outputs())
    state = model.state_dict()
    others = [k for k in official["state_dict"] if not k.startswith("backbone.")]
    assert others and all(torch.equal(state[k], official["state_dict"][k].to(state[k].dtype)) for k in others)


def test_backbone_alone_from_a_converted_detector_checkpoint(tmp_path):
    """init_cfg with prefix='backbone.' takes the backbone out of a converted detector checkpoint."""
    path = tmp_path / "converted.pth"
    torch.save({"state_dict": convert_dense_checkpoint(_official())}, path)
    b = VisionAttnBackbone(
        "davit_tiny", REDUCED, init_cfg=dict(type="Pretrained", checkpoint=str(path), prefix="backbone.")
    )
    b.init_weights()
    _assert_official_outputs(b, _outputs())


def test_official_hyper_parameters_in_configs():
    """The values of DaViT's official dense configs (dingmyu/davit@fc79470; T only: S and B take T's values)."""
    from mmengine.config import Config

    def load(name):
        return Config.fromfile(str(ROOT / "configs" / name))

    widths = {
        "davit_tiny": [96, 192, 384, 768],
        "davit_small": [96, 192, 384, 768],
        "davit_base": [128, 256, 512, 1024],
    }
    models = {"t": "davit_tiny", "s": "davit_small", "b": "davit_base"}
    expect = {}  # config: (drop path, lr, weight decay, epochs or iterations)
    for v in "tsb":
        expect[f"det/mask_rcnn_davit_{v}_1x_coco.py"] = (0.1, 1e-4, 0.05, 12)
        expect[f"det/mask_rcnn_davit_{v}_3x_coco.py"] = (0.2, 1e-4, 0.05, 36)
        expect[f"det/retinanet_davit_{v}_1x_coco.py"] = (0.1, 1e-4, 0.05, 12)
        expect[f"seg/upernet_davit_{v}_160k_ade20k_512.py"] = (0.3, 6e-5, 0.01, 160000)
    for name, (dpr, lr, wd, length) in expect.items():
        cfg = load(name)
        model = models[name.split("_davit_")[1][0]]
        b = cfg.model.backbone
        kwargs, out_norm = resolve_dense_args(b.model_name, b.get("model_kwargs"), b.get("out_norm"))
        assert (b.model_name, kwargs, out_norm) == (model, dict(drop_path_rate=dpr), "ln2d"), name
        assert b.init_cfg.checkpoint == f"checkpoints/{model}_in1k.pth", name
        head = cfg.model.get("neck") or cfg.model.decode_head
        assert list(head.in_channels) == widths[model], name
        opt = cfg.optim_wrapper
        # official: AdamW on every parameter (no paramwise decay rules), fp32 ("do not use mmdet version fp16")
        assert opt.type == "OptimWrapper" and "paramwise_cfg" not in opt, name
        assert (opt.optimizer.type, opt.optimizer.lr, opt.optimizer.weight_decay) == ("AdamW", lr, wd), name
        assert cfg.train_dataloader.batch_size == 2, name
        if name.startswith("det/"):
            assert cfg.train_cfg.max_epochs == length, name
            steps = [8, 11] if length == 12 else [27, 33]
            assert cfg.param_scheduler[1].milestones == steps and cfg.param_scheduler[0].end == 500, name
            ms = cfg.train_dataloader.dataset.pipeline[3]
            assert ms.type == "RandomChoice" and len(ms.transforms) == 2, name
            assert [t.type for t in ms.transforms[1]] == ["RandomChoiceResize", "RandomCrop", "RandomChoiceResize"]
            assert ms.transforms[1][1].crop_size == (384, 600), name
            assert [s[0] for s in ms.transforms[0][0].scales] == list(range(480, 801, 32)), name
        else:
            assert cfg.train_cfg.max_iters == length and cfg.param_scheduler[-1].end == length, name
            assert cfg.model.decode_head.norm_cfg.type == "BN" and cfg.model.auxiliary_head.norm_cfg.type == "BN"
            assert cfg.model.auxiliary_head.in_channels == widths[model][2], name
    retina = load("det/retinanet_davit_t_1x_coco.py").model.neck
    assert (retina.start_level, retina.add_extra_convs, retina.num_outs) == (1, "on_input", 5)
