"""2-D neighborhood attention: reference vs a naive dense form written from NATTEN's rules, Triton kernels
vs the reference, natten itself when it is installed, dispatch and errors.

The Triton tests run on ``_dispatch.triton_device()``: CUDA tensors on a GPU host, else the interpreter on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from visionattn.kernels import _dispatch
from visionattn.kernels import neighborhood as nb
from visionattn.kernels.neighborhood import NeighborhoodAttention2DOp, na2d, na2d_reference, neighbor_index

DEVICE = _dispatch.triton_device()  # where the Triton path runs here (None: nowhere)
needs_triton = pytest.mark.skipif(
    DEVICE is None, reason="triton is not installed, or there is neither a GPU nor TRITON_INTERPRET=1"
)

# ------------------------------------------------------------------------------------------------------------
# an independent dense implementation: (HW x HW) mask and bias built query by query from the written-out rule


def _axis_keys(i: int, length: int, kernel: int, dilation: int, border: str) -> dict[int, int]:
    """Keys of query ``i`` on one axis, mapped to their bias index, from NATTEN's rule in scalar code."""
    members = list(range(i % dilation, length, dilation))  # the query's dilation group
    inner = members.index(i)
    if border == "shift":
        start = min(max(inner - kernel // 2, 0), len(members) - kernel)
    else:
        start = inner - kernel // 2
    return {members[j]: j - inner + kernel - 1 for j in range(start, start + kernel) if 0 <= j < len(members)}


def naive_na2d(q, k, v, kernel, dilation, border, rpb=None, scale=None, ak=None, av=None):
    b, heads, h, w, d = q.shape
    n = h * w
    scale = d**-0.5 if scale is None else scale
    allowed = torch.zeros(n, n, dtype=torch.bool)
    bias = torch.zeros(heads, n, n, dtype=q.dtype)
    for y in range(h):
        rows = _axis_keys(y, h, kernel[0], dilation[0], border)
        for x in range(w):
            cols = _axis_keys(x, w, kernel[1], dilation[1], border)
            for ky, br in rows.items():
                for kx, bc in cols.items():
                    allowed[y * w + x, ky * w + kx] = True
                    if rpb is not None:
                        bias[:, y * w + x, ky * w + kx] = rpb[:, br, bc]
    if border == "shift":
        assert bool((allowed.sum(1) == kernel[0] * kernel[1]).all())
    qf, kf, vf = q.flatten(2, 3), k.flatten(2, 3), v.flatten(2, 3)
    logits = (qf @ kf.transpose(-1, -2) * scale + bias).masked_fill(~allowed, float("-inf"))
    if ak is not None:
        logits = torch.cat([logits, qf @ ak.transpose(-1, -2) * scale], dim=-1)
        vf = torch.cat([vf, av], dim=2)
    return (logits.softmax(-1) @ vf).view(b, heads, h, w, d)


# ------------------------------------------------------------------------------------------------------------
# cases


@dataclass
class Case:
    id: str
    b: int
    heads: int
    h: int
    w: int
    kernel: tuple[int, int]
    dilation: tuple[int, int]
    border: str
    rpb: bool
    m: int = 0
    d: int = 16
    scale: float | None = None

    def tensors(self, dtype=torch.float32, requires_grad=False, device="cpu"):
        """Inputs drawn on the CPU (the seeded default generator), then moved to ``device``."""
        shape = (self.b, self.heads, self.h, self.w, self.d)
        kh, kw = self.kernel
        out = {
            "q": torch.randn(shape),
            "k": torch.randn(shape),
            "v": torch.randn(shape),
            "rpb": torch.randn(self.heads, 2 * kh - 1, 2 * kw - 1) if self.rpb else None,
            "additional_keys": torch.randn(self.b, self.heads, self.m, self.d) if self.m else None,
            "additional_values": torch.randn(self.b, self.heads, self.m, self.d) if self.m else None,
        }
        for name, t in out.items():
            if t is not None:
                out[name] = t.to(device, torch.float32 if name == "rpb" and dtype != torch.float64 else dtype)
                out[name].requires_grad_(requires_grad)
        return out

    def kwargs(self):
        return {"kernel_size": self.kernel, "dilation": self.dilation, "border": self.border, "scale": self.scale}


CASES = [
    Case("shift-k3-rpb-2heads", 1, 2, 9, 11, (3, 3), (1, 1), "shift", rpb=True),
    Case("shift-even-k4x2-rpb", 1, 1, 10, 9, (4, 2), (1, 1), "shift", rpb=True),
    Case("shift-dil2-odd-map", 1, 2, 9, 7, (3, 3), (2, 2), "shift", rpb=True),
    Case("mask-k3-extra-scale", 1, 1, 9, 11, (3, 3), (1, 1), "mask", rpb=True, m=5, scale=0.3),
    Case("mask-window-larger-than-map", 1, 1, 5, 4, (5, 5), (1, 2), "mask", rpb=True),
    Case("shift-k5-extra-batch2", 2, 1, 9, 11, (5, 5), (1, 1), "shift", rpb=False, m=3),
]
CASE_IDS = [c.id for c in CASES]


def _double(t):
    return None if t is None else t.detach().double().requires_grad_(t.requires_grad)


def _reference64(case: Case, t: dict, grad_out=None):
    """fp64 reference output (and grads wrt the given tensors' leaves, in the same order as _leaves)."""
    t64 = {name: _double(x) for name, x in t.items()}
    out = na2d_reference(t64["q"], t64["k"], t64["v"], **{**case.kwargs(), **_extras(t64)})
    if grad_out is None:
        return out, None
    grads = torch.autograd.grad(out, _leaves(t64), grad_out.double())
    return out, grads


def _extras(t):
    return {"rpb": t["rpb"], "additional_keys": t["additional_keys"], "additional_values": t["additional_values"]}


def _leaves(t):
    return [x for x in t.values() if x is not None]


# ------------------------------------------------------------------------------------------------------------
# the window rule and the reference


def test_neighbor_index_hand_checked():
    idx, valid, pb = neighbor_index(7, 3, 1, "shift")
    assert idx[0].tolist() == [0, 1, 2] and idx[3].tolist() == [2, 3, 4] and idx[6].tolist() == [4, 5, 6]
    assert pb[0].tolist() == [2, 3, 4] and pb[3].tolist() == [1, 2, 3] and pb[6].tolist() == [0, 1, 2]
    assert bool(valid.all())
    # dilation 2 on 7: groups {0, 2, 4, 6} and {1, 3, 5}
    idx, _, pb = neighbor_index(7, 3, 2, "shift")
    assert idx[0].tolist() == [0, 2, 4] and idx[6].tolist() == [2, 4, 6] and idx[1].tolist() == [1, 3, 5]
    assert idx[5].tolist() == [1, 3, 5] and pb[5].tolist() == [0, 1, 2]
    # even kernel: two keys before the query, one after
    idx, _, _ = neighbor_index(8, 4, 1, "shift")
    assert idx[3].tolist() == [1, 2, 3, 4] and idx[0].tolist() == [0, 1, 2, 3] and idx[7].tolist() == [4, 5, 6, 7]
    # mask: centred window, outside keys flagged invalid
    idx, valid, pb = neighbor_index(5, 3, 1, "mask")
    assert valid[0].tolist() == [False, True, True] and valid[4].tolist() == [True, True, False]
    assert idx[0].tolist()[1:] == [0, 1] and pb[0].tolist() == [1, 2, 3]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_reference_matches_naive_dense(case):
    t = case.tensors(torch.float64)
    out = na2d_reference(t["q"], t["k"], t["v"], **case.kwargs(), **_extras(t))
    expected = naive_na2d(
        t["q"], t["k"], t["v"], case.kernel, case.dilation, case.border,
        rpb=t["rpb"], scale=case.scale, ak=t["additional_keys"], av=t["additional_values"],
    )  # fmt: skip
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)


def test_mask_border_is_not_shift_border():
    # interior queries agree, border queries differ: the two rules are really different
    case = Case("x", 1, 1, 7, 7, (3, 3), (1, 1), "shift", rpb=False)
    t = case.tensors(torch.float64)
    shift = na2d_reference(t["q"], t["k"], t["v"], 3, border="shift")
    mask = na2d_reference(t["q"], t["k"], t["v"], 3, border="mask")
    torch.testing.assert_close(shift[:, :, 1:-1, 1:-1], mask[:, :, 1:-1, 1:-1])
    assert (shift[:, :, 0, 0] - mask[:, :, 0, 0]).abs().max() > 1e-3


@pytest.mark.parametrize("border", ["shift", "mask"])
def test_reference_gradcheck(border):
    case = Case("g", 1, 1, 4, 6, (3, 3), (1, 2), border, rpb=True, m=2, d=3)
    t = case.tensors(torch.float64, requires_grad=True)
    names = [name for name, x in t.items() if x is not None]

    def fn(*xs):
        kw = dict(zip(names, xs))
        return na2d_reference(kw["q"], kw["k"], kw["v"], **case.kwargs(), **_extras({**t, **kw}))

    assert torch.autograd.gradcheck(fn, tuple(t[n] for n in names), eps=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------------------------
# natten (optional): our forward against the official op


@pytest.mark.parametrize(
    "case",
    [
        Case("natten-k3-extra", 1, 2, 9, 11, (3, 3), (1, 1), "shift", rpb=False, m=4),
        Case("natten-even-dil", 1, 2, 9, 10, (4, 2), (2, 3), "shift", rpb=False),
    ],
    ids=lambda c: c.id,
)
@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_forward_matches_natten(case):
    natten = pytest.importorskip("natten")
    t = case.tensors(torch.float32)

    def heads_last(x):  # ours (B, heads, ..., d) -> natten (B, ..., heads, d)
        return x.movedim(1, -2).contiguous()

    extra = {}
    if case.m:
        extra = {
            "additional_keys": heads_last(t["additional_keys"]),
            "additional_values": heads_last(t["additional_values"]),
        }
    with torch.no_grad():
        expected = natten.na2d(
            heads_last(t["q"]), heads_last(t["k"]), heads_last(t["v"]), kernel_size=case.kernel,
            dilation=case.dilation, **extra,
        ).movedim(-2, 1)  # fmt: skip
        ref = na2d_reference(t["q"], t["k"], t["v"], **case.kwargs(), **_extras(t))
        if DEVICE is not None:
            td = {name: None if x is None else x.to(DEVICE) for name, x in t.items()}
            tri = na2d(td["q"], td["k"], td["v"], **case.kwargs(), **_extras(td), backend="triton").cpu()
    torch.testing.assert_close(ref, expected, atol=1e-5, rtol=0)
    if DEVICE is None:
        pytest.skip("the reference matched natten; the Triton path has no device here")
    torch.testing.assert_close(tri, expected, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------------------------
# Triton kernels (interpreter on CPU) against the reference


@needs_triton
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_triton_forward_fp32(case):
    t = case.tensors(torch.float32, device=DEVICE)
    out = na2d(t["q"], t["k"], t["v"], **case.kwargs(), **_extras(t), backend="triton")
    assert _dispatch.last_path("na2d") == "triton"
    ref, _ = _reference64(case, t)
    assert out.dtype == torch.float32 and out.shape == t["q"].shape
    assert (out.double() - ref).abs().max().item() <= 1e-5


@needs_triton
@pytest.mark.parametrize("case", [CASES[2], CASES[3]], ids=[CASES[2].id, CASES[3].id])
def test_triton_forward_fp16(case):
    t = case.tensors(torch.float16, device=DEVICE)
    out = na2d(t["q"], t["k"], t["v"], **case.kwargs(), **_extras(t), backend="triton")
    ref, _ = _reference64(case, t)
    assert out.dtype == torch.float16
    assert (out.double() - ref).abs().max().item() <= 2e-3


@needs_triton
@pytest.mark.skipif(
    not _dispatch.interpreting(), reason="checks the interpreter's bf16 upcast (GPU: test_kernel_gpu.py)"
)
def test_triton_forward_bf16_upcast():
    # the interpreter cannot multiply bf16, so the kernel upcasts in-kernel there; the result is still bf16
    case = CASES[0]
    t = case.tensors(torch.bfloat16, device=DEVICE)
    out = na2d(t["q"], t["k"], t["v"], **case.kwargs(), **_extras(t), backend="triton")
    ref, _ = _reference64(case, t)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), ref, atol=1e-2, rtol=1e-2)


@needs_triton
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_triton_backward_fp32(case):
    t = case.tensors(torch.float32, requires_grad=True, device=DEVICE)
    out = na2d(t["q"], t["k"], t["v"], **case.kwargs(), **_extras(t), backend="triton")
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, _leaves(t), grad_out)
    _, ref_grads = _reference64(case, t, grad_out)
    names = [name for name, x in t.items() if x is not None]
    for name, g, r in zip(names, grads, ref_grads):
        assert g.shape == r.shape, name
        err = (g.double() - r).abs().max().item()
        assert err <= 1e-4, f"d{name}: max abs error {err:.2e}"


