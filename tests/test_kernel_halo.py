"""halo_attn: reference vs an independent dense formulation and timm's HaloAttn, Triton vs the reference,
timm HaloNet through use_halo_op, dispatch and errors.

The Triton tests run on ``_dispatch.triton_device()``: CUDA tensors on a GPU host, else the interpreter on CPU.
"""

from __future__ import annotations

import io

import pytest
import timm
import torch
from timm.layers.halo_attn import HaloAttn
from visionattn.kernels import _dispatch
from visionattn.kernels import halo as halo_mod
from visionattn.kernels.halo import HaloAttentionOp, halo_attn, halo_attn_reference

from visionattn.layers.halo import HaloAttnOnKernel, use_halo_op

DEVICE = _dispatch.triton_device()  # where the Triton path runs here (None: nowhere)
needs_triton = pytest.mark.skipif(
    DEVICE is None, reason="triton is not installed, or there is neither a GPU nor TRITON_INTERPRET=1"
)


def dense_halo(q, k, v, bs, halo, stride, rh=None, rw=None, scale=None, scale_pos_embed=False, pad_mode="zeros"):
    """Dense attention over every key of the (zero-extended) map with an explicit window mask and rel bias.

    Written from the definition, pair by pair: query (yq, xq) of query block (yq // bq, xq // bq) may see key
    (r, c) iff it lies in that block's window; the bias indexes the tables with ky - qy + win - 1.
    """
    b, nh, hq, wq, d = q.shape
    h, w = k.shape[2:4]
    bq, win = bs // stride, bs + 2 * halo
    scale = d**-0.5 if scale is None else scale
    if pad_mode == "zeros":  # every window position exists as a key, zero outside the image
        nbh, nbw = -(-h // bs), -(-w // bs)
        pad = (0, 0, halo, nbw * bs + halo - w, halo, nbh * bs + halo - h)
        k, v = torch.nn.functional.pad(k, pad), torch.nn.functional.pad(v, pad)
        ry, rx = torch.arange(-halo, nbh * bs + halo), torch.arange(-halo, nbw * bs + halo)
    else:
        ry, rx = torch.arange(h), torch.arange(w)
    ky_abs = ry[:, None].expand(len(ry), len(rx)).reshape(-1)
    kx_abs = rx[None, :].expand(len(ry), len(rx)).reshape(-1)
    yq = torch.arange(hq)[:, None].expand(hq, wq).reshape(-1)
    xq = torch.arange(wq)[None, :].expand(hq, wq).reshape(-1)
    ky = ky_abs[None, :] - ((yq // bq) * bs - halo)[:, None]  # (Nq, Nk) window-local key row
    kx = kx_abs[None, :] - ((xq // bq) * bs - halo)[:, None]
    allowed = (ky >= 0) & (ky < win) & (kx >= 0) & (kx < win)
    qf = q.reshape(b, nh, hq * wq, d)
    logits = qf @ k.reshape(b, nh, -1, d).transpose(-1, -2)
    bias = torch.zeros_like(logits)
    if rh is not None:
        idx = (ky - (yq % bq)[:, None] + win - 1).clamp(0, 2 * win - 2)
        bias = bias + torch.gather(qf @ rh.T, -1, idx.expand(b, nh, -1, -1))
    if rw is not None:
        idx = (kx - (xq % bq)[:, None] + win - 1).clamp(0, 2 * win - 2)
        bias = bias + torch.gather(qf @ rw.T, -1, idx.expand(b, nh, -1, -1))
    logits = (logits + bias) * scale if scale_pos_embed else logits * scale + bias
    attn = logits.masked_fill(~allowed, float("-inf")).softmax(-1)
    return (attn @ v.reshape(b, nh, -1, v.shape[-1])).reshape(b, nh, hq, wq, -1)


def make_inputs(b, nh, h, w, bs, halo, stride, d, dv, dtype=torch.float64, rel=True, grad=False):
    hq, wq = -(-h // stride), -(-w // stride)
    win = bs + 2 * halo
    q = torch.randn(b, nh, hq, wq, d, dtype=dtype)
    k = torch.randn(b, nh, h, w, d, dtype=dtype)
    v = torch.randn(b, nh, h, w, dv, dtype=dtype)
    rh = torch.randn(2 * win - 1, d, dtype=dtype) * 0.5 if rel else None
    rw = torch.randn(2 * win - 1, d, dtype=dtype) * 0.5 if rel else None
    out = [q, k, v, rh, rw]
    if grad:
        out = [None if t is None else t.requires_grad_() for t in out]
    return out


def split_qkv(attn: HaloAttn, x: torch.Tensor):
    """q, k, v of a timm HaloAttn in halo_attn's layout: (B, heads, Hq, Wq, dqk), (B, heads, H, W, d)."""
    b, _, h, w = x.shape
    nh, dqk, dv = attn.num_heads, attn.dim_head_qk, attn.dim_head_v
    q = attn.q(x)
    q = q.reshape(b, nh, dqk, *q.shape[-2:]).permute(0, 1, 3, 4, 2)
    k, v = attn.kv(x).reshape(b, nh, dqk + dv, h, w).permute(0, 1, 3, 4, 2).split([dqk, dv], dim=-1)
    return q, k, v


# ---------------------------------------------------------------- reference vs the dense definition


@pytest.mark.parametrize(
    "h, w, bs, halo, stride, pad_mode, spe",
    [
        (8, 12, 4, 1, 1, "zeros", False),
        (8, 12, 4, 2, 2, "zeros", True),
        (6, 6, 3, 4, 1, "zeros", False),  # halo wider than a block
        (8, 8, 4, 0, 1, "zeros", False),  # no halo: plain blocked attention
        (7, 10, 4, 1, 1, "zeros", False),  # not a block multiple: zero keys fill the block padding too
        (7, 10, 4, 1, 1, "mask", True),
        (9, 5, 4, 2, 2, "mask", False),
        (11, 13, 3, 2, 1, "mask", False),
        (8, 12, 4, 1, 1, "mask", False),
    ],
)
def test_reference_matches_dense_definition(h, w, bs, halo, stride, pad_mode, spe):
    q, k, v, rh, rw = make_inputs(2, 2, h, w, bs, halo, stride, 6, 5)
    out = halo_attn_reference(
        q, k, v, bs, halo, rel_height=rh, rel_width=rw, scale=0.3, scale_pos_embed=spe, pad_mode=pad_mode
    )
    exp = dense_halo(q, k, v, bs, halo, stride, rh, rw, scale=0.3, scale_pos_embed=spe, pad_mode=pad_mode)
    assert out.shape == exp.shape == (2, 2, -(-h // stride), -(-w // stride), 5)
    torch.testing.assert_close(out, exp, rtol=0, atol=1e-10)


def test_reference_single_table_and_no_table():
    q, k, v, rh, rw = make_inputs(1, 2, 8, 8, 4, 1, 1, 6, 6)
    for a, b_ in ((rh, None), (None, rw), (None, None)):
        out = halo_attn_reference(q, k, v, 4, 1, rel_height=a, rel_width=b_, pad_mode="mask")
        torch.testing.assert_close(out, dense_halo(q, k, v, 4, 1, 1, a, b_, pad_mode="mask"), rtol=0, atol=1e-10)


def test_pad_modes_differ_only_at_the_border():
    q, k, v, rh, rw = make_inputs(1, 1, 12, 12, 4, 2, 1, 4, 4)
    z = halo_attn_reference(q, k, v, 4, 2, rel_height=rh, rel_width=rw, pad_mode="zeros")
    m = halo_attn_reference(q, k, v, 4, 2, rel_height=rh, rel_width=rw, pad_mode="mask")
    # the centre block's window lies inside the 12x12 map; every other block touches the border
    torch.testing.assert_close(z[:, :, 4:8, 4:8], m[:, :, 4:8, 4:8], rtol=0, atol=1e-12)
    assert (z[:, :, :4] - m[:, :, :4]).abs().max() > 1e-3


def test_reference_gradcheck():
    for pad_mode, stride, h, w in (("zeros", 1, 4, 6), ("mask", 2, 5, 3)):
        inputs = make_inputs(1, 1, h, w, 2, 1, stride, 3, 2, grad=True)

        def f(q, k, v, rh, rw, pad_mode=pad_mode):
            return halo_attn_reference(
                q, k, v, 2, 1, rel_height=rh, rel_width=rw, scale_pos_embed=True, pad_mode=pad_mode
            )

        assert torch.autograd.gradcheck(f, inputs)


# ---------------------------------------------------------------- reference vs timm


@pytest.mark.parametrize(
    "bs, halo, stride, spe",
    [
        (4, 1, 1, False),
        (4, 2, 2, True),
        (8, 2, 1, True),
        (8, 3, 2, False),
        (7, 2, 1, False),
        (3, 4, 1, True),
        (7, 2, 2, False),
    ],  # block 7 with stride 2: timm pools after stride-1 attention
)
def test_matches_timm_halo_attn(bs, halo, stride, spe):
    timm_attn = HaloAttn(
        16, 24, stride=stride, num_heads=2, block_size=bs, halo_size=halo, qkv_bias=True, scale_pos_embed=spe
    ).eval()
    x = torch.randn(2, 16, 2 * bs, 3 * bs)
    with torch.no_grad():
        expected = timm_attn(x)
        layer = HaloAttnOnKernel(timm_attn, backend="reference")
        torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-5)
        q, k, v = split_qkv(timm_attn, x)
        out = halo_attn_reference(
            q,
            k,
            v,
            bs,
            halo,
            rel_height=timm_attn.pos_embed.height_rel,
            rel_width=timm_attn.pos_embed.width_rel,
            scale_pos_embed=spe,
        )
        # timm's output is (B, heads * dv, Hq, Wq) of the same attention, pooled by timm when it cannot stride
        # the queries (block 7, stride 2): lay ours out the same way and apply timm's own pool
        b, nh, hq, wq, dv = out.shape
        as_timm = timm_attn.pool(out.permute(0, 1, 4, 2, 3).reshape(b, nh * dv, hq, wq))
    assert out.shape[2:4] == q.shape[2:4]
    torch.testing.assert_close(as_timm, expected, rtol=0, atol=1e-5)
    assert layer.q is timm_attn.q and layer.pos_embed is timm_attn.pos_embed  # shared, not copied
    assert layer.state_dict().keys() == timm_attn.state_dict().keys()


def test_halonet26t_same_logits_after_use_halo_op():
    # timm zero-initialises each block's last BatchNorm, which would hide the attention from the logits
    model = timm.create_model("halonet26t", pretrained=False, zero_init_last=False).eval()
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        feats, logits = model.forward_features(x), model(x)
        keys = model.state_dict().keys()
        assert use_halo_op(model, backend="reference") is model
        swapped = [m for m in model.modules() if isinstance(m, HaloAttnOnKernel)]
        assert len(swapped) == 3 and not any(type(m) is HaloAttn for m in model.modules())
        assert {m.block_stride for m in swapped} == {1, 2}
        torch.testing.assert_close(model.forward_features(x), feats, rtol=0, atol=1e-5)
        torch.testing.assert_close(model(x), logits, rtol=0, atol=1e-5)
    assert model.state_dict().keys() == keys
    assert _dispatch.last_path("halo_attn") == "reference"


def test_sizes_timm_rejects_run_in_both_modes():
    attn = HaloAttn(8, 8, num_heads=2, block_size=4, halo_size=1, stride=2).eval()
    x = torch.randn(1, 8, 10, 7)
    with pytest.raises(AssertionError):
        attn(x)
    with torch.no_grad():
        q, k, v = split_qkv(attn, x)
        rel = dict(rh=attn.pos_embed.height_rel, rw=attn.pos_embed.width_rel)
        for pad_mode in ("mask", "zeros"):
            out = HaloAttnOnKernel(attn, backend="reference", pad_mode=pad_mode)(x)
            exp = dense_halo(q, k, v, 4, 1, 2, **rel, pad_mode=pad_mode)
            assert out.shape == (1, 8, 5, 4)
            torch.testing.assert_close(out, exp.permute(0, 1, 4, 2, 3).reshape(1, 8, 5, 4), rtol=0, atol=1e-5)


@pytest.mark.parametrize("hw", [(8, 12), (7, 10)])  # a block multiple, and a map timm would refuse
def test_reference_exports_to_onnx_without_unfold(hw):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    layer = HaloAttnOnKernel(
        HaloAttn(8, 16, num_heads=2, block_size=4, halo_size=1), backend="reference", pad_mode="mask"
    ).eval()
    x = torch.randn(1, 8, *hw)
    buf = io.BytesIO()
    torch.onnx.export(
        layer, (x,), buf, dynamo=False, opset_version=17, input_names=["x"], dynamic_axes={"x": {0: "batch"}}
    )
    ops = {n.op_type for n in onnx.load_from_string(buf.getvalue()).graph.node}
    assert "Unfold" not in ops and "Col2Im" not in ops
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    for batch in (x, torch.randn(3, 8, *hw)):  # the batch stays dynamic
        with torch.no_grad():
            expected = layer(batch)
        got = torch.from_numpy(sess.run(None, {"x": batch.numpy()})[0])
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


# ---------------------------------------------------------------- Triton (interpreter on CPU) vs reference


def _triton_vs_reference(shape, dtype, pad_mode="zeros", spe=False, rel=True, non_contiguous=False):
    b, nh, h, w, bs, halo, stride, d, dv = shape
    q, k, v, rh, rw = make_inputs(b, nh, h, w, bs, halo, stride, d, dv, dtype=torch.float32, rel=rel)
    if non_contiguous:  # conv-style (B, heads, d, H, W) storage, as HaloAttnOnKernel passes it
        q, k, v = (t.permute(0, 1, 4, 2, 3).contiguous().permute(0, 1, 3, 4, 2) for t in (q, k, v))
    ins = [None if t is None else t.to(DEVICE, dtype).requires_grad_() for t in (q, k, v, rh, rw)]
    out = halo_attn(
        *ins[:3],
        bs,
        halo,
        rel_height=ins[3],
        rel_width=ins[4],
        scale_pos_embed=spe,
        pad_mode=pad_mode,
        backend="triton",
    )
    assert _dispatch.last_path("halo_attn") == "triton"
    assert out.dtype == dtype
    ref_ins = [None if t is None else t.detach().float().requires_grad_() for t in ins]  # on DEVICE too
    ref = halo_attn_reference(
        *ref_ins[:3], bs, halo, rel_height=ref_ins[3], rel_width=ref_ins[4], scale_pos_embed=spe, pad_mode=pad_mode
    )
    return ins, out, ref_ins, ref


TINY = [
    # b, heads, H, W, block, halo, stride, dqk, dv
    (1, 2, 8, 8, 4, 1, 1, 16, 16),
    (2, 1, 7, 9, 4, 2, 2, 12, 20),  # ragged map, strided queries, head dims that are no power of two
    (1, 1, 6, 6, 3, 4, 1, 8, 8),  # halo wider than a block
]


@needs_triton
@pytest.mark.parametrize("shape", TINY)
@pytest.mark.parametrize("pad_mode", ["zeros", "mask"])
def test_triton_forward_backward_fp32(shape, pad_mode):
    spe = shape[6] == 2
    ins, out, ref_ins, ref = _triton_vs_reference(shape, torch.float32, pad_mode, spe=spe, non_contiguous=shape[0] == 2)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    grad = torch.randn_like(ref)
    got = torch.autograd.grad(out, ins, grad)
    exp = torch.autograd.grad(ref, ref_ins, grad)
    for name, a, e in zip(("q", "k", "v", "rel_height", "rel_width"), got, exp):
        torch.testing.assert_close(a, e, rtol=0, atol=1e-4, msg=f"d{name}")


@needs_triton
def test_triton_without_tables_and_with_one():
    for rel in (False, True):
        ins, out, ref_ins, ref = _triton_vs_reference((1, 1, 8, 4, 4, 1, 1, 16, 16), torch.float32, "mask", rel=rel)
        if rel:  # drop the height table: only the width logits
            ins[3] = ref_ins[3] = None
            out = halo_attn(*ins[:3], 4, 1, rel_width=ins[4], pad_mode="mask", backend="triton")
            ref = halo_attn_reference(*ref_ins[:3], 4, 1, rel_width=ref_ins[4], pad_mode="mask")
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
        used = [i for i, t in enumerate(ins) if t is not None]
        got = torch.autograd.grad(out.sum(), [ins[i] for i in used])
        exp = torch.autograd.grad(ref.sum(), [ref_ins[i] for i in used])
        for a, e in zip(got, exp):
            torch.testing.assert_close(a, e, rtol=0, atol=1e-4)


@needs_triton
def test_triton_fp16_forward_and_backward():
    ins, out, ref_ins, ref = _triton_vs_reference(TINY[0], torch.float16, "zeros")
    assert (out.float() - ref).abs().max().item() <= 2e-3
    grad = torch.randn_like(ref)
    got = torch.autograd.grad(out, ins[:3], grad.half())
    exp = torch.autograd.grad(ref, ref_ins[:3], grad)
    for a, e in zip(got, exp):
        assert a.dtype == torch.float16
        assert (a.float() - e).abs().max().item() <= 1e-2 * max(1.0, e.abs().max().item())


@needs_triton
@pytest.mark.skipif(
    not _dispatch.interpreting(), reason="checks the interpreter's bf16 upcast (GPU: test_kernel_gpu.py)"
)
def test_triton_bf16_forward_upcast():
    _, out, _, ref = _triton_vs_reference(TINY[0], torch.bfloat16, "mask")
    assert out.dtype == torch.bfloat16
    # bf16 rounding of the output and of the relative logits (kept in the input dtype, as timm's pos_embed)
    assert (out.float() - ref).abs().max().item() <= 3e-2


@needs_triton
def test_triton_layer_matches_timm_forward_and_backward():
    timm_attn = HaloAttn(8, 16, num_heads=2, block_size=4, halo_size=1, scale_pos_embed=True).train().to(DEVICE)
    x = torch.randn(1, 8, 8, 8).to(DEVICE).requires_grad_()
    params = [x, timm_attn.q.weight, timm_attn.kv.weight, timm_attn.pos_embed.height_rel, timm_attn.pos_embed.width_rel]
    exp = timm_attn(x)
    g = torch.randn_like(exp)
    exp_grads = torch.autograd.grad(exp, params, g)
    out = HaloAttnOnKernel(timm_attn, backend="triton")(x)
    torch.testing.assert_close(out, exp, rtol=0, atol=1e-5)
    for a, e in zip(torch.autograd.grad(out, params, g), exp_grads):
        torch.testing.assert_close(a, e, rtol=0, atol=1e-4)


@needs_triton
@pytest.mark.slow
def test_triton_halonet26t_logits():
    model = timm.create_model("halonet26t", pretrained=False, zero_init_last=False).eval().to(DEVICE)
    x = torch.randn(1, 3, 256, 256).to(DEVICE)
    with torch.no_grad():
        feats = model.forward_features(x)
        use_halo_op(model, backend="triton")
        torch.testing.assert_close(model.forward_features(x), feats, rtol=0, atol=1e-4)
    assert _dispatch.last_path("halo_attn") == "triton"


@needs_triton
@pytest.mark.parametrize("rows", [1, 16])
def test_triton_key_tile_heights(monkeypatch, rows):
    # one window row per iteration, and the whole window in one tile
    monkeypatch.setitem(halo_mod._INTERPRET, "ROWS", rows)  # the interpreter's config (a GPU autotunes)
    ins, out, ref_ins, ref = _triton_vs_reference((1, 1, 16, 8, 8, 2, 2, 16, 16), torch.float32, "zeros")
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    got = torch.autograd.grad(out.sum(), ins)
    for a, e in zip(got, torch.autograd.grad(ref.sum(), ref_ins)):
        torch.testing.assert_close(a, e, rtol=0, atol=1e-4)


# ---------------------------------------------------------------- dispatch and errors


@needs_triton
def test_dispatch_paths(monkeypatch):
    q, k, v, rh, rw = (t.to(DEVICE) for t in make_inputs(1, 1, 4, 4, 4, 1, 1, 16, 16, dtype=torch.float32))
    op = HaloAttentionOp(4, 1, backend="reference")
    ref = op(q, k, v, rh, rw)
    assert _dispatch.last_path("halo_attn") == "reference"
    monkeypatch.delenv(_dispatch.ENV_VAR, raising=False)
    halo_attn(q, k, v, 4, 1, rel_height=rh, rel_width=rw)  # auto: the kernel on CUDA tensors, else the reference
    assert _dispatch.last_path("halo_attn") == ("triton" if q.is_cuda else "reference")
    monkeypatch.setenv(_dispatch.ENV_VAR, "triton")
    out = halo_attn(q, k, v, 4, 1, rel_height=rh, rel_width=rw)
    assert _dispatch.last_path("halo_attn") == "triton"
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    # the kernels take no float64: an explicit request says so (a TypeError, as for every op), the automatic
    # path falls back
    q64, k64, v64 = q.double(), k.double(), v.double()
    with pytest.raises(TypeError, match="float64"):
        halo_attn(q64, k64, v64, 4, 1)
    monkeypatch.setenv(_dispatch.ENV_VAR, "auto")
    halo_attn(q64, k64, v64, 4, 1, backend="auto")
    assert _dispatch.last_path("halo_attn") == "reference"
    with pytest.raises(ValueError, match="backend"):
        halo_attn(q, k, v, 4, 1, backend="cuda")


@pytest.mark.parametrize(
    "change, exc, match",
    [
        (dict(q=torch.zeros(1, 1, 4, 4)), ValueError, "q must be 5-D"),
        (dict(k=torch.zeros(1, 2, 4, 4, 8)), ValueError, "k must be"),
        (dict(v=torch.zeros(1, 1, 4, 5, 8)), ValueError, "and v"),
        (dict(q=torch.zeros(1, 1, 3, 4, 8)), ValueError, "q's map 3x4"),
        (dict(k=torch.zeros(1, 1, 4, 4, 8, dtype=torch.float64)), TypeError, "dtype"),
        (dict(q=torch.zeros(1, 1, 4, 4, 8, dtype=torch.int64)), TypeError, "floating"),
        (dict(block_size=0), ValueError, "block_size"),
        (dict(halo_size=-1), ValueError, "halo_size"),
        (dict(pad_mode="reflect"), ValueError, "pad_mode"),
        (dict(rel_height=torch.zeros(9, 8)), ValueError, r"rel_height must be \(2 \* win - 1, dqk\) = \(11, 8\)"),
        (dict(rel_width=[0.0]), TypeError, "rel_width"),
    ],
)
def test_errors(change, exc, match):
    args = dict(
        q=torch.zeros(1, 1, 4, 4, 8),
        k=torch.zeros(1, 1, 4, 4, 8),
        v=torch.zeros(1, 1, 4, 4, 8),
        block_size=4,
        halo_size=1,
        pad_mode="zeros",
    )
    args.update(change)
    q, k, v, bs, halo = (args.pop(n) for n in ("q", "k", "v", "block_size", "halo_size"))
    with pytest.raises(exc, match=match):
        halo_attn(q, k, v, bs, halo, backend="reference", **args)


def test_layer_errors():
    with pytest.raises(TypeError, match="HaloAttn"):
        HaloAttnOnKernel(torch.nn.Conv2d(3, 3, 1))
    attn = HaloAttn(8, 8, num_heads=2, block_size=4, halo_size=1)
    with pytest.raises(ValueError, match="pad_mode"):
        HaloAttnOnKernel(attn, pad_mode="same")
    with pytest.raises(TypeError, match="itself a HaloAttn"):
        use_halo_op(attn)
