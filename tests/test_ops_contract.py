"""Contract tests over every op in DEFAULT_REGISTRY, plus focused tests of op-specific facts."""

from __future__ import annotations

import copy

import pytest
import torch
from pydantic import ValidationError

from flowgraph import testing as ft
from flowgraph.errors import ShapeError
from flowgraph.nn import DEFAULT_NETS
from flowgraph.ops import DEFAULT_REGISTRY, PRIOR_OPS
from flowgraph.ops.actnorm import ActNorm, actnorm_stats
from flowgraph.ops.base import FlowModule
from flowgraph.ops.dequantize import DequantizeUniform
from flowgraph.ops.permute import permutation
from flowgraph.ops.registry import CallSite, OpDef
from flowgraph.ops.registry import TensorType as T
from flowgraph.ops.scales import Scale, identity_at_zero, log_scale, resolve_scale

IMG, IMG4, VEC = T((3, 4, 4)), T((4, 4, 4)), T((5,))
GLOW = {"kind": "glow", "hidden": 6}
MLP = {"kind": "mlp", "hidden": [7]}

# (op, params, inputs, conditions); every registry op needs at least one case.
CASES: list[tuple[str, dict, list[T], list[T]]] = [
    ("dequantize_uniform", {}, [T((3, 4, 4), 8)], []),
    ("dequantize_uniform", {}, [T((5,), 3)], []),
    ("dequantize_variational", {"steps": 2, "context_width": 8, "context_depth": 1,
                                "context_growth": 4,
                                "net": {"kind": "dense_residual", "width": 8, "depth": 1,
                                        "growth": 2}}, [T((1, 4, 4), 8)], []),
    ("scalar_affine", {"scale": -1.5, "shift": 0.3}, [IMG], []),
    ("scalar_affine", {}, [VEC], []),
    ("logit", {}, [IMG], []),
    ("logit", {"alpha": 0.05}, [VEC], []),
    ("actnorm", {}, [IMG], []),
    ("actnorm", {}, [VEC], []),
    ("conv1x1", {}, [IMG], []),
    ("conv1x1", {"parameterization": "lu"}, [IMG], []),
    ("conv1x1", {"parameterization": "lu"}, [IMG4], []),
    ("conv1x1", {}, [VEC], []),
    ("conv1x1", {"parameterization": "lu"}, [VEC], []),
    *[("affine_coupling", {"net": GLOW, "scale": s}, [IMG], [])
      for s in ("exp_2tanh", "sigmoid", "exp", "exp_tanh")],
    ("affine_coupling", {"net": GLOW, "layout": "halves"}, [IMG4], []),
    ("affine_coupling", {"net": GLOW}, [T((2, 4, 4))], [IMG, T((2,))]),
    ("affine_coupling", {"net": {"kind": "resnet", "hidden": 6, "blocks": 1, "norm": "batch"}},
     [IMG], []),
    ("affine_coupling", {"net": {"kind": "cross_unit", "expansion": 2}}, [IMG], [T((2, 4, 4))]),
    ("affine_coupling", {"net": MLP}, [VEC], []),
    ("affine_coupling", {"net": MLP, "layout": "halves", "scale": "exp"}, [VEC], [T((2,))]),
    *[("permute", {"kind": k, "seed": 3}, [t], [])
      for k in ("swap_halves", "reverse", "random") for t in (IMG, VEC)],
    ("cross_unit_coupling", {"growth": 2}, [IMG], [T((2, 4, 4))]),
    ("cross_unit_coupling", {"growth": 3, "scale": "sigmoid"}, [IMG], [IMG, T((4,))]),
    ("cross_unit_coupling", {"growth": 2, "g": {"kind": "cross_unit", "norm": "batch",
                                               "kernel": 1}}, [IMG], [IMG]),
    ("cross_unit_coupling", {"growth": 2, "g": None}, [IMG], []),
    ("cross_unit_coupling", {"growth": 2, "g": MLP}, [VEC], [T((3,))]),
    ("squeeze", {}, [IMG], []),
    ("unsqueeze", {}, [T((8, 2, 2))], []),
    ("split", {}, [IMG], []),
    ("split", {"sizes": [1, 4]}, [VEC], []),
    ("concat", {}, [IMG, T((2, 4, 4))], []),
    ("concat", {}, [VEC, T((1,)), T((2,))], []),
    ("standard_normal", {}, [IMG], []),
    ("channel_normal", {}, [IMG], []),
    ("channel_normal", {}, [VEC], []),
    ("conditional_normal", {}, [IMG], [T((2, 4, 4)), T((3,))]),
    ("conditional_normal", {}, [VEC], [T((2,))]),
]


