"""`spline_coupling` (rational-quadratic neural spline coupling): the spline itself, the module
contract (float64 round trip incl. tails and ±B, log-det vs a per-sample autograd Jacobian,
identity at init, scripting, torch.export, torch.compile) and a spec that uses it."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from flowgraph import testing as ft
from flowgraph.compile import compile_spec
from flowgraph.core.registry import ops
from flowgraph.core.types import TensorType as T
from flowgraph.errors import ShapeError
from flowgraph.ops.spline import rational_quadratic_spline
from flowgraph.spec.models import FlowSpec

OP = ops().get("spline_coupling")

B = 3.0
GLOW = {"kind": "glow", "hidden": 6}
MLP = {"kind": "mlp", "hidden": [7]}
# (params, input, conditions)
CASES = [
    ({"net": GLOW}, T((3, 4, 4)), []),
    ({"net": GLOW, "bins": 5, "bound": 2.0}, T((2, 4, 4)), [T((3, 4, 4)), T((2,))]),
    ({"net": MLP}, T((9,)), []),
    ({"net": MLP, "bins": 3}, T((8,)), [T((2,))]),
]
IDS = ["image", "image-conds", "vector", "vector-cond"]


def _spline(x: torch.Tensor, u: torch.Tensor, inverse: bool = False, bound: float = B):
    return rational_quadratic_spline(x, u, bound, 1e-3, 1e-3, 1e-3, inverse)


def _inputs(x_type: T, conds: list[T], bound: float, seed: int = 0):
    """N(0, 2²) values with some set exactly to ±bound and some far in the tails."""
    g = torch.Generator().manual_seed(seed)
    x = 2.0 * torch.randn((4, *x_type.shape), generator=g, dtype=torch.float64)
    flat = x.view(4, -1)
    flat[:, -1], flat[:, -2] = bound, -bound
    flat[0, -3], flat[1, -3] = 10.0 * bound, -10.0 * bound
    return x, ft.make_inputs(conds, 4, torch.float64, g)


def _module(params: dict, x_type: T, conds: list[T], scale: float = 0.2):
    torch.manual_seed(0)  # the same weights whatever ran before
    return ft.perturb_(OP.build(OP.parse(params), [x_type], conds).double(), scale=scale)


# -- the spline ----------------------------------------------------------------------------------
def test_zero_parameters_give_the_identity() -> None:
    x = torch.linspace(-2 * B, 2 * B, 1001, dtype=torch.float64)
    y, logd = _spline(x, torch.zeros(1001, 3 * 8 - 1, dtype=torch.float64))
    assert torch.allclose(y, x, rtol=0, atol=1e-14)
    assert torch.allclose(logd, torch.zeros_like(logd), rtol=0, atol=1e-14)


def test_spline_is_monotone_continuous_and_inverts_with_its_logdet() -> None:
    g = torch.Generator().manual_seed(0)
    u = 2.0 * torch.randn(3 * 8 - 1, generator=g, dtype=torch.float64)
    x = torch.linspace(-1.5 * B, 1.5 * B, 20001, dtype=torch.float64)
    y, logd = _spline(x, u.expand(x.numel(), -1))
    assert bool((y[1:] > y[:-1]).all()), "not strictly increasing"
    lipschitz = float(logd.exp().max()) * float(x[1] - x[0]) * 1.01
    assert float((y[1:] - y[:-1]).max()) < lipschitz, "jump"  # continuous at knots and ±B
    inside = x.abs() <= B
    assert torch.equal(y[~inside], x[~inside]) and not logd[~inside].any()
    edge = torch.tensor([-B, B], dtype=torch.float64)
    y_edge, _ = _spline(edge, u.expand(2, -1))
    assert torch.allclose(y_edge, edge, rtol=0, atol=1e-14)
    x_back, logd_inv = _spline(y, u.expand(x.numel(), -1), inverse=True)
    assert torch.allclose(x_back, x, rtol=0, atol=1e-12)
    assert torch.allclose(logd_inv, -logd, rtol=0, atol=1e-10)
    # the elementwise log-derivative against autograd
    xg = x.clone().requires_grad_(True)
    (dy,) = torch.autograd.grad(_spline(xg, u.expand(x.numel(), -1))[0].sum(), xg)
    assert torch.allclose(dy.log(), logd, rtol=0, atol=1e-10)


def test_gradients_are_finite_in_the_tails_and_at_the_bound() -> None:
    x = torch.tensor([-1e4, -B, -B + 1e-12, 0.0, B - 1e-12, B, 1e4], dtype=torch.float64)
    u = (0.3 * torch.randn(7, 3 * 4 - 1, generator=torch.Generator().manual_seed(1),
                           dtype=torch.float64)).requires_grad_(True)
    for inverse in (False, True):
        xg = x.clone().requires_grad_(True)
        y, logd = _spline(xg, u, inverse)
        gx, gu = torch.autograd.grad((y + logd).sum(), (xg, u))
        assert bool(torch.isfinite(gx).all() and torch.isfinite(gu).all()), inverse
        assert gx[0] == 1 and gx[-1] == 1 and not gu[[0, -1]].any()


# -- the module ----------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_round_trip_float64_including_tails_and_bound(case) -> None:
    params, x_type, conds = case
    bound = params.get("bound", B)
    m = _module(params, x_type, conds)
    x, cond = _inputs(x_type, conds, bound)
    y, ld = m(x, cond, None)
    assert ld.dtype == torch.float64 and ld.shape == (4,)
    assert not torch.allclose(y, x)  # perturbed: not the identity
    flat_x, flat_y = x.view(4, -1), y.view(4, -1)
    assert torch.equal(flat_y[0, -3], flat_x[0, -3])  # far tail passes through
    x_back, ld_inv = m.inverse(y, cond)
    assert torch.allclose(x_back, x, rtol=0, atol=1e-10)
    assert torch.allclose(ld_inv, -ld, rtol=0, atol=1e-10)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_logdet_matches_the_per_sample_jacobian(case) -> None:
    params, x_type, conds = case
    m = _module(params, x_type, conds).eval()
    x, cond = _inputs(x_type, conds, params.get("bound", B))
    _, ld = m(x, cond, None)
    for b in range(x.shape[0]):  # one small dense Jacobian per sample (no batched slogdet)
        cb = [c[b:b + 1] for c in cond]

        def fn(v: torch.Tensor, b=b, cb=cb) -> torch.Tensor:
            return m(v.view(1, *x.shape[1:]), cb, None)[0].flatten()

        jac = torch.autograd.functional.jacobian(fn, x[b].flatten(), vectorize=True)
        sign, expected = torch.linalg.slogdet(jac)
        assert sign > 0  # orientation-preserving
        assert torch.allclose(ld[b], expected, rtol=0, atol=1e-9), (b, ld[b], expected)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_identity_at_init(case) -> None:
    params, x_type, conds = case
    m = OP.build(OP.parse(params), [x_type], conds).double()  # zero-initialised last layer
    x, cond = _inputs(x_type, conds, params.get("bound", B))
    y, ld = m(x, cond, None)
    assert torch.allclose(y, x, rtol=0, atol=1e-13)
    assert torch.allclose(ld, torch.zeros_like(ld), rtol=0, atol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_module_contract_script_and_export(case) -> None:
    """The shared checks: round trip, log-det, gradients to every parameter, freeze,
    state_dict, TorchScript == eager; then torch.export with a dynamic batch, both ways."""
    params, x_type, conds = case
    p = OP.parse(params)
    assert OP.infer(p, [x_type], conds) == {"out": x_type}
    m = _module(params, x_type, conds)
    x, cond = _inputs(x_type, conds, p.bound)
    ft.check_flow_module(m, x, cond, None, fresh=lambda: OP.build(p, [x_type], conds))
    ft.check_export(m, x, cond, None)


def test_float32_with_bf16_autocast_keeps_fp32_logdet() -> None:
    m = _module({"net": GLOW}, T((3, 4, 4)), []).float()
    x = torch.randn(2, 3, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, ld = m(x, [], None)
    assert y.dtype == torch.float32 and ld.dtype == torch.float32
    x_back, _ = m.inverse(m(x, [], None)[0], [])
    assert torch.allclose(x_back, x, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_back, ld_inv = m.inverse(y, [])
    assert ld_inv.dtype == torch.float32 and torch.allclose(ld_inv, -ld, atol=1e-3)
    assert torch.allclose(x_back, x, atol=1e-4)


def test_builds_on_the_meta_device() -> None:
    with torch.device("meta"):
        m = OP.build(OP.parse({"net": GLOW, "bins": 4}), [T((3, 4, 4))], [])
    assert all(t.is_meta for t in m.parameters())
    # glow net 2 -> 6 -> 6 -> (3·4 − 1)·1 channels
    assert sum(t.numel() for t in m.parameters()) == (2 * 6 * 9 + 6) + (36 + 6) + (6 * 11 * 9 + 11)


def test_torch_compile_fullgraph() -> None:
    m = _module({"net": GLOW}, T((3, 4, 4)), [T((2,))]).eval()
    x, cond = _inputs(T((3, 4, 4)), [T((2,))], B)
    torch._dynamo.reset()
    fwd = torch.compile(m, fullgraph=True, backend="eager")
    inv = torch.compile(m.inverse, fullgraph=True, backend="eager")
    with torch.no_grad():
        y, ld = m(x, cond, None)
        yc, ldc = fwd(x, cond, None)
        assert torch.allclose(yc, y) and torch.allclose(ldc, ld)
        assert torch.allclose(inv(y, cond)[0], x, atol=1e-10)


# -- static side ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("params", "x", "conds", "text"), [
    ({"net": GLOW}, T((1, 4, 4)), [], "at least 2 channels"),
    ({"net": GLOW}, T((3, 4, 4), 8), [], "dequantize"),
    ({"net": GLOW}, T((3, 4, 4)), [T((2, 2, 2))], "spatial size 4×4"),
    ({"net": MLP}, T((3, 4, 4)), [], "needs vector features"),
    ({"net": MLP}, T((5,)), [T((3, 4, 4))], "vector input"),
])
def test_shape_rules(params, x, conds, text) -> None:
    with pytest.raises(ShapeError) as info:
        OP.infer(OP.parse(params), [x], conds)
    assert text in info.value.message + (info.value.hint or "")


@pytest.mark.parametrize("bad", [{"bins": 1}, {"bound": 0.0}, {"min_derivative": 0.0},
                                 {"min_bin_width": 0.2, "bins": 5}, {"tails": "linear"}])
def test_invalid_params_are_rejected(bad: dict) -> None:
    with pytest.raises(ValidationError):
        OP.parse({"net": GLOW, **bad})


def test_a_spec_with_spline_couplings_compiles_and_round_trips() -> None:
    spec = {
        "flowgraph": 1, "name": "nsf-tiny",
        "inputs": {"x": {"shape": [1, 8, 8]}},
        "nodes": [
            {"id": "sq", "op": "squeeze", "in": "x"},
            {"id": "a", "op": "actnorm", "in": "sq"},
            {"id": "c", "op": "conv1x1", "in": "a", "params": {"parameterization": "lu"}},
            {"id": "s", "op": "spline_coupling", "in": "c",
             "params": {"net": {"kind": "glow", "hidden": 8}, "bins": 4}},
        ],
        "outputs": {"z": {"from": "s"}},
    }
    flow = compile_spec(FlowSpec.model_validate(spec), seed=0).double()
    x = 2.0 * torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0),
                          dtype=torch.float64)
    flow.initialize(x)
    ft.perturb_(flow, scale=0.3)
    flow.eval()
    z, logdet = flow(x)
    x_back, inv_logdet = flow.inverse_and_log_det(z)
    assert torch.allclose(x_back, x, rtol=0, atol=1e-10)
    assert torch.allclose(inv_logdet, -logdet, rtol=0, atol=1e-9)
    scripted = torch.jit.script(flow)
    with torch.no_grad(), torch.jit.optimized_execution(False):
        assert torch.allclose(scripted.inverse(z), x_back, atol=1e-12)
