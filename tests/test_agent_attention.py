"""AgentAttention (visionattn/layers/agent_attention.py) against a formulation written from the paper's equations.

The reference below pools the agents with ``F.adaptive_avg_pool2d``, builds each bias by resizing the parameters
one by one (the order of the official dense code: token axes first, then the agent axes, ``ah`` / ``aw`` summed
before the resize), and computes both softmaxes explicitly, with a broadcast over the batch. The layer computes the
agents with two averaging matrices and both attentions with SDPA.
"""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F

from visionattn.export import require_onnx
from visionattn.layers.agent_attention import AgentAttention, adaptive_pool_matrix, agent_pool


def _bilinear(t, size):
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)


def reference(layer: AgentAttention, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    b, n, c = x.shape
    h, w = size
    nh, d, p = layer.num_heads, layer.head_dim, layer.pool_size
    ph, pw = layer.agent_shape
    prefix = layer.num_prefix_tokens
    q, k, v = layer.qkv(x).chunk(3, dim=-1)
    grid_q = q[:, prefix:].transpose(1, 2).reshape(b, c, h, w)
    agents = F.adaptive_avg_pool2d(grid_q, (ph, pw)).flatten(2).transpose(1, 2)  # (B, A, C)

    def heads(t):
        return t.reshape(b, t.shape[1], nh, d).transpose(1, 2)

    q, k, v, agents = heads(q), heads(k), heads(v), heads(agents)

    def over_agents(t):  # (nh, p*p, h*w) -> (nh, ph*pw, h*w)
        t = t.reshape(nh, p, p, h * w).permute(0, 3, 1, 2)
        return _bilinear(t, (ph, pw)).reshape(nh, h * w, ph * pw).permute(0, 2, 1)

    a_to_t = _bilinear(layer.an_bias, (h, w)).reshape(nh, p * p, h * w)
    a_to_t = a_to_t + _bilinear((layer.ah_bias + layer.aw_bias).squeeze(0), (h, w)).reshape(nh, p * p, h * w)
    t_to_a = _bilinear(layer.na_bias, (h, w)).reshape(nh, p * p, h * w)
    rows_cols = (layer.ha_bias + layer.wa_bias).squeeze(0).permute(0, 3, 1, 2)
    t_to_a = t_to_a + _bilinear(rows_cols, (h, w)).reshape(nh, p * p, h * w)
    bias1 = over_agents(a_to_t)
    bias2 = over_agents(t_to_a).transpose(1, 2)
    if prefix:
        bias1 = torch.cat([layer.ac_bias[0], bias1], dim=-1)
        bias2 = torch.cat([layer.ca_bias[0], bias2], dim=-2)
    scale = d**-0.5
    agent_v = torch.softmax(agents @ k.transpose(-2, -1) * scale + bias1, dim=-1) @ v
    out = torch.softmax(q @ agents.transpose(-2, -1) * scale + bias2, dim=-1) @ agent_v
    out = out.transpose(1, 2).reshape(b, n, c)
    local = layer.dwc(v[:, :, prefix:].transpose(1, 2).reshape(b, h, w, c).permute(0, 3, 1, 2))
    out = out.clone()
    out[:, prefix:] += local.flatten(2).transpose(1, 2)
    return layer.proj(out)


def _layer(**kwargs) -> AgentAttention:
    torch.manual_seed(0)
    layer = AgentAttention(**{"dim": 32, "num_heads": 4, "agent_num": 9, "bias_size": (14, 14), **kwargs}).eval()
    with torch.no_grad():  # position biases far from zero so that a wrong resize or a transposed axis shows
        for name, p in layer.named_parameters():
            if name.endswith("_bias"):
                p.normal_(0, 1.0)
    return layer


@pytest.mark.parametrize(
    "size, kwargs",
    [
        ((14, 14), {}),  # the training grid: every resize is the identity
        ((9, 23), {}),  # non-square, smaller and larger than the training grid
        ((1, 1), {}),  # a 32 px input's last stage: fewer tokens than agents
        ((14, 14), {"num_prefix_tokens": 1}),  # DeiT's class token
        ((11, 6), {"num_prefix_tokens": 1}),
        ((20, 27), {"agent_shape": (12, 12)}),  # the official dense agent grid
        ((7, 5), {"agent_shape": (4, 6)}),
        ((14, 14), {"agent_num": 16, "bias_size": (7, 7)}),
    ],
)
def test_layer_matches_written_out_equations(size, kwargs):
    layer = _layer(**kwargs)
    x = torch.randn(2, layer.num_prefix_tokens + size[0] * size[1], 32)
    with torch.no_grad():
        torch.testing.assert_close(layer(x, size), reference(layer, x, size), atol=2e-5, rtol=1e-5)


def test_gradients_match_reference():
    layer = _layer(num_prefix_tokens=1).double()
    x = torch.randn(2, 1 + 6 * 9, 32, dtype=torch.float64, requires_grad=True)
    ours = torch.autograd.grad(layer(x, (6, 9)).square().sum(), [x, *layer.parameters()])
    ref = torch.autograd.grad(reference(layer, x, (6, 9)).square().sum(), [x, *layer.parameters()])
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)


