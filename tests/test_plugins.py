"""Third-party ops and conditioners through entry points (tests/plugin_example, installed by
conftest.py before collection)."""

from __future__ import annotations

import textwrap

import torch

from flowgraph.cli.main import main
from flowgraph.compile import compile_spec
from flowgraph.core.registry import nets, ops
from flowgraph.spec import parse_spec

SPEC = """
    flowgraph: 1
    name: plugin-demo
    inputs:
      x: {shape: [4]}
    nodes:
      - {id: a, op: additive_coupling, in: x, params: {net: {kind: zero_linear}}}
      - {id: p, op: permute, in: a, params: {kind: reverse}}
      - {id: b, op: affine_coupling, in: p, params: {net: {kind: zero_linear}}}
    outputs:
      z: {from: b}
"""


def test_plugin_op_and_conditioner_are_registered_with_their_origin() -> None:
    assert "additive_coupling" in ops() and "zero_linear" in nets()
    assert "flowgraph-plugin-example" in ops().origin["additive_coupling"]
    assert ops().origin["affine_coupling"] == "flowgraph"


def test_a_spec_uses_the_plugin_op_and_a_builtin_op_uses_the_plugin_net() -> None:
    spec, smap = parse_spec(textwrap.dedent(SPEC).strip() + "\n", "plugin.yaml")
    flow = compile_spec(spec, smap=smap, seed=0).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(5, 4, dtype=torch.float64)
    z, ld = flow(x)
    assert not torch.allclose(z, x)
    x_back, ld_inv = flow.inverse_and_log_det(z)
    assert torch.allclose(x_back, x, atol=1e-12) and torch.allclose(ld_inv, -ld)
    assert "self.a(x, [], None)" in flow.code  # called by the one convention, named by node
    scripted = torch.jit.script(flow)
    assert torch.allclose(scripted.log_prob(x), flow.log_prob(x))


def test_cli_lists_plugin_ops(capsys) -> None:
    assert main(["ops"]) == 0
    out = capsys.readouterr().out
    assert "additive_coupling" in out and "flowgraph-plugin-example" in out
    assert main(["ops", "zero_linear"]) == 0
    assert "conditioner zero_linear" in capsys.readouterr().out
