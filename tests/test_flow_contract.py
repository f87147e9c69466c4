"""The correctness contract of compiled flows, for every spec in specs/.

Full-size models: build, scripted == eager, exact round trip of the integer data, static
parameter counts == module counts. Small float64 variants of every spec (same file, shrunk with
--set overrides, dequantization removed so the data is continuous): round trip to 1e-10,
log-det against the autograd Jacobian (augmentation noise included), inverse log-det =
-forward, gradients, save/load. Plus a 2-D density that integrates to 1 and the IW bound.
"""

from __future__ import annotations

import io
import math
from typing import Any

import pytest
import torch
from conftest import SPEC_FILES

from flowgraph import testing as ft
from flowgraph.checkpoint import load_flow, save_checkpoint
from flowgraph.compile import compile_spec
from flowgraph.ops.base import std_normal_log_prob
from flowgraph.spec import read_spec
from flowgraph.spec.expand import expand
from flowgraph.spec.models import FlowSpec

IDS = [p.stem if p.parent.name == "specs" else f"{p.parent.name}/{p.stem}" for p in SPEC_FILES]
TINY_DENSE = {"kind": "dense_attention", "width": 8, "depth": 1, "growth": 4,
              "attention": {"landmarks": 1}}


def small_overrides(spec: FlowSpec) -> dict[str, Any]:
    """--set overrides that shrink a spec file to a float64-testable size, same structure."""
    args = spec.args
    out: dict[str, Any] = {}
    if "coupling_net" in args:
        glow = args["coupling_net"].get("kind") == "glow"
        out["coupling_net"] = {"kind": "glow", "hidden": 8} if glow else TINY_DENSE
        if "coupling_net_7x7" in args:
            out["coupling_net_7x7"] = TINY_DENSE
        out["units"] = [2, 2, 1][: len(args["units"])]
        out["modules"] = [1] * len(args["modules"])
        out["size"] = 8 if len(args["units"]) == 3 else 12
        if "growth" in args:
            out["growth"] = 3
    for key, value in (("steps", 2), ("hidden", 8), ("couplings", 2), ("blocks", 1)):
        if key in args and not isinstance(args[key], list):
            out[key] = value
    if "size" in args and "size" not in out:
        out["size"] = 8
    return out


def continuous_variant(spec: FlowSpec, smap) -> FlowSpec:
    """The same flow without its dequantization node: continuous input, exact bijection."""
    program, issues = expand(spec, smap)
    assert issues == []
    deq = {n.id for n in program.nodes if n.op.startswith("dequantize")}
    data = spec.model_dump(by_alias=True, exclude_defaults=True)
    (name,) = [k for k, v in data["inputs"].items() if v.get("role", "data") == "data"]
    data["inputs"][name].pop("bits", None)
    nodes = []
    for entry in data["nodes"]:
        if entry["id"] in deq:
            continue
        if entry.get("in") in deq:
            entry["in"] = name
        nodes.append(entry)
    data["nodes"] = nodes
    return FlowSpec.model_validate({"flowgraph": 1, **data})


def small_flow(path, seed: int = 0, continuous: bool = True):
    spec, _ = read_spec(path)
    spec, smap = read_spec(path, small_overrides(spec))
    if continuous:
        spec, smap = continuous_variant(spec, smap), None
    return compile_spec(spec, smap=smap, seed=seed)


