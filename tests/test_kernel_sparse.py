"""sparse_attn: the reference against dense masked attention written from the definition, gradcheck, memory
(no Nq x Nk tensor), Triton against the reference (forward and gradients), dispatch and errors.

The Triton tests run on ``_dispatch.triton_device()``: CUDA tensors on a GPU host, else the interpreter on CPU.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from visionattn.kernels import _dispatch, last_path
from visionattn.kernels import sparse as sparse_mod
from visionattn.kernels.sparse import SparseAttentionOp, sparse_attn, sparse_attn_reference

DEVICE = _dispatch.triton_device()
needs_triton = pytest.mark.skipif(
    DEVICE is None, reason="triton is not installed, or there is neither a GPU nor TRITON_INTERPRET=1"
)


def make(b=2, nh=3, nq=21, nk=23, d=8, dv=None, kk=5, always=0, dtype=torch.float64, seed=0, device="cpu"):
    """Random q, k, v and, per query, ``kk`` distinct key positions at or above ``always``."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, nh, nq, d, generator=gen, dtype=torch.float64)
    k = torch.randn(b, nh, nk, d, generator=gen, dtype=torch.float64)
    v = torch.randn(b, nh, nk, dv or d, generator=gen, dtype=torch.float64)
    scores = torch.rand(b, nh, nq, nk - always, generator=gen)
    index = scores.topk(kk, dim=-1).indices + always
    cast = dict(device=device, dtype=dtype)
    return q.to(**cast), k.to(**cast), v.to(**cast), index.to(device)


