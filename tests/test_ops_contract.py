"""Contract tests over every registered op (built-in and plugin), plus focused tests of op-specific facts."""

from __future__ import annotations

import copy

import pytest
import torch
from pydantic import ValidationError

from flowgraph import testing as ft
from flowgraph.compile.codegen import CodegenError, Writer
from flowgraph.core.op import ModuleRef, OpDef, Site, Var
from flowgraph.core.registry import nets, ops
from flowgraph.core.types import TensorType as T
from flowgraph.errors import ShapeError
from flowgraph.ops.actnorm import ActNorm, actnorm_stats
from flowgraph.ops.base import FlowModule
from flowgraph.ops.dequantize import DequantizeUniform
from flowgraph.ops.permute import permutation
from flowgraph.ops.scales import Scale, identity_at_zero, log_scale, resolve_scale

IMG, IMG4, VEC = T((3, 4, 4)), T((4, 4, 4)), T((5,))
GLOW = {"kind": "glow", "hidden": 6}
MLP = {"kind": "mlp", "hidden": [7]}

# Every registered op (built-in or plugin) with every example it declares: no per-op code here.
CASES = [(op, ex) for op in ops() for ex in op.examples]


def _case_id(case: tuple) -> str:
    op, ex = case
    shapes = "+".join("x".join(map(str, t.shape)) for t in ex.inputs)
    extra = ",".join(f"{k}={v['kind'] if isinstance(v, dict) else v}"
                     for k, v in ex.params.items())
    return f"{op.name}[{shapes}{'|' + extra if extra else ''}" \
           f"{f'|{len(ex.conds)}cond' if ex.conds else ''}]"


def _inline(op: OpDef) -> bool:
    return type(op).build is OpDef.build


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_op_contract(case: tuple) -> None:
    op, example = case
    ft.check_example(op, example)


EXPORT_CASES = [c for c in CASES if not _inline(c[0])]


@pytest.mark.parametrize("case", EXPORT_CASES, ids=[_case_id(c) for c in EXPORT_CASES])
def test_op_exports(case: tuple) -> None:
    op, ex = case
    inputs, conds = list(ex.inputs), list(ex.conds)
    p = op.parse(ex.params)
    g = torch.Generator().manual_seed(0)
    (x,) = ft.make_inputs(inputs, 3, torch.float64, g)
    if ex.domain is not None:
        x = ex.domain[0] + (ex.domain[1] - ex.domain[0]) * x.sigmoid()
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


def test_every_registered_op_declares_examples_and_a_role() -> None:
    for op in ops():
        assert op.examples, f"{op.name} declares no examples for the contract tests"
        assert op.role in ("transform", "dequantize", "augment", "reshape", "prior"), op.name
        assert (op.role == "prior") == op.is_prior, op.name


def test_parameter_counts_come_from_the_meta_build() -> None:
    op = ops().get("affine_coupling")
    p = op.parse({"net": GLOW})
    built = op.build(p, [IMG], [])
    assert op.param_count(p, [IMG], []) == sum(t.numel() for t in built.parameters())
    big = op.parse({"net": {"kind": "glow", "hidden": 100_000}})  # 10^10 weights: no memory
    assert op.param_count(big, [IMG], []) > 10**10


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
    op = ops().get("conv1x1")
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
    op = ops().get("conv1x1")
    m = op.build(op.parse({"parameterization": "lu"}), [T((6, 2, 2))], [])
    sizes = {n: p.numel() for n, p in m.named_parameters()}
    assert sizes == {"lower": 15, "upper": 15, "log_s": 6}
    w, _ = m.weight_and_logdet()
    assert torch.allclose(w @ w.t(), torch.eye(6), atol=1e-5)  # orthogonal init


# -- coupling ------------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", ["exp_2tanh", "sigmoid", "exp", "exp_tanh"])
def test_coupling_starts_as_identity_when_scale_allows(scale: str) -> None:
    op = ops().get("affine_coupling")
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
    op = ops().get("squeeze")
    m = op.build(op.parse({}), [T((2, 4, 6))], [])
    x = torch.arange(2 * 2 * 4 * 6.0).view(2, 2, 4, 6)
    y, _ = m(x, [], None)
    assert y.shape == (2, 8, 2, 3)
    for c in range(2):
        for dy in range(2):
            for dx in range(2):
                assert torch.equal(y[:, 4 * c + 2 * dy + dx], x[:, c, dy::2, dx::2])


def test_split_concat_emit_structured_calls() -> None:
    split, concat = ops().get("split"), ops().get("concat")
    w = Writer({})
    a, b, x, y = Var("a"), Var("b"), Var("x"), Var("y")
    split.emit_forward(w, Site("s", ModuleRef("s"), (x,), (a, b), params=split.parse({}),
                               in_types=(IMG,)))
    split.emit_inverse(w, Site("s", ModuleRef("s"), (a, b), (x,), params=split.parse({}),
                               in_types=(IMG,)))
    concat.emit_inverse(w, Site("c", ModuleRef("c"), (y,), (a, b), params=concat.parse({}),
                                in_types=(IMG, T((2, 4, 4)))))
    assert w.lines == ["a, b = torch.split(x, [2, 1], dim=1)", "x = torch.cat([a, b], dim=1)",
                       "a, b = torch.split(y, [3, 2], dim=1)"]


def test_emitter_refuses_what_it_cannot_write() -> None:
    w = Writer({})
    with pytest.raises(CodegenError, match="cannot pass"):
        w.call(torch.cat, object(), out=Var("y"))
    with pytest.raises(CodegenError, match="Var"):
        w.call(torch.cat, [Var("a")], out="y")


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
    op = ops().get(name)
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
        ops().get(name).parse(params)


def test_nets_end_at_zero() -> None:
    for kind, image, extra in [("mlp", False, {}), ("glow", True, {"hidden": 5}),
                               ("resnet", True, {"hidden": 5, "norm": "batch"}),
                               ("cross_unit", True, {"norm": "batch"}), ("cross_unit", False, {})]:
        net = nets().get(kind)
        m = net.build(net.Params(kind=kind, **extra), 3, 4, image)
        out = m(torch.randn((2, 3, 4, 4) if image else (2, 3)))
        assert out.shape[1] == 4 and not out.any()


# -- priors and dequantization -------------------------------------------------------------------
def test_channel_normal_matches_torch_distributions() -> None:
    op = ops().get("channel_normal")
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
