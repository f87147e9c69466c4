"""bf16 confined to the conditioner networks (`CompiledFlow.set_conditioner_dtype`).

With the switch on, and under a caller's autocast too, every net built from a ``net:`` field
runs in bfloat16 while the data path (dequantization, ActNorm, 1×1 convs, the coupling maps),
every log-det term, the prior and the Nyström pseudo-inverse stay float32; each conditioned op
still inverts its forward exactly. With the switch off the flow is the plain float32 path,
bit for bit, whatever autocast it is called under.
"""

from __future__ import annotations

import io

import pytest
import torch
from test_flow_contract import continuous_variant

from flowgraph import testing as ft
from flowgraph.compile import compile_spec
from flowgraph.nn import attention
from flowgraph.ops.actnorm import ActNorm
from flowgraph.ops.base import FlowModule
from flowgraph.ops.conv1x1 import PlainConv1x1
from flowgraph.ops.coupling import Conditioned
from flowgraph.spec.io import parse_spec
from flowgraph.train.config import TrainConfig
from flowgraph.train.loop import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

BF16, F32 = torch.bfloat16, torch.float32

# Every kind of conditioned op (affine coupling with the DenseFlow net and its attention,
# cross-unit g, spline coupling), plain and LU 1×1 convs, a learned prior.
SPEC = """
flowgraph: 1
name: precision-tiny
inputs: {x: {shape: [2, 8, 8], bits: 8}}
nodes:
  - {id: deq, op: dequantize_uniform, in: x}
  - {id: an, op: actnorm, in: deq}
  - {id: conv, op: conv1x1, in: an}
  - id: c1
    op: affine_coupling
    in: conv
    params:
      net: {kind: dense_attention, width: 8, depth: 1, growth: 4, attention: {landmarks: 4}}
  - {id: aug, op: cross_unit_coupling, in: c1, condition: [an], params: {growth: 2}}
  - {id: an2, op: actnorm, in: aug}
  - {id: conv2, op: conv1x1, in: an2, params: {parameterization: lu}}
  - {id: c2, op: spline_coupling, in: conv2, params: {net: {kind: glow, hidden: 8}, bins: 4}}
outputs:
  z: {from: c2, prior: {dist: channel_normal}}
"""


def tiny(continuous: bool = False):
    spec, smap = parse_spec(SPEC, "<precision-tiny>")
    if continuous:
        spec, smap = continuous_variant(spec, smap), None
    flow = compile_spec(spec, smap=smap, seed=0)
    g = torch.Generator().manual_seed(1)
    if continuous:
        x = 0.02 + 0.96 * torch.rand(4, 2, 8, 8, generator=g)
    else:
        x = torch.randint(0, 256, (4, 2, 8, 8), generator=g).float()
    with torch.random.fork_rng():  # initialize draws the flow's noise from the global RNG
        torch.manual_seed(0)
        flow.initialize(x)
    ft.perturb_(flow, scale=0.05)
    noise = flow.draw_noise(4, torch.Generator().manual_seed(0))
    return flow, x, noise


def nets_of(flow):
    """The conditioner networks: the modules a `Conditioned` op runs in `condition`."""
    found = [m.net if hasattr(m, "net") else m.g for m in flow.modules()
             if isinstance(m, Conditioned)]
    assert len(found) == 3
    return found


def test_switch_off_is_the_plain_float32_path_bit_for_bit():
    flow, x, noise = tiny()
    scripted = torch.jit.script(flow)  # TorchScript runs the nets by a plain call
    flow.eval()
    with torch.no_grad():
        want = flow.log_prob_once(x, None, noise)
        z = flow(x, None, noise)[0]
        x_back = flow.inverse(z)
        with flow.set_conditioner_dtype(BF16):
            assert not torch.equal(flow.log_prob_once(x, None, noise), want)
        assert all(m.conditioner_dtype is None for m in flow.modules()
                   if isinstance(m, Conditioned))  # restored on exit
        assert torch.equal(flow.log_prob_once(x, None, noise), want)
        assert torch.equal(scripted.eval().log_prob_once(x, None, noise), want)
        with torch.autocast("cpu", dtype=BF16):  # the flow ignores a caller's autocast
            assert torch.equal(flow.log_prob_once(x, None, noise), want)
            assert torch.equal(flow.inverse(z), x_back)