def test_pool_matrix_is_adaptive_avg_pool():
    for n, m in [(56, 3), (13, 4), (7, 7), (2, 7), (100, 9), (1, 3)]:
        eye = torch.eye(n)[None]  # pooling each unit vector gives the matrix's columns
        expected = F.adaptive_avg_pool1d(eye, m)[0].T
        torch.testing.assert_close(adaptive_pool_matrix(n, m), expected, atol=0, rtol=0)
    x = torch.randn(3, 17 * 10, 5)
    grid = x.transpose(1, 2).reshape(3, 5, 17, 10)
    expected = F.adaptive_avg_pool2d(grid, (4, 3)).flatten(2).transpose(1, 2)
    torch.testing.assert_close(agent_pool(x, (17, 10), (4, 3)), expected)


def test_onnx_export_with_a_non_divisible_agent_grid():
    """56 -> 3 pooling is what torch.onnx refuses for AdaptiveAvgPool2d; the matrix form exports and runs."""
    onnx, ort = require_onnx()
    layer = _layer()
    size = (19, 13)

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = layer

        def forward(self, x):
            return self.layer(x, size)

    x = torch.randn(2, size[0] * size[1], 32)
    buf = io.BytesIO()
    torch.onnx.export(Wrap(), (x,), buf, input_names=["x"], output_names=["y"], opset_version=17, dynamo=False)
    onnx.checker.check_model(onnx.load_from_string(buf.getvalue()))
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x": x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), reference(layer, x, size), atol=1e-4, rtol=1e-4)


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="agent_num=10 must be a perfect square"):
        AgentAttention(32, 4, agent_num=10)
    with pytest.raises(ValueError, match="dim=30 is not divisible by num_heads=4"):
        AgentAttention(30, 4)
    with pytest.raises(ValueError, match="agent_shape"):
        AgentAttention(32, 4, agent_num=9, num_prefix_tokens=1, agent_shape=(4, 4))
    layer = _layer()
    with pytest.raises(ValueError, match="50 tokens are not 0 prefix tokens \\+ a 7x7 grid"):
        layer(torch.randn(1, 50, 32), (7, 7))


def test_onnx_graph_traced_at_the_training_grid_serves_other_grids():
    """Exported at the training grid (where every resize is an exact copy) with dynamic height / width, the graph
    still resizes the biases and re-pools the agents at another grid."""
    onnx, ort = require_onnx()
    layer = _layer()  # bias_size (14, 14)

    class Map(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = layer

        def forward(self, x):  # (B, C, H, W) -> (B, H*W, C)
            return self.layer(x.flatten(2).transpose(1, 2), (x.shape[2], x.shape[3]))

    buf = io.BytesIO()
    axes = {"x": {0: "batch", 2: "height", 3: "width"}, "y": {0: "batch", 1: "tokens"}}
    torch.onnx.export(
        Map(),
        (torch.randn(1, 32, 14, 14),),
        buf,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes=axes,
        opset_version=17,
        dynamo=False,
    )
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    for h, w in [(14, 14), (9, 23)]:
        x = torch.randn(2, 32, h, w)
        (got,) = session.run(None, {"x": x.numpy()})
        with torch.no_grad():
            expected = reference(layer, x.flatten(2).transpose(1, 2), (h, w))
        torch.testing.assert_close(torch.from_numpy(got), expected, atol=1e-4, rtol=1e-4)