@needs_triton
@pytest.mark.parametrize(
    "case",
    [
        Case("tiles-dil2-extra", 1, 1, 9, 7, (3, 3), (2, 1), "shift", rpb=True, m=18, d=8),
        # tiles narrower than the window: the inverse window of a key tile reaches back to row 0
        Case("tiles-narrower-than-window", 1, 1, 9, 8, (5, 7), (1, 1), "shift", rpb=True, d=8),
        Case("tiles-mask-k5", 1, 1, 9, 7, (5, 5), (1, 1), "mask", rpb=True, d=8),
    ],
    ids=lambda c: c.id,
)
def test_triton_small_tiles_many_chunks(monkeypatch, case):
    # 4x4 tiles and 16-key chunks: many tiles per dilation group and several chunks per tile
    monkeypatch.setitem(nb._INTERPRET_TILE, "TH", 4)
    monkeypatch.setitem(nb._INTERPRET_TILE, "TW", 4)
    monkeypatch.setitem(nb._INTERPRET_TILE, "BN", 16)
    monkeypatch.setitem(nb._INTERPRET_EXTRA, "BN", 16)
    t = case.tensors(torch.float32, requires_grad=True, device=DEVICE)
    out = na2d(t["q"], t["k"], t["v"], **case.kwargs(), **_extras(t), backend="triton")
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, _leaves(t), grad_out)
    ref, ref_grads = _reference64(case, t, grad_out)
    assert (out.double() - ref).abs().max().item() <= 1e-5
    for g, r in zip(grads, ref_grads):
        assert (g.double() - r).abs().max().item() <= 1e-4