def dense_masked(q, k, v, index, scale=None, always=0):
    """Full attention with a boolean mask built from the index lists: -inf outside, one softmax per row."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    mask = torch.zeros(*q.shape[:3], k.shape[2], dtype=torch.bool)
    mask.scatter_(-1, index.cpu(), True)
    mask[..., :always] = True
    logits = (q @ k.transpose(-1, -2) * scale).masked_fill(~mask.to(q.device), float("-inf"))
    return logits.softmax(-1) @ v


@pytest.mark.parametrize("always", [0, 1, 3])
@pytest.mark.parametrize("dv", [8, 5])
def test_reference_matches_dense_masked_attention(always, dv):
    q, k, v, index = make(dv=dv, always=always)
    out = sparse_attn_reference(q, k, v, index, always=always)
    torch.testing.assert_close(out, dense_masked(q, k, v, index, always=always), rtol=0, atol=1e-12)
    out = sparse_attn_reference(q, k, v, index, always=always, scale=0.3)
    torch.testing.assert_close(out, dense_masked(q, k, v, index, 0.3, always), rtol=0, atol=1e-12)


def test_reference_hand_checked():
    # one query, keys 0..2 with logits 0, 1, 2 (scale 1); it attends keys 2 and 1 -> softmax over (2, 1)
    q = torch.tensor([[[[1.0]]]], dtype=torch.float64)
    k = torch.tensor([[[[0.0], [1.0], [2.0]]]], dtype=torch.float64)
    v = torch.tensor([[[[10.0], [20.0], [30.0]]]], dtype=torch.float64)
    out = sparse_attn_reference(q, k, v, torch.tensor([[[[2, 1]]]]), scale=1.0)
    e = torch.tensor(1.0, dtype=torch.float64).exp()
    assert out.item() == pytest.approx((30 * e + 20) / (e + 1))
    # with always=1 key 0 (logit 0) joins: weights e^2, e, 1 over keys 2, 1, 0
    out = sparse_attn_reference(q, k, v, torch.tensor([[[[2, 1]]]]), scale=1.0, always=1)
    assert out.item() == pytest.approx((30 * e * e + 20 * e + 10) / (e * e + e + 1))


def test_reference_gradcheck():
    q, k, v, index = make(b=1, nh=2, nq=5, nk=7, d=3, kk=3, always=1)
    for t in (q, k, v):
        t.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b_, c: sparse_attn_reference(a, b_, c, index, always=1), (q, k, v))


class _LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_reference_memory_is_per_selected_key_not_per_key_pair():
    # Nq * Nk = 262144 elements per head; the gathered rows are Nq * K * d = 8192
    q, k, v, index = make(b=1, nh=1, nq=512, nk=512, d=4, kk=4, always=1, dtype=torch.float32)
    for t in (q, k, v):
        t.requires_grad_(True)
    with _LargestTensor() as mode:
        sparse_attn_reference(q, k, v, index, always=1).sum().backward()
    assert mode.largest <= 512 * 4 * 4


def test_module_and_int32_index():
    q, k, v, index = make(always=2)
    op = SparseAttentionOp(scale=0.5, always=2, backend="reference")
    torch.testing.assert_close(op(q, k, v, index.int()), dense_masked(q, k, v, index, 0.5, 2), rtol=0, atol=1e-12)
    assert "always=2" in repr(op)


@needs_triton
@pytest.mark.parametrize("always", [0, 1])
@pytest.mark.parametrize("shape", [dict(nq=21, nk=23, kk=5, d=8), dict(nq=40, nk=37, kk=12, d=16, dv=12)])
def test_triton_forward_backward_fp32(shape, always):
    q, k, v, index = make(**shape, always=always, dtype=torch.float32, device=DEVICE)
    args = [t.clone().requires_grad_(True) for t in (q, k, v)]
    ref_args = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out = sparse_attn(*args, index, always=always, backend="triton")
    assert last_path("sparse_attn") == "triton"
    ref = sparse_attn_reference(*ref_args, index, always=always)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    grad = torch.randn_like(out)
    out.backward(grad)
    ref.backward(grad)
    for name, a, r in zip("qkv", args, ref_args):
        torch.testing.assert_close(a.grad, r.grad, rtol=0, atol=1e-4, msg=lambda m, n=name: f"d{n}: {m}")


@needs_triton
def test_triton_fp16_and_strided_inputs():
    # q, k, v as a model makes them: slices of one qkv tensor (B, N, 3, heads, d) permuted, not contiguous
    gen = torch.Generator().manual_seed(1)
    qkv = torch.randn(2, 30, 3, 2, 16, generator=gen).to(DEVICE, torch.float16).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    index = torch.rand(2, 2, 30, 29, generator=gen).topk(8, -1).indices.add(1).to(DEVICE)
    args = [t.detach().requires_grad_(True) for t in (q, k, v)]
    ref_args = [t.detach().float().requires_grad_(True) for t in (q, k, v)]
    out = sparse_attn(*args, index, always=1, backend="triton")
    ref = sparse_attn_reference(*ref_args, index, always=1)
    torch.testing.assert_close(out.float(), ref, rtol=0, atol=2e-3)
    out.float().sum().backward()
    ref.sum().backward()
    for a, r in zip(args, ref_args):
        torch.testing.assert_close(a.grad.float(), r.grad, rtol=0, atol=2e-3)


@needs_triton
@pytest.mark.parametrize("bm, bk", [(16, 16), (8, 4)])
def test_triton_tile_sizes(monkeypatch, bm, bk):
    monkeypatch.setitem(sparse_mod._INTERPRET, "BM", bm)  # the interpreter's config (a GPU autotunes)
    monkeypatch.setitem(sparse_mod._INTERPRET, "BK", bk)
    q, k, v, index = make(nq=19, kk=7, always=1, dtype=torch.float32, device=DEVICE)
    out = sparse_attn(q, k, v, index, always=1, backend="triton")
    torch.testing.assert_close(out, sparse_attn_reference(q, k, v, index, always=1), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "change, exc, match",
    [
        (dict(q=torch.zeros(2, 3, 4)), ValueError, r"q must be 4-D \(B, heads, N, dim\)"),
        (dict(index=torch.zeros(2, 3, 21, 5)), TypeError, "index must be int64 or int32"),
        (dict(index=torch.zeros(2, 3, 20, 5, dtype=torch.long)), ValueError, r"index must be \(B, heads, Nq, K\)"),
        (dict(k=torch.zeros(2, 3, 23, 4, dtype=torch.float64)), ValueError, "k must be"),
        (dict(v=torch.zeros(2, 3, 23, 8)), TypeError, "share one floating dtype"),
        (dict(always=24), ValueError, r"always=24 must be an int in \[0, Nk=23\]"),
        (dict(index=torch.zeros(2, 3, 21, 0, dtype=torch.long)), ValueError, "at least one key"),
    ],
)
def test_errors(change, exc, match):
    q, k, v, index = make()
    kwargs = dict(q=q, k=k, v=v, index=index, always=0)
    kwargs.update(change)
    with pytest.raises(exc, match=match):
        sparse_attn(**kwargs)
