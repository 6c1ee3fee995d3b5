"""One dispatch for every op: the same fallback rule, error types, messages, op names and fp32 precision rule."""

from __future__ import annotations

import pytest
import torch
from visionattn.kernels import (
    _dispatch,
    bra,
    bra_reference,
    halo_attn,
    halo_attn_reference,
    last_path,
    na2d,
    na2d_reference,
    sparse_attn,
    sparse_attn_reference,
)


def _inputs(op: str, d: int = 8, dtype=torch.float32, device="cpu"):
    """(function, reference, args, kwargs) of one small call of ``op``."""
    gen = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen).to(device, dtype)

    if op == "bra":
        routing = torch.tensor([[[1, 0], [0, 2], [2, 1]]], device=device)
        return bra, bra_reference, (rnd(1, 1, 3, 4, d), rnd(1, 1, 3, 4, d), rnd(1, 1, 3, 4, d), routing), {}
    if op == "na2d":
        return na2d, na2d_reference, (rnd(1, 1, 5, 6, d), rnd(1, 1, 5, 6, d), rnd(1, 1, 5, 6, d), 3), {}
    if op == "sparse_attn":
        index = torch.tensor([[[[1, 2], [0, 3], [2, 1]]]], device=device)
        return sparse_attn, sparse_attn_reference, (rnd(1, 1, 3, d), rnd(1, 1, 4, d), rnd(1, 1, 4, d), index), {}
    return halo_attn, halo_attn_reference, (rnd(1, 1, 4, 4, d), rnd(1, 1, 4, 4, d), rnd(1, 1, 4, 4, d), 2, 1), {}


@pytest.mark.parametrize("op", _dispatch.OPS)
def test_unsupported_dtype_same_error_for_every_op(op, monkeypatch):
    fn, _, args, kwargs = _inputs(op, dtype=torch.float64)
    monkeypatch.setattr(_dispatch, "interpreting", lambda: True)  # let "triton" pass the device check on CPU
    monkeypatch.setattr(_dispatch, "HAS_TRITON", True)
    with pytest.raises(TypeError) as info:
        fn(*args, **kwargs, backend="triton")
    assert str(info.value) == (
        f"{op}: the Triton kernels take float16, bfloat16 or float32 inputs, got torch.float64; "
        "cast the inputs or use backend='reference'"
    )
    monkeypatch.setenv(_dispatch.ENV_VAR, "triton")  # the environment is as explicit as the argument
    with pytest.raises(TypeError, match=f"^{op}: the Triton kernels take float16"):
        fn(*args, **kwargs)


@pytest.mark.parametrize("op", _dispatch.OPS)
def test_head_dim_limit_same_error_for_every_op(op, monkeypatch):
    fn, _, args, kwargs = _inputs(op, d=_dispatch.MAX_HEAD_DIM + 1)
    monkeypatch.setattr(_dispatch, "interpreting", lambda: True)
    monkeypatch.setattr(_dispatch, "HAS_TRITON", True)
    with pytest.raises(ValueError, match=rf"^{op}: the Triton kernels take head_dim <= 256, got .* head_dim 257; "):
        fn(*args, **kwargs, backend="triton")


@pytest.mark.parametrize("op", _dispatch.OPS)
@pytest.mark.parametrize("dtype, d", [(torch.float64, 8), (torch.float32, 300)])
def test_auto_falls_back_to_the_reference_for_every_op(op, dtype, d, monkeypatch):
    """Where auto would pick the kernel (CUDA inputs), inputs it cannot take run the reference instead."""
    fn, ref, args, kwargs = _inputs(op, d=d, dtype=dtype)
    monkeypatch.setattr(_dispatch, "choose", lambda op, *tensors, backend=None: "triton")  # as on CUDA inputs
    monkeypatch.setenv(_dispatch.ENV_VAR, "auto")
    out = fn(*args, **kwargs)
    assert last_path(op) == "reference"
    torch.testing.assert_close(out, ref(*args, **kwargs), rtol=0, atol=0)


@pytest.mark.parametrize("op", _dispatch.OPS)
def test_inputs_on_two_devices_raise_on_every_path(op):
    fn, _, args, kwargs = _inputs(op)
    moved = (args[0], args[1].to("meta"), *args[2:])
    for backend in ("reference", "auto"):
        with pytest.raises(ValueError, match=f"^{op}: k is on meta but q is on cpu; put all inputs on one device"):
            fn(*moved, **kwargs, backend=backend)