@needs_triton
@pytest.mark.slow
@pytest.mark.parametrize(
    "case",
    [
        Case("big-shift-k7-dil2", 1, 2, 19, 21, (7, 5), (2, 3), "shift", rpb=True, m=6, d=32),
        Case("big-mask-k3", 2, 2, 17, 18, (3, 3), (1, 1), "mask", rpb=True, m=7, d=24),
    ],
    ids=lambda c: c.id,
)
def test_triton_larger_maps(case):
    t = case.tensors(torch.float32, requires_grad=True, device=DEVICE)
    out = na2d(t["q"], t["k"], t["v"], **case.kwargs(), **_extras(t), backend="triton")
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, _leaves(t), grad_out)
    ref, ref_grads = _reference64(case, t, grad_out)
    assert (out.double() - ref).abs().max().item() <= 1e-5
    for g, r in zip(grads, ref_grads):
        assert (g.double() - r).abs().max().item() <= 1e-4


@needs_triton
@pytest.mark.slow
def test_triton_backward_fp16():
    case = CASES[3]
    t = case.tensors(torch.float16, requires_grad=True, device=DEVICE)
    out = na2d(t["q"], t["k"], t["v"], **case.kwargs(), **_extras(t), backend="triton")
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, _leaves(t), grad_out)
    _, ref_grads = _reference64(case, t, grad_out)
    for x, g, r in zip(_leaves(t), grads, ref_grads):
        assert g.dtype == x.dtype
        torch.testing.assert_close(g.double(), r.double(), atol=5e-3, rtol=5e-3)