def data_for(flow, batch: int, dtype=torch.float64, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if flow.bits:
        return torch.randint(0, 2**flow.bits, (batch, *flow.data_shape), generator=g).to(dtype)
    if len(flow.data_shape) == 3:  # images without dequantization: values as dequantized data
        return 0.02 + 0.96 * torch.rand(batch, *flow.data_shape, generator=g, dtype=dtype)
    return torch.randn(batch, *flow.data_shape, generator=g, dtype=dtype)


def prepared(flow, dtype=torch.float64, batch: int = 4):
    flow.to(dtype)
    x = data_for(flow, batch, dtype)
    flow.initialize(x)
    ft.perturb_(flow, scale=0.03)
    flow.eval()
    return flow, x


@pytest.mark.parametrize("path", SPEC_FILES, ids=IDS)
def test_full_size_spec_builds_scripts_and_round_trips(path):
    flow = compile_spec(path, seed=0)
    analysis = flow._analysis
    assert sum(p.numel() for p in flow.parameters()) == analysis.totals.params
    for node_id in analysis.graph.forward_order:  # static count == module count, per node
        node = analysis.graph.nodes[node_id]
        if node.param_count:
            n = sum(p.numel() for p in flow.get_submodule(node_id).parameters())
            assert n == node.param_count, node_id
    x = data_for(flow, 2, torch.float32)
    flow.initialize(x)
    assert flow.is_initialized()
    flow.eval()
    noise = flow.draw_noise(2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        z, logdet = flow(x, noise=noise)
        assert z.shape == (2, flow.latent_dim) and torch.isfinite(logdet).all()
        parts = flow.latent_parts(z)
        assert list(parts) == [n.id for n in analysis.graph.latents()]
        assert torch.equal(torch.cat([p.flatten(1) for p in parts.values()], 1), z)
        x_back = flow.inverse(z)
        lp = flow.log_prob_once(x, None, noise)
    if flow.bits:
        assert torch.equal(x_back, x)
    else:
        assert torch.allclose(x_back, x, atol=1e-4, rtol=1e-4)
    scripted = torch.jit.script(flow)
    # the profiling executor's first-call optimisation costs minutes on the large specs
    with torch.no_grad(), torch.jit.optimized_execution(False):
        assert torch.allclose(scripted.log_prob_once(x, None, noise), lp, rtol=1e-5, atol=1e-3)
        assert torch.equal(scripted.inverse(z), x_back)
        torch.manual_seed(3)
        a = scripted.sample(2, 0.7)
        torch.manual_seed(3)
        b = flow.sample(2, 0.7)
    assert a.shape == (2, *flow.data_shape) and torch.allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("path", SPEC_FILES, ids=IDS)
def test_float64_round_trip_and_logdet_against_the_jacobian(path):
    flow, x = prepared(small_flow(path))
    noise = flow.draw_noise(x.shape[0], torch.Generator().manual_seed(2), dtype=torch.float64)
    z, logdet = flow(x, noise=noise)
    x_back, inv_logdet = flow.inverse_and_log_det(z)
    assert torch.allclose(x_back, x, rtol=1e-10, atol=1e-10 * x.abs().max().item())
    if flow.noise_dim == 0:  # bijective: the inverse log-det is minus the forward one
        assert torch.allclose(inv_logdet, -logdet, rtol=1e-9, atol=1e-8)
    # log|det d(z)/d(x, e)| for one sample; e is the augmentation noise, whose own density
    # enters the bound as -log N(e): so logdet + log N(e) must equal the Jacobian's log-det.
    d, n = x[0].numel(), flow.noise_dim

    def fn(v: torch.Tensor) -> torch.Tensor:
        xs = v[:d].reshape(1, *flow.data_shape)
        es = v[d:].reshape(1, n) if n else None
        return flow(xs, noise=es)[0][0]

    v = torch.cat([x[0].flatten(), noise[0]]) if n else x[0].flatten()
    jac = torch.autograd.functional.jacobian(fn, v, vectorize=True)
    assert jac.shape[0] == jac.shape[1] == d + n
    expected = torch.linalg.slogdet(jac).logabsdet
    got = logdet[0] + (std_normal_log_prob(noise[:1])[0] if n else 0.0)
    assert torch.allclose(got, expected, rtol=1e-8, atol=1e-7), (got, expected)


@pytest.mark.parametrize("path", SPEC_FILES, ids=IDS)
def test_gradients_reach_every_parameter_and_save_load_keeps_outputs(path, tmp_path):
    flow = small_flow(path, continuous=False)
    x = data_for(flow, 4, torch.float32)
    flow.initialize(x)
    ft.perturb_(flow, scale=0.03)
    flow.train()
    noise = flow.draw_noise(4, torch.Generator().manual_seed(0))
    flow.bits_per_dim(x).mean().backward()
    missing = [n for n, p in flow.named_parameters()
               if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert missing == []
    flow.eval()
    with torch.no_grad():
        before = flow.log_prob_once(x, None, noise)
    buf = io.BytesIO()
    torch.save(flow.state_dict(), buf)
    fresh = small_flow(path, seed=99, continuous=False)  # different initial weights
    fresh.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    fresh.eval()
    assert fresh.is_initialized()
    with torch.no_grad():
        assert torch.allclose(fresh.log_prob_once(x, None, noise), before, rtol=1e-6, atol=1e-4)
    # through a checkpoint file, the spec travels with the weights
    ckpt = save_checkpoint(tmp_path / "m.pt", {"spec_text": flow.spec_text,
                                               "spec_hash": flow.spec_hash,
                                               "model": flow.state_dict()})
    loaded, _ = load_flow(ckpt)
    loaded.eval()
    with torch.no_grad():
        assert torch.allclose(loaded.log_prob_once(x, None, noise), before, rtol=1e-6,
                              atol=1e-4)


def test_actnorm_is_not_reinitialised_after_loading():
    path = next(p for p in SPEC_FILES if p.stem == "glow")
    flow = small_flow(path, continuous=False)
    flow.initialize(data_for(flow, 4, torch.float32))
    state = {k: v.clone() for k, v in flow.state_dict().items()}
    fresh = small_flow(path, seed=5, continuous=False)
    fresh.load_state_dict(state)
    fresh.train()
    other = data_for(fresh, 4, torch.float32, seed=7) // 2  # different statistics
    fresh.bits_per_dim(other).mean().backward()  # a training-mode pass changes nothing
    for k, v in fresh.state_dict().items():
        if "actnorm" in k:
            assert torch.equal(v, state[k]), k


def two_moons(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = math.pi * torch.rand(n, generator=g)
    upper = torch.rand(n, generator=g) < 0.5
    x = torch.where(upper, torch.cos(t), 1 - torch.cos(t))
    y = torch.where(upper, torch.sin(t), 0.5 - torch.sin(t))
    pts = torch.stack([x - 0.5, y - 0.25], 1) * 1.5
    return pts + 0.08 * torch.randn(n, 2, generator=g)


def fit(flow, steps: int, lr: float = 3e-3):
    data = two_moons(4096)
    flow.initialize(data[:512])
    opt = torch.optim.Adam(flow.parameters(), lr=lr)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        batch = data[torch.randint(0, len(data), (256,), generator=g)]
        loss = -flow.log_prob_once(batch, None, flow.draw_noise(256, g)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return flow.eval()


def grid(lim: float, n: int) -> tuple[torch.Tensor, float]:
    axis = torch.linspace(-lim, lim, n)
    xx, yy = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([xx.flatten(), yy.flatten()], 1), (axis[1] - axis[0]).item() ** 2


def test_two_moons_density_integrates_to_one():
    flow = fit(compile_spec(next(p for p in SPEC_FILES if p.stem == "realnvp-2d"), seed=0), 300)
    pts, cell = grid(5.0, 500)
    with torch.no_grad():
        mass = (flow.log_prob(pts).exp() * cell).sum().item()
        fit_ll = flow.log_prob(two_moons(2000, seed=1)).mean().item()
    assert abs(mass - 1.0) < 1e-2, mass
    assert fit_ll > -2.2  # it learned the moons (a standard normal would give about -3)


def test_importance_weighted_bound_tightens_towards_the_normalised_density():
    # an untrained, perturbed model: its noise posterior p(e|x) is far from the proposal, so
    # the single-sample bound has a visible gap (a fitted toy model makes the gap vanish)
    flow = compile_spec(next(p for p in SPEC_FILES if p.stem == "augmented-2d"), seed=0)
    flow.initialize(two_moons(512))
    ft.perturb_(flow, scale=0.1)
    flow.eval()
    torch.manual_seed(0)
    with torch.no_grad():
        # the marginal p(x) = ∫ p(x, e) de, estimated with many samples, normalises on a grid
        pts, cell = grid(6.0, 80)
        mass = (flow.log_prob(pts, None, 256, 256).exp() * cell).sum().item()
        x = flow.sample(128)
        log_p = flow.log_prob(x, None, 4096, 1024) - math.log(mass)
        gaps = [(log_p - flow.log_prob(x, None, k, 1024)).mean().item() for k in (1, 8, 64, 512)]
    assert 0.98 < mass < 1.02, mass
    # the IW bound increases with k and approaches the normalised log-density from below
    assert gaps == sorted(gaps, reverse=True), gaps
    assert gaps[0] > 0.2 and abs(gaps[-1]) < 0.05 * gaps[0], gaps
