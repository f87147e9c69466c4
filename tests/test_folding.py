"""`CompiledFlow.freeze` folds each ActNorm into the 1×1 conv it feeds: the frozen inverse
(sampling) runs one convolution with a bias for the pair, and gives the same samples."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import ROOT
from test_flow_contract import small_flow
from test_precision import tiny

from flowgraph import testing as ft
from flowgraph.compile import compile_spec
from flowgraph.ops.actnorm import ActNorm
from flowgraph.ops.conv1x1 import PlainConv1x1

pytestmark = pytest.mark.usefixtures("one_thread")

FMNIST = ROOT / "specs" / "denseflow-fmnist.yaml"


def prepared(flow, x):
    with torch.random.fork_rng():  # initialize draws the flow's noise from the global RNG
        torch.manual_seed(0)
        flow.initialize(x)
    ft.perturb_(flow, scale=0.05)
    return flow.eval()


def fmnist():
    flow = compile_spec(FMNIST, seed=0)
    x = torch.randint(0, 256, (4, *flow.data_shape), generator=torch.Generator().manual_seed(1))
    return prepared(flow, x.float())


def folds(flow):
    return {n: m.folded for n, m in flow.named_modules() if isinstance(m, ActNorm)}


def eps_for(flow, n=4):
    return 0.8 * torch.randn(n, flow.latent_dim, generator=torch.Generator().manual_seed(2))


@torch.no_grad()
def test_folded_sampling_equals_unfolded_on_denseflow_fmnist():
    live = fmnist()
    frozen = copy.deepcopy(live).freeze()
    assert list(folds(frozen).values()) == [True] * 10  # one per glow-like module
    convs = [m for m in frozen.modules() if isinstance(m, PlainConv1x1)]
    assert sum(m.absorbed for m in convs) == 10
    eps = eps_for(live)
    samples = frozen.sample_from_noise(eps)
    assert torch.equal(samples, live.sample_from_noise(eps))  # 8-bit images, identical
    assert samples.min() >= 0 and samples.max() <= 255 and samples.unique().numel() > 10
    noise = frozen.draw_noise(4, torch.Generator().manual_seed(3))
    assert torch.equal(frozen.inverse(frozen(samples, None, noise)[0]), samples)


@torch.no_grad()
def test_folded_inverse_is_float_close_and_keeps_the_log_det():
    live = small_flow(FMNIST, continuous=True)
    x = 0.02 + 0.96 * torch.rand(4, *live.data_shape, generator=torch.Generator().manual_seed(1))
    live = prepared(live, x)
    frozen = copy.deepcopy(live).freeze()
    assert folds(frozen) and all(folds(frozen).values())
    noise = live.draw_noise(4, torch.Generator().manual_seed(0))
    z = frozen(x, None, noise)[0]
    torch.testing.assert_close(z, live(x, None, noise)[0], rtol=1e-5, atol=1e-6)  # forward as is
    got, got_ld = frozen.inverse_and_log_det(z)
    want, want_ld = live.inverse_and_log_det(z)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_ld, want_ld, rtol=1e-6, atol=1e-3)
    eps = eps_for(live)
    torch.testing.assert_close(frozen.sample_from_noise(eps), live.sample_from_noise(eps),
                               rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_an_actnorm_read_elsewhere_is_not_folded_and_freeze_refreshes_the_folds():
    live, x, noise = tiny()  # `an` also conditions the cross-unit coupling, `an2` does not
    live.eval()
    frozen = copy.deepcopy(live).freeze()
    assert folds(frozen) == {"an": False, "an2": True}
    eps = eps_for(live)
    assert torch.equal(frozen.sample_from_noise(eps), live.sample_from_noise(eps))
    for flow in (live, frozen):  # training moves the parameters
        flow.an2.log_scale.add_(0.3)
        flow.an2.shift.add_(-0.2)
    frozen.freeze()
    z = live(x, None, noise)[0]
    assert torch.equal(frozen.inverse(z), live.inverse(z)) and torch.equal(frozen.inverse(z), x)
    twin = copy.deepcopy(frozen)  # copies and pickles are frozen and folded again
    assert folds(twin) == folds(frozen) and torch.equal(twin.inverse(z), x)


@torch.no_grad()
def test_the_folded_inverse_scripts():
    flow, x, noise = tiny()
    flow.eval().freeze()
    scripted = torch.jit.script(flow)
    eps = eps_for(flow)
    assert torch.equal(scripted.sample_from_noise(eps), flow.sample_from_noise(eps))
    z = flow(x, None, noise)[0]
    want = flow.inverse_and_log_det(z)
    got = scripted.inverse_and_log_det(z)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@torch.no_grad()
def test_conv_unfold_returns_to_the_plain_frozen_inverse():
    conv = PlainConv1x1(3, True, 16)
    conv.freeze()
    y = torch.randn(2, 3, 4, 4)
    plain = conv.inverse(y, [])
    scale, shift = torch.tensor([2.0, 0.5, 1.5]), torch.tensor([0.1, -0.2, 0.3])
    conv.absorb_inverse_affine(scale, shift, torch.tensor(1.25))
    x, ld = conv.inverse(y, [])
    torch.testing.assert_close(x, plain[0] * scale.view(1, 3, 1, 1) + shift.view(1, 3, 1, 1))
    torch.testing.assert_close(ld, plain[1] + 1.25)
    conv.unfold()
    assert not conv.absorbed
    assert torch.equal(conv.inverse(y, [])[0], plain[0])