# ------------------------------------------------------------------------------------------------------------
# dispatch, module, errors


def _small(device="cpu"):
    return tuple(torch.randn(1, 1, 6, 7, 8).to(device) for _ in range(3))


@needs_triton
def test_dispatch_paths(monkeypatch):
    q, k, v = _small(DEVICE)
    monkeypatch.delenv(_dispatch.ENV_VAR, raising=False)
    ref = na2d_reference(q, k, v, 3)
    out = na2d(q, k, v, 3)  # auto: the kernel on CUDA tensors, the reference on CPU tensors
    assert _dispatch.last_path("na2d") == ("triton" if q.is_cuda else "reference")
    torch.testing.assert_close(out, ref)
    out = na2d(q, k, v, 3, backend="triton")
    assert _dispatch.last_path("na2d") == "triton"
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    monkeypatch.setenv(_dispatch.ENV_VAR, "triton")
    na2d(q, k, v, 3)
    assert _dispatch.last_path("na2d") == "triton"
    monkeypatch.setenv(_dispatch.ENV_VAR, "reference")
    na2d(q, k, v, 3)
    assert _dispatch.last_path("na2d") == "reference"


@needs_triton
def test_dispatch_dtype_the_kernel_does_not_take(monkeypatch):
    # the same rule as every op (visionattn.kernels._dispatch): a dtype the kernels do not take is a TypeError
    q, k, v = (x.double() for x in _small(DEVICE))
    monkeypatch.delenv(_dispatch.ENV_VAR, raising=False)
    with pytest.raises(TypeError, match="float64"):
        na2d(q, k, v, 3, backend="triton")
    monkeypatch.setenv(_dispatch.ENV_VAR, "triton")
    with pytest.raises(TypeError, match="backend='reference'"):
        na2d(q, k, v, 3)
    monkeypatch.setenv(_dispatch.ENV_VAR, "auto")
    na2d(q, k, v, 3)  # the automatic path falls back
    assert _dispatch.last_path("na2d") == "reference"
    torch.testing.assert_close(na2d(q, k, v, 3, backend="reference"), na2d_reference(q, k, v, 3))


