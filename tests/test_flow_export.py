"""Compiled flows under torch.compile(fullgraph=True), and the `ready` helper of the export tests.

torch.export of every spec (both directions, frozen, saved, loaded back and compared with
eager) is in test_export_formats.py, with TorchScript and ONNX. Small variants of each spec
file (same structure, shrunk with --set) keep this fast; the full-size models are scripted in
test_flow_contract.py. Dynamo is checked with the "eager" backend: that proves one graph
without breaks, without paying for Inductor's code generation.
"""

from __future__ import annotations

import pytest
import torch
from conftest import SPEC_FILES
from test_flow_contract import data_for, small_flow

from flowgraph import testing as ft


class LogProb(torch.nn.Module):
    def __init__(self, flow):
        super().__init__()
        self.flow = flow

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.flow.log_prob_once(x, None, noise)


class Generate(torch.nn.Module):
    def __init__(self, flow):
        super().__init__()
        self.flow = flow

    def forward(self, eps: torch.Tensor) -> torch.Tensor:
        return self.flow.sample_from_noise(eps)


def ready(path):
    flow = small_flow(path, continuous=False)
    x = data_for(flow, 4, torch.float32)
    flow.initialize(x)
    ft.perturb_(flow, scale=0.02)
    noise = flow.draw_noise(4, torch.Generator().manual_seed(0))
    if flow.noise_dim == 0:
        noise = torch.zeros(4, 0)
    return flow.eval(), x, noise


@pytest.mark.parametrize("path", [p for p in SPEC_FILES
                                  if p.stem in ("denseflow-fmnist", "glow", "augmented-2d")],
                         ids=["augmented-2d", "denseflow-fmnist", "glow"])
def test_torch_compile_captures_one_graph_in_training_and_eval(path):
    flow, x, noise = ready(path)
    for mode in ("train", "eval"):
        getattr(flow, mode)()
        torch._dynamo.reset()
        fn = torch.compile(LogProb(flow), fullgraph=True, backend="eager")
        got = fn(x, noise)
        with torch.no_grad():
            want = LogProb(flow)(x, noise)
        assert torch.allclose(got.detach(), want, rtol=1e-5, atol=1e-3), mode
        explained = torch._dynamo.explain(LogProb(flow))(x, noise)
        assert explained.graph_count == 1 and explained.graph_break_count == 0, mode
