"""The memory-saving mode: conditioner activations recomputed in the backward pass give the
default mode's gradients and BatchNorm statistics, and store less."""

from __future__ import annotations

from pathlib import Path

import torch

from flowgraph.compile import compile_spec

ROOT = Path(__file__).resolve().parents[1]


def _flow():
    torch.manual_seed(0)
    flow = compile_spec(ROOT / "specs" / "denseflow-fmnist.yaml",
                        {"units": [2, 1], "modules": [1, 1]}).double()
    x = torch.randint(0, 256, (6, 1, 28, 28)).double()
    flow.initialize(x)
    return flow, x


def _step(flow, x, noise):
    flow.zero_grad(set_to_none=True)
    loss = -flow.log_prob_once(x, None, noise).mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in flow.named_parameters()
                           if p.grad is not None}


def test_recomputed_conditioners_give_the_same_gradients_and_batchnorm_statistics():
    flow, x = _flow()
    flow.train()
    noise = flow.draw_noise(len(x), generator=torch.Generator().manual_seed(1))
    state = {k: v.clone() for k, v in flow.state_dict().items()}
    loss, grads = _step(flow, x, noise)
    after_default = {k: v.clone() for k, v in flow.state_dict().items()}
    flow.load_state_dict(state)
    with flow.set_conditioner_recompute(True):
        assert all(m.recompute for m in flow.modules() if hasattr(m, "recompute"))
        loss_r, grads_r = _step(flow, x, noise)
    assert not any(m.recompute for m in flow.modules() if hasattr(m, "recompute"))
    assert torch.equal(loss, loss_r) and grads.keys() == grads_r.keys() and len(grads) > 20
    for k in grads:
        torch.testing.assert_close(grads_r[k], grads[k], rtol=1e-4, atol=1e-10)
    after = flow.state_dict()  # BatchNorm counted the batch once, not twice
    changed = [k for k in state if not torch.equal(state[k], after_default[k])]
    assert any("running_mean" in k for k in changed)
    for k in state:
        torch.testing.assert_close(after[k], after_default[k], rtol=1e-12, atol=0)


def test_recompute_stores_fewer_activations():
    flow, x = _flow()
    flow.float().train()
    x = x.float()
    noise = flow.draw_noise(len(x), generator=torch.Generator().manual_seed(1))

    def saved_bytes(recompute: bool) -> int:
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with flow.set_conditioner_recompute(recompute), \
                torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            flow.log_prob_once(x, None, noise).mean()
        return total

    default, saving = saved_bytes(False), saved_bytes(True)
    assert saving < 0.5 * default, (saving, default)


def test_eval_and_no_grad_forwards_ignore_the_switch():
    flow, x = _flow()
    flow.eval()
    noise = flow.draw_noise(len(x), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = flow.log_prob_once(x, None, noise)
        with flow.set_conditioner_recompute(True):
            b = flow.log_prob_once(x, None, noise)
    assert torch.equal(a, b)