def _case_id(case: tuple) -> str:
    name, params, inputs, conds = case
    shapes = "+".join("x".join(map(str, t.shape)) for t in inputs)
    extra = ",".join(f"{k}={v['kind'] if isinstance(v, dict) else v}" for k, v in params.items())
    return f"{name}[{shapes}{'|' + extra if extra else ''}{f'|{len(conds)}cond' if conds else ''}]"


def _inline(op: OpDef) -> bool:
    return type(op).build is OpDef.build


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_op_contract(case: tuple) -> None:
    name, params, inputs, conds = case
    op = DEFAULT_REGISTRY.get(name)
    if op.is_prior:
        ft.check_prior_op(op, params, inputs, conds)
    elif _inline(op):
        ft.check_inline_op(op, params, inputs)
    else:
        x = None
        if name == "logit":  # domain (0, 1)
            x = torch.rand((3, *inputs[0].shape), dtype=torch.float64) * 0.9 + 0.05
        ft.check_op(op, params, inputs, conds, x=x)


EXPORT_CASES = [c for c in CASES if not _inline(DEFAULT_REGISTRY.get(c[0]))]


@pytest.mark.parametrize("case", EXPORT_CASES, ids=[_case_id(c) for c in EXPORT_CASES])
def test_op_exports(case: tuple) -> None:
    name, params, inputs, conds = case
    op = DEFAULT_REGISTRY.get(name)
    p = op.parse(params)
    g = torch.Generator().manual_seed(0)
    (x,) = ft.make_inputs(inputs, 3, torch.float64, g)
    x = x.sigmoid() if name == "logit" else x
    cond = ft.make_inputs(conds, 3, torch.float64, g)
    noise = None
    if op.stochastic:
        noise = torch.randn((3, *op.noise_shape(p, inputs)), generator=g, dtype=torch.float64)
    module = ft.perturb_(op.build(p, inputs, conds).double(), x)
    if not op.is_prior:
        ft.check_export(module, x, cond, noise)
        return
    batch = torch.export.Dim("batch", min=2, max=64)
    program = torch.export.export(module, (x, cond),
                                  dynamic_shapes=({0: batch}, [{0: batch} for _ in cond]))
    assert torch.allclose(program.module()(x, cond), module.log_prob(x, cond))


def test_every_registry_op_has_a_contract_case() -> None:
    assert {c[0] for c in CASES} == set(DEFAULT_REGISTRY.names())
    assert set(PRIOR_OPS) == {op.name for op in DEFAULT_REGISTRY if op.is_prior}


def test_contract_check_catches_a_wrong_logdet() -> None:
    class Wrong(FlowModule):  # y = 2x but claims log-det 0
        def forward(self, x, cond: list[torch.Tensor], noise: torch.Tensor | None):
            return 2 * x, x.new_zeros(x.shape[0])

        @torch.jit.export
        def inverse(self, y, cond: list[torch.Tensor]):
            return y / 2, y.new_zeros(y.shape[0])

    with pytest.raises(AssertionError, match="log-det vs Jacobian"):
        ft.check_flow_module(Wrong(), torch.randn(2, 3, dtype=torch.float64), script=False)