def test_bad_backend_and_env_name_the_op_and_the_choices(monkeypatch):
    for op in _dispatch.OPS:
        fn, _, args, kwargs = _inputs(op)
        with pytest.raises(ValueError, match=f"^{op}: backend='cuda' is not one of auto, triton, reference"):
            fn(*args, **kwargs, backend="cuda")
    monkeypatch.setenv(_dispatch.ENV_VAR, "fast")
    with pytest.raises(ValueError, match="VISIONATTN_KERNELS='fast' is not one of auto, triton, reference"):
        _dispatch.kernel_mode()


def test_one_name_per_op():
    assert _dispatch.OPS == ("bra", "na2d", "halo_attn", "sparse_attn")
    for op in _dispatch.OPS:
        fn, _, args, kwargs = _inputs(op)
        fn(*args, **kwargs, backend="reference")
        assert last_path(op) == "reference"
    with pytest.raises(ValueError, match="op='halo' is not one of bra, na2d, halo_attn, sparse_attn"):
        last_path("halo")


@pytest.fixture
def tf32_switch():
    """Set torch's TF32 matmul switch (a module with a custom setattr: monkeypatch cannot restore it)."""
    before = torch.backends.cuda.matmul.allow_tf32

    def set_(value: bool):
        torch.backends.cuda.matmul.allow_tf32 = value

    yield set_
    torch.backends.cuda.matmul.allow_tf32 = before


def test_fp32_precision_rule_follows_torch_matmul_switch(tf32_switch):
    tf32_switch(False)
    assert _dispatch.dot_precision(torch.float32) == "ieee"
    tf32_switch(True)
    assert _dispatch.dot_precision(torch.float32) == "tf32"
    # half types always run tensor-core products; the argument does not apply to them
    assert _dispatch.dot_precision(torch.float16) == "tf32"


def test_bf16_upcast_only_in_the_interpreter(monkeypatch, tf32_switch):
    monkeypatch.setattr(_dispatch, "interpreting", lambda: True)
    assert _dispatch.upcast_bf16(torch.bfloat16) and not _dispatch.upcast_bf16(torch.float16)
    tf32_switch(False)
    assert _dispatch.dot_precision(torch.bfloat16) == "ieee"  # upcast tiles are fp32: the fp32 rule applies
    monkeypatch.setattr(_dispatch, "interpreting", lambda: False)
    assert not _dispatch.upcast_bf16(torch.bfloat16)


def test_sizing_helpers_hand_checked():
    assert [_dispatch.next_pow2(n) for n in (0, 1, 2, 3, 16, 17, 100)] == [1, 1, 2, 4, 16, 32, 128]
    assert _dispatch.next_pow2(3, 16) == 16 and _dispatch.next_pow2(40, 16) == 64
    assert [_dispatch.head_block(d) for d in (3, 16, 24, 32, 33, 256)] == [16, 16, 32, 32, 64, 256]


def test_triton_device():
    dev = _dispatch.triton_device()
    if not _dispatch.HAS_TRITON:
        assert dev is None
    elif torch.cuda.is_available():
        assert dev == torch.device("cuda")
    else:
        assert dev == (torch.device("cpu") if _dispatch.interpreting() else None)


@pytest.mark.skipif(not _dispatch.HAS_TRITON, reason="triton is not installed")
def test_interpreter_config_is_read_at_launch(monkeypatch):
    """TunedKernel launches its interpreter dict as it is at call time (the tests shrink tiles this way)."""
    seen = {}

    class FakeJit:
        def __getitem__(self, grid):
            return lambda *a, **kw: seen.update(kw)

    tk = _dispatch.TunedKernel("fake", FakeJit(), [], [], {"TILE": 8, "ROWS": lambda kw: kw["WIN"] // 2})
    monkeypatch.setattr(_dispatch, "interpreting", lambda: True)
    tk[(1,)](WIN=6)
    assert seen == {"WIN": 6, "TILE": 8, "ROWS": 3, "num_warps": 4, "num_stages": 1}
    monkeypatch.setitem(tk.interpret, "TILE", 4)
    tk[(1,)](WIN=6)
    assert seen["TILE"] == 4
