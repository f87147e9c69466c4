"""DenseFlow networks: exact parameter counts, the official Nyström attention, zero-init,
scripting/compiling/export, and the conditioner contract (denseflow-official.md §2, §4, §7, §11).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from flowgraph.core.op import count_parameters
from flowgraph.core.registry import nets
from flowgraph.core.types import TensorType
from flowgraph.errors import ShapeError
from flowgraph.nn.attention import (
    NystromAttention,
    check_landmarks,
    newton_pinv,
)
from flowgraph.nn.dense import (
    DenseBlock,
    ResidualDenseBlock,
)
from flowgraph.nn.denseflow_net import (
    DenseAttentionNetParams,
    DenseResidualNetParams,
)
from flowgraph.nn.dequant_context import (
    DequantContextNet,
    check_dequant_context,
)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def attn_params(**kw) -> DenseAttentionNetParams:
    return DenseAttentionNetParams.model_validate({"kind": "dense_attention", **kw})


def small_attention(**kw) -> NystromAttention:
    torch.manual_seed(0)
    return NystromAttention(6, embed=3, landmarks=4, **kw).double()


# --- exact parameter counts -----------------------------------------------------------------

def test_dense_block_counts():
    assert n_params(DenseBlock(48, 48, 7, 64, gated=True)) == 1_559_264
    # the gated output conv alone is 496·144 + 144; a plain one is 496·48 + 48
    plain = n_params(DenseBlock(48, 48, 7, 64, gated=False))
    assert 1_559_264 - plain == (496 * 144 + 144) - (496 * 48 + 48)
    assert n_params(ResidualDenseBlock(64, 4, 64)) == n_params(DenseBlock(64, 64, 4, 64))


def test_attention_count():
    assert n_params(NystromAttention(48)) == 4_728


def test_dense_attention_conditioner_count():
    p = attn_params()
    assert count_parameters(lambda: nets().get("dense_attention").build(p, 154, 308, True)) == 1_591_324
    net = nets().get("dense_attention").build(p, 154, 308, True)
    assert n_params(net) == 1_591_324
    parts = [n_params(net.in_proj), n_params(net.branches[0]), n_params(net.branches[1]),
             n_params(net.norm) + n_params(net.fuse), n_params(net.out)]
    assert parts == [7_440, 4_728, 1_559_264, 4_800, 15_092]
    assert 20 * n_params(net) == 31_826_480       # block 3 couplings, §11


@pytest.mark.parametrize("kw", [
    {"attention": None}, {"dense": False}, {"attention": {"embed": 5, "landmarks": 2}},
    {"width": 10, "depth": 2, "growth": 3, "gated": False},
])
def test_dense_attention_ablation_counts(kw):
    p = attn_params(width=kw.pop("width", 12), depth=kw.pop("depth", 2), **kw)
    net = nets().get("dense_attention").build(p, 5, 8, True)
    assert n_params(net) == count_parameters(lambda: nets().get("dense_attention").build(p, 5, 8, True))
    assert net(torch.randn(2, 5, 4, 4)).shape == (2, 8, 4, 4)


def test_dequantization_total():
    """Context net + 4 dense_residual conditioners (in 6 + 64 = 70, out 12) + 5 plain 12×12
    1×1 convs + a per-channel base (12 means, 12 log-stds) = 2,395,784 (§7, §11)."""
    p = DenseResidualNetParams(kind="dense_residual")
    context = n_params(DequantContextNet(3))
    cond = n_params(nets().get("dense_residual").build(p, 70, 12, True))
    assert (context, cond) == (157_552, 559_372)
    assert context + 4 * cond + 5 * 144 + 24 == 2_395_784


# --- Nyström attention ----------------------------------------------------------------------

def reference_official(m: NystromAttention, x: torch.Tensor, landmarks: int = 4,
                       iters: int = 6) -> torch.Tensor:
    """§4 written out per sample: a token is a run of 3E consecutive values of the channel-major
    buffer; dim −2 softmaxes; landmark means / √T; out read back without permuting."""
    e = m.embed
    outs = []
    for xn in x:
        _, h, w = xn.shape
        t = h * w
        buf = F.conv2d(xn[None], m.qkv.weight, m.qkv.bias)[0].reshape(-1)
        rows = torch.stack([buf[3 * e * r: 3 * e * (r + 1)] for r in range(t)])   # T × 3E
        q, k, v = rows[:, :e], rows[:, e:2 * e], rows[:, 2 * e:]
        seg = t // landmarks
        ql = torch.stack([q[j * seg:(j + 1) * seg].mean(0) for j in range(landmarks)])
        kl = torch.stack([k[j * seg:(j + 1) * seg].mean(0) for j in range(landmarks)])
        ql, kl = ql / math.sqrt(t), kl / math.sqrt(t)
        a1 = torch.softmax(q @ kl.T, dim=0)
        a2 = torch.softmax(ql @ kl.T, dim=0)
        a3 = torch.softmax(ql @ k.T, dim=0)
        eye = torch.eye(landmarks, dtype=x.dtype)
        z = a2.T / (a2.abs().sum(0).max() * a2.abs().sum(1).max())
        for _ in range(iters):
            az = a2 @ z
            z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
        out = a1 @ z @ (a3 @ v) + v                      # T × E
        outs.append(F.conv2d(out.reshape(-1).reshape(e, h, w)[None], m.proj.weight,
                             m.proj.bias)[0])
    return torch.stack(outs)


def test_official_attention_matches_reference():
    m = small_attention()
    x = torch.randn(2, 6, 4, 6, dtype=torch.float64)
    torch.testing.assert_close(m(x), reference_official(m, x), rtol=1e-9, atol=1e-9)


def test_standard_pixel_attention_is_nystromformer():
    """softmax: standard + layout: pixel = Nyströmformer with pixel tokens: Q scaled by
    1/√E, landmarks plain segment means, every softmax over the last axis."""
    m = small_attention(pixel_tokens=True, standard_softmax=True)
    x = torch.randn(2, 6, 4, 4, dtype=torch.float64)
    p = m.qkv(x).flatten(2).transpose(1, 2)
    q, k, v = p[..., :3] / math.sqrt(3), p[..., 3:6], p[..., 6:]
    ql, kl = q.reshape(2, 4, 4, 3).mean(2), k.reshape(2, 4, 4, 3).mean(2)
    a1, a2, a3 = (torch.softmax(a @ b.transpose(1, 2), -1) for a, b in
                  ((q, kl), (ql, kl), (ql, k)))
    out = a1 @ newton_pinv(a2) @ (a3 @ v) + v
    expected = m.proj(out.transpose(1, 2).reshape(2, 3, 4, 4))
    torch.testing.assert_close(m(x), expected, rtol=1e-9, atol=1e-9)


def test_layout_option_matters():
    official, pixel = small_attention(), small_attention(pixel_tokens=True)
    pixel.load_state_dict(official.state_dict())
    assert n_params(official) == n_params(pixel)
    x = torch.randn(2, 6, 4, 4, dtype=torch.float64)
    assert not torch.allclose(official(x), pixel(x), atol=1e-3)
    standard = small_attention(standard_softmax=True)
    standard.load_state_dict(official.state_dict())
    assert not torch.allclose(official(x), standard(x), atol=1e-3)


def test_newton_pinv_matches_linalg():
    torch.manual_seed(1)
    logits = 0.5 * torch.randn(5, 4, 4, dtype=torch.float64) + 3 * torch.eye(4)
    for dim in (-1, -2):
        a = torch.softmax(logits, dim=dim)
        torch.testing.assert_close(newton_pinv(a, 6), torch.linalg.pinv(a),
                                   rtol=1e-6, atol=1e-6)


def test_landmark_check():
    check_landmarks(4, 4, 4)
    with pytest.raises(ShapeError, match="divisible by the number of landmarks"):
        check_landmarks(3, 5, 4)


# --- conditioner contract -------------------------------------------------------------------

def test_zero_init_outputs():
    torch.manual_seed(0)
    p = attn_params(width=8, depth=1, growth=4)
    net = nets().get("dense_attention").build(p, 3, 6, True)
    assert torch.count_nonzero(net.out.weight) == 0 and torch.count_nonzero(net.out.bias) == 0
    assert torch.equal(net(torch.randn(2, 3, 4, 4)), torch.zeros(2, 6, 4, 4))
    q = DenseResidualNetParams(kind="dense_residual", width=8, depth=1, growth=4)
    res = nets().get("dense_residual").build(q, 5, 6, True)
    assert torch.equal(res(torch.randn(2, 5, 4, 4)), torch.zeros(2, 6, 4, 4))
    block = DenseBlock(4, 3, 2, 2, zero_init=True)
    assert torch.equal(block(torch.randn(1, 4, 3, 3)), torch.zeros(1, 3, 3, 3))


def test_check_and_params_validation():
    p = attn_params()
    nets().get("dense_attention").check(p, TensorType((154, 4, 4)))
    with pytest.raises(ShapeError, match="image"):
        nets().get("dense_attention").check(p, TensorType((154,)))
    with pytest.raises(ShapeError, match="landmarks"):
        nets().get("dense_attention").check(p, TensorType((154, 3, 3)))
    nets().get("dense_attention").check(attn_params(attention=None), TensorType((154, 3, 3)))
    with pytest.raises(ShapeError):
        nets().get("dense_residual").check(DenseResidualNetParams(kind="dense_residual"),
                                 TensorType((70,)))
    with pytest.raises(ValidationError, match="at least one branch"):
        attn_params(attention=None, dense=False)
    with pytest.raises(ValidationError):
        attn_params(attention={"layout": "pixels"})
    with pytest.raises(ValidationError):
        attn_params(heads=2)


def test_dequant_context():
    torch.manual_seed(0)
    net = DequantContextNet(3, context_width=8, depth=2, growth=4)
    # dense block 3 -> 8, a 2×2 stride-2 conv 8 -> 8, dense block 8 -> 8
    assert n_params(net) == (n_params(DenseBlock(3, 8, 2, 4)) + 4 * 8 * 8 + 8
                             + n_params(DenseBlock(8, 8, 2, 4)))
    x = torch.randint(0, 256, (2, 3, 6, 8))
    assert net(x).shape == (2, 8, 3, 4)
    seen = []
    net.block1.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    net(torch.tensor([0, 255]).reshape(1, 1, 1, 2).expand(1, 3, 2, 2))
    assert seen[0].flatten()[:2].tolist() == [-1.0, 1.0]
    check_dequant_context((3, 6, 8))
    with pytest.raises(ShapeError):
        check_dequant_context((3, 5, 8))


# --- scripting, compiling, export -----------------------------------------------------------

def scriptable_modules() -> list[tuple[str, nn.Module, torch.Tensor]]:
    torch.manual_seed(0)
    p = attn_params(width=8, depth=2, growth=4)
    cond = nets().get("dense_attention").build(p, 3, 6, True)
    nn.init.normal_(cond.out.weight)                  # so the comparison is not 0 == 0
    q = DenseResidualNetParams(kind="dense_residual", width=8, depth=2, growth=4)
    x = torch.randn(2, 3, 4, 4)
    return [
        ("official", NystromAttention(6, 3), torch.randn(2, 6, 4, 4)),
        ("pixel+standard", NystromAttention(6, 3, pixel_tokens=True, standard_softmax=True),
         torch.randn(2, 6, 4, 4)),
        ("dense_attention", cond.eval(), x),
        ("dense_residual", nets().get("dense_residual").build(q, 3, 6, True), x),
        ("dequant_context", DequantContextNet(3, context_width=8, depth=2, growth=4),
         torch.randint(0, 256, (2, 3, 4, 4))),
    ]


@pytest.mark.parametrize("case", range(5))
def test_script_equals_eager(case):
    _, m, x = scriptable_modules()[case]
    scripted = torch.jit.script(m)
    torch.testing.assert_close(scripted(x), m(x))


def test_attention_compiles_fullgraph():
    m = NystromAttention(6, 3)
    x = torch.randn(2, 6, 4, 4)
    compiled = torch.compile(m, fullgraph=True, backend="eager", dynamic=True)
    torch.testing.assert_close(compiled(x), m(x))
    x = torch.randn(2, 6, 8, 6)                      # a new H·W: the 1/√T scale must follow
    torch.testing.assert_close(compiled(x), m(x))


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_attention_onnx_export_dynamic_size(tmp_path):
    """Exported once with symbolic N, H, W; the 1/√T landmark scale must follow H·W."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from torch.export import Dim

    m = NystromAttention(6, 3).eval()
    path = tmp_path / "nystrom.onnx"
    dims = {"h": {0: Dim("N"), 2: Dim("H", min=2, max=64), 3: Dim("W", min=2, max=64)}}
    torch.onnx.export(m, (torch.randn(2, 6, 4, 4),), str(path), input_names=["h"],
                      dynamic_shapes=dims)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for size in ((4, 4), (8, 6)):
        x = torch.randn(3, 6, *size)
        (got,) = sess.run(None, {"h": x.numpy()})
        torch.testing.assert_close(torch.from_numpy(got), m(x).detach(), rtol=1e-4, atol=1e-5)