@pytest.mark.parametrize("outer_autocast", [False, True], ids=["alone", "under-autocast"])
def test_bf16_reaches_the_conditioner_networks_only(outer_autocast):
    flow, x, noise = tiny()
    seen: dict[str, list] = {"net": [], "data": [], "logdet": []}

    def net_hook(module, args, out):
        seen["net"].append((out.dtype, torch.is_autocast_enabled("cpu")))

    def op_hook(module, args, out):
        y, ld = out
        seen["data"] += [args[0].dtype, y.dtype]
        seen["logdet"].append(ld.dtype)

    for net in nets_of(flow):
        net.register_forward_hook(net_hook)
    ops = [m for m in flow.modules() if isinstance(m, FlowModule)]
    assert sum(isinstance(m, (ActNorm, PlainConv1x1)) for m in ops) == 3
    for m in ops:
        m.register_forward_hook(op_hook)
    flow.set_conditioner_dtype(BF16)
    with torch.autocast("cpu", dtype=BF16, enabled=outer_autocast):
        lp = flow.log_prob_once(x, None, noise)
    lp.sum().backward()
    assert seen["net"] == [(BF16, True)] * 3
    assert len(seen["logdet"]) == len(ops) == 8
    assert set(seen["data"]) == {F32} and set(seen["logdet"]) == {F32}  # inputs, outputs
    assert lp.dtype == F32 and bool(torch.isfinite(lp).all())
    assert all(p.grad is not None and p.grad.dtype == F32 for p in flow.parameters())


def test_the_nystrom_pseudo_inverse_runs_in_float32_without_autocast(monkeypatch):
    flow, x, noise = tiny()
    calls = []
    plain = attention.newton_pinv

    def recording(a, iters=6):
        calls.append((a.dtype, torch.is_autocast_enabled("cpu")))
        z = plain(a, iters)
        calls.append((z.dtype, None))
        return z

    monkeypatch.setattr(attention, "newton_pinv", recording)
    with torch.no_grad(), flow.set_conditioner_dtype(BF16):
        flow.log_prob_once(x, None, noise)
    assert calls == [(F32, False), (F32, None)]


def test_pinv_fp32_keeps_the_newton_iteration_accurate_under_autocast():
    """What the float32 island buys: the result is the float64 iteration's up to one bf16
    rounding (2^-8 relative); iterated in bf16 it is several times further off."""
    g = torch.Generator().manual_seed(0)
    a = torch.softmax(torch.randn(64, 4, 4, generator=g) + torch.eye(4), -1).to(BF16)
    want = attention.newton_pinv(a.double(), 6)
    with torch.autocast("cpu", dtype=BF16):
        island = attention.pinv_fp32(a, 6)
        in_bf16 = attention.newton_pinv(a, 6)

    def rel_err(z):
        return float(((z.double() - want).abs() / want.abs().amax((-1, -2), True)).max())

    assert island.dtype == BF16
    assert rel_err(island) <= 2**-8 and rel_err(in_bf16) > 4 * 2**-8


def test_each_conditioned_op_inverts_exactly_with_bf16_nets():
    """Forward and inverse read the same float32 values from the bf16 net."""
    flow, x, noise = tiny(continuous=True)
    flow.eval().set_conditioner_dtype(BF16)
    inputs = {}
    for name, m in flow.named_modules():
        if isinstance(m, Conditioned):
            m.register_forward_hook(lambda mod, args, out, name=name: inputs.update(
                {name: (mod, args[0], args[1], out)}))
    with torch.no_grad():
        flow(x, None, noise)
        assert sorted(inputs) == ["aug", "c1", "c2"]
        for name, (m, h, cond, (y, ld)) in inputs.items():
            h_back, ld_inv = m.inverse(y, cond)
            if name == "aug":  # augmentation: drops its noise channels, zero log-det
                assert torch.equal(h_back, h) and not bool(ld_inv.any())
                continue
            torch.testing.assert_close(h_back, h, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(ld_inv, -ld, rtol=1e-6, atol=1e-5)


def test_round_trip_of_the_flow_with_bf16_nets():
    """A short flow comes back to float32 accuracy; the integers exactly. (Through a deep flow
    the float32 rounding of a reconstructed input can flip a bf16 rounding inside a net, and
    the round trip is then accurate to about 1e-3: see `set_conditioner_dtype`.)"""
    flow, x, noise = tiny(continuous=True)
    flow.eval().set_conditioner_dtype(BF16)
    discrete, xd, noise_d = tiny()
    discrete.eval().set_conditioner_dtype(BF16)
    with torch.no_grad():
        x_back = flow.inverse(flow(x, None, noise)[0])
        torch.testing.assert_close(x_back, x, rtol=1e-5, atol=1e-5)
        assert torch.equal(discrete.inverse(discrete(xd, None, noise_d)[0]), xd)


def test_trainer_bf16_sets_the_switch_for_the_step_only(tmp_path):
    data = torch.randint(0, 256, (8, 2, 8, 8), dtype=torch.uint8)
    spec, _ = parse_spec(SPEC, "<precision-tiny>")
    cfg = TrainConfig(val_images=0, epochs=1, batch_size=4, samples=0, warmup_steps=1, bf16=True,
                      tensorboard=False, checkpoint_every=0)
    trainer = Trainer(spec, cfg, tmp_path / "run", train_data=data, stream=io.StringIO())
    trainer.initialize()
    dtypes = []
    for net in nets_of(trainer.flow):
        net.register_forward_hook(lambda m, a, out: dtypes.append(out.dtype))
    out = trainer.train_step(data[:4], 1e-3)
    assert out["bpd"] is not None and dtypes == [BF16] * 3
    assert all(m.conditioner_dtype is None for m in trainer.flow.modules()
               if isinstance(m, Conditioned))