def test_module_matches_functional():
    q, k, v = _small()
    rpb = torch.randn(1, 5, 5)
    op = NeighborhoodAttention2DOp(3, dilation=2, border="mask", backend="reference")
    assert "border='mask'" in repr(op)
    torch.testing.assert_close(op(q, k, v, rpb=rpb), na2d_reference(q, k, v, 3, 2, rpb=rpb, border="mask"))


def test_errors():
    q, k, v = _small()  # 6 x 7 map
    with pytest.raises(ValueError, match="border='mask'"):
        na2d(q, k, v, 7)  # shift needs kernel <= 6 rows
    with pytest.raises(ValueError, match="kernel_size \\* dilation"):
        na2d(q, k, v, 3, dilation=3)  # 9 > 6
    na2d(q, k, v, 7, border="mask")  # any size works with the mask border
    with pytest.raises(TypeError, match="kernel_size"):
        na2d(q, k, v, 3.0)
    with pytest.raises(ValueError, match="kernel_size"):
        na2d(q, k, v, 0)
    with pytest.raises(ValueError, match="dilation"):
        na2d(q, k, v, 3, dilation=(1, 0))
    with pytest.raises(ValueError, match="border"):
        na2d(q, k, v, 3, border="zeros")
    with pytest.raises(ValueError, match="rpb must be"):
        na2d(q, k, v, 3, rpb=torch.zeros(1, 3, 3))
    with pytest.raises(ValueError, match="together"):
        na2d(q, k, v, 3, additional_keys=torch.zeros(1, 1, 2, 8))
    with pytest.raises(ValueError, match="additional_keys/values must both be"):
        na2d(q, k, v, 3, additional_keys=torch.zeros(1, 1, 2, 4), additional_values=torch.zeros(1, 1, 2, 4))
    with pytest.raises(ValueError, match="k and v must have the shape of q"):
        na2d(q, k[..., :4], v, 3)
    with pytest.raises(ValueError, match="q must be"):
        na2d(q[0], k[0], v[0], 3)
    with pytest.raises(TypeError, match="dtype"):
        na2d(q, k.half(), v, 3)
    with pytest.raises(ValueError, match="border"):
        NeighborhoodAttention2DOp(3, border="same")