# -- actnorm -------------------------------------------------------------------------------------
def _data(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scale = torch.tensor([0.5, 2.0, 7.0]).view(1, 3, *[1] * (len(shape) - 2))
    return 3.0 + scale * torch.randn(shape, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("shape", [(16, 3, 4, 4), (64, 3)])
def test_actnorm_data_init_standardizes(shape: tuple[int, ...]) -> None:
    x = _data(shape)
    m = ActNorm(3, len(shape) - 1, 16 if len(shape) == 4 else 1).double()
    assert int(m.initialized) == 0
    m.data_init(x)
    z, ld = m(x, [], None)
    per_channel = z.transpose(0, 1).reshape(3, -1)
    assert torch.allclose(per_channel.mean(1), torch.zeros(3, dtype=z.dtype), atol=1e-9)
    assert torch.allclose(per_channel.std(1), torch.ones(3, dtype=z.dtype), atol=1e-5)
    assert int(m.initialized) == 1
    assert torch.allclose(ld, -(z[0].numel() // 3) * m.log_scale.sum().expand(shape[0]))


def test_actnorm_load_state_dict_never_reinitialises() -> None:
    m = ActNorm(3, 3, 16).double()
    m.data_init(_data((8, 3, 4, 4)))
    loaded = ActNorm(3, 3, 16).double()
    loaded.load_state_dict(m.state_dict())
    assert int(loaded.initialized) == 1
    before = copy.deepcopy(loaded.state_dict())
    loaded.train()
    loaded(_data((8, 3, 4, 4), seed=1) * 10, [], None)  # other data: forward must not refit
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_actnorm_all_reduce_matches_the_concatenated_batch() -> None:
    x = _data((10, 3, 4, 4))
    shards = [x[:3], x[3:]]
    ranks = []
    for r in range(2):
        other = actnorm_stats(shards[1 - r])
        m = ActNorm(3, 3, 16).double()
        m.data_init(shards[r], all_reduce=lambda t, o=other: t.add_(o))
        ranks.append(m)
    single = ActNorm(3, 3, 16).double()
    single.data_init(x)
    for m in ranks:
        assert torch.allclose(m.shift, single.shift, rtol=1e-12, atol=1e-12)
        assert torch.allclose(m.log_scale, single.log_scale, rtol=1e-12, atol=1e-12)
    assert torch.equal(ranks[0].shift, ranks[1].shift)
    assert not torch.allclose(ranks[0].shift, ActNorm(3, 3, 16).double().shift)


# -- conv1x1 -------------------------------------------------------------------------------------
@pytest.mark.parametrize("param", ["plain", "lu"])
def test_conv1x1_freeze_uses_cached_tensors_only(param: str) -> None:
    op = DEFAULT_REGISTRY.get("conv1x1")
    m = op.build(op.parse({"parameterization": param}), [IMG4], []).double()
    ft.perturb_(m)
    keys = set(m.state_dict())
    x = torch.randn(2, 4, 4, 4, dtype=torch.float64)
    y, ld = m(x, [], None)
    m.freeze()
    assert m.frozen and set(m.state_dict()) == keys  # caches are not checkpointed
    yf, ldf = m(x, [], None)
    assert torch.allclose(yf, y) and torch.allclose(ldf, ld)
    w, logdet = m.weight_and_logdet()
    assert torch.allclose(logdet, torch.linalg.slogdet(w)[1])
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(3.0)
    assert torch.equal(m(x, [], None)[0], yf)  # frozen: parameters are no longer read
    assert torch.equal(torch.jit.script(m).inverse(yf, [])[0], m.inverse(yf, [])[0])


def test_conv1x1_lu_is_compact() -> None:
    op = DEFAULT_REGISTRY.get("conv1x1")
    m = op.build(op.parse({"parameterization": "lu"}), [T((6, 2, 2))], [])
    sizes = {n: p.numel() for n, p in m.named_parameters()}
    assert sizes == {"lower": 15, "upper": 15, "log_s": 6}
    w, _ = m.weight_and_logdet()
    assert torch.allclose(w @ w.t(), torch.eye(6), atol=1e-5)  # orthogonal init


# -- coupling ------------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", ["exp_2tanh", "sigmoid", "exp", "exp_tanh"])
def test_coupling_starts_as_identity_when_scale_allows(scale: str) -> None:
    op = DEFAULT_REGISTRY.get("affine_coupling")
    m = op.build(op.parse({"net": GLOW, "scale": scale}), [T((5, 4, 4))], [])
    x = torch.randn(2, 5, 4, 4)
    y, ld = m(x, [], None)
    assert torch.equal(y[:, :3], x[:, :3])  # ⌈C/2⌉ pass through
    if identity_at_zero(scale):
        assert torch.equal(y, x) and torch.equal(ld, torch.zeros(2))
    else:
        assert bool((ld < 0).all()) and not torch.allclose(y, x)


def test_scales() -> None:
    s = torch.tensor([-3.0, 0.0, 1.5])
    assert torch.allclose(log_scale(s, Scale.EXP_2TANH), 2 * torch.tanh(s / 2))
    assert torch.allclose(log_scale(s, Scale.SIGMOID), torch.sigmoid(s + 2).log())
    assert torch.equal(log_scale(s, Scale.EXP), s)
    assert torch.allclose(log_scale(s, Scale.EXP_TANH), torch.tanh(s))
    assert [identity_at_zero(n) for n in ("exp_2tanh", "sigmoid", "exp", "exp_tanh")] == [
        True, False, True, True]
    with pytest.raises(ValueError, match="known: exp_2tanh"):
        resolve_scale("softplus")


# -- permutations and reshapes -------------------------------------------------------------------
def test_permutations() -> None:
    state = torch.get_rng_state()
    for c in (1, 4, 5):
        for kind in ("swap_halves", "reverse", "random"):
            assert torch.equal(permutation(kind, c, 7).sort().values, torch.arange(c))
    assert torch.get_rng_state().equal(state)  # random used a local generator
    assert permutation("swap_halves", 5).tolist() == [3, 4, 0, 1, 2]
    assert permutation("reverse", 4).tolist() == [3, 2, 1, 0]
    assert torch.equal(permutation("random", 9, 1), permutation("random", 9, 1))
    assert not torch.equal(permutation("random", 9, 1), permutation("random", 9, 2))


def test_squeeze_channel_convention() -> None:
    op = DEFAULT_REGISTRY.get("squeeze")
    m = op.build(op.parse({}), [T((2, 4, 6))], [])
    x = torch.arange(2 * 2 * 4 * 6.0).view(2, 2, 4, 6)
    y, _ = m(x, [], None)
    assert y.shape == (2, 8, 2, 3)
    for c in range(2):
        for dy in range(2):
            for dx in range(2):
                assert torch.equal(y[:, 4 * c + 2 * dy + dx], x[:, c, dy::2, dx::2])


def test_split_concat_emit_code() -> None:
    split, concat = DEFAULT_REGISTRY.get("split"), DEFAULT_REGISTRY.get("concat")
    site = CallSite("self.s", ("x",), ("a", "b"), params=split.parse({}), in_types=(IMG,))
    assert split.emit_forward(site) == ["a, b = torch.split(x, [2, 1], dim=1)"]
    site = CallSite("self.s", ("a", "b"), ("x",), params=split.parse({}), in_types=(IMG,))
    assert split.emit_inverse(site) == ["x = torch.cat([a, b], dim=1)"]
    site = CallSite("self.c", ("y",), ("a", "b"), params=concat.parse({}),
                    in_types=(IMG, T((2, 4, 4))))
    assert concat.emit_inverse(site) == ["a, b = torch.split(y, [3, 2], dim=1)"]


# -- shape rules ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "params", "inputs", "conds", "text"), [
    ("squeeze", {}, [T((3, 5, 4))], [], "even H and W"),
    ("squeeze", {}, [VEC], [], "image input"),
    ("unsqueeze", {}, [T((6, 2, 2))], [], "divisible by 4"),
    ("split", {"sizes": [1, 1]}, [IMG], [], "sum to the channel count 3"),
    ("concat", {}, [IMG, T((2, 2, 4))], [], "agree on every dimension"),
    ("concat", {}, [IMG], [], "at least 2 inputs"),
    ("affine_coupling", {"net": GLOW}, [T((1, 4, 4))], [], "at least 2 channels"),
    ("affine_coupling", {"net": GLOW}, [IMG], [T((2, 2, 2))], "spatial size 4×4"),
    ("affine_coupling", {"net": MLP}, [VEC], [IMG], "vector input"),
    ("affine_coupling", {"net": MLP}, [IMG], [], "needs vector features"),
    ("affine_coupling", {"net": GLOW}, [T((3, 4, 4), 8)], [], "dequantize"),
    ("cross_unit_coupling", {"growth": 2}, [IMG], [], "needs at least one condition"),
    ("cross_unit_coupling", {"growth": 2, "g": None}, [IMG], [IMG], "takes no conditions"),
    ("cross_unit_coupling", {"growth": 2}, [IMG], [T((3, 8, 8))], "spatial size 4×4"),
    ("cross_unit_coupling", {"growth": 2, "g": {"kind": "cross_unit", "kernel": 2}}, [IMG],
     [IMG], "kernel must be odd"),
    ("dequantize_uniform", {}, [IMG], [], "declare `bits`"),
    ("actnorm", {}, [T((3,), 8)], [], "continuous input"),
    ("conditional_normal", {}, [IMG], [], "at least one condition"),
])
def test_shape_rules(name: str, params: dict, inputs: list, conds: list, text: str) -> None:
    op = DEFAULT_REGISTRY.get(name)
    with pytest.raises(ShapeError) as info:
        op.infer(op.parse(params), inputs, conds)
    err = info.value
    assert text in err.message + (err.hint or "")
    assert err.found


@pytest.mark.parametrize(("name", "params"), [
    ("scalar_affine", {"scale": 0.0}), ("logit", {"alpha": 0.5}), ("permute", {"kind": "x"}),
    ("cross_unit_coupling", {"growth": 0}), ("actnorm", {"scale": 1}),
    ("affine_coupling", {"net": {"kind": "glow", "hiden": 4}}), ("split", {"sizes": [0, 3]}),
])
def test_invalid_params_are_rejected(name: str, params: dict) -> None:
    with pytest.raises(ValidationError):
        DEFAULT_REGISTRY.get(name).parse(params)


def test_nets_end_at_zero_and_count_exactly() -> None:
    for kind, image, extra in [("mlp", False, {}), ("glow", True, {"hidden": 5}),
                               ("resnet", True, {"hidden": 5, "norm": "batch"}),
                               ("cross_unit", True, {"norm": "batch"}), ("cross_unit", False, {})]:
        net = DEFAULT_NETS.get(kind)
        p = net.Params(kind=kind, **extra)
        m = net.build(p, 3, 4, image)
        assert net.param_count(p, 3, 4, image) == sum(t.numel() for t in m.parameters())
        out = m(torch.randn((2, 3, 4, 4) if image else (2, 3)))
        assert out.shape[1] == 4 and not out.any()


# -- priors and dequantization -------------------------------------------------------------------
def test_channel_normal_matches_torch_distributions() -> None:
    op = DEFAULT_REGISTRY.get("channel_normal")
    prior = ft.perturb_(op.build(op.parse({}), [IMG], []).double(), scale=0.5)
    z = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    ref = torch.distributions.Normal(prior.mean, prior.log_std.exp()).log_prob(z).sum((1, 2, 3))
    assert torch.allclose(prior.log_prob(z, []), ref)
    eps = torch.randn_like(z)
    assert torch.allclose(prior.sample(eps, []), prior.mean + prior.log_std.exp() * eps)
    assert torch.allclose(prior.standardize(prior.sample(eps, []), []), eps)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dequantize_round_trip_is_exact_on_all_values(dtype: torch.dtype) -> None:
    m = DequantizeUniform(8, 256)
    x = torch.arange(256, dtype=dtype).expand(7, 256)
    extremes = torch.tensor([-1e4, -40.0, -6.0, 0.0, 6.0, 40.0, 1e4], dtype=dtype)
    noise = extremes[:, None].expand(7, 256)
    y, ld = m(x, [], noise)
    assert bool(((y * 256 - x) >= 0).all() and ((y * 256 - x) < 1).all())
    x_rec, ld_inv = m.inverse(y, [])
    assert torch.equal(x_rec, x) and not ld_inv.any()
    assert torch.allclose(ld, torch.full((7,), -256 * 8 * torch.log(torch.tensor(2.0)).item(),
                                         dtype=dtype))
    assert torch.equal(m.inverse(torch.tensor([[-0.5, 1.5]], dtype=dtype), [])[0],
                       torch.tensor([[0.0, 255.0]], dtype=dtype))  # clamped to the range
