r"""Time and memory of reading + expanding a spec of N nodes (the spec-input stage).

    python benchmarks/expand_scaling.py [N ...]      (default: 1000 10000 100000)

The spec repeats a realistic 3-node step (actnorm, affine coupling, permute) N/3 times, with
`${earlier}` read by every step (DenseFlow's pattern, the one that used to be quadratic).
Memory is the tracemalloc peak of a second, separate run (tracemalloc slows Python down).
`--check` also times the whole static analysis (`check_spec`: graph, checks, shapes).
"""

from __future__ import annotations

import sys
import time
import tracemalloc

from flowgraph.spec import SpecLimits, parse_spec_text
from flowgraph.spec.expand import expand

SPEC = """\
flowgraph: 1
name: scaling
inputs: {{x: {{shape: [4]}}}}
templates:
  step:
    args: {{seen: []}}
    nodes:
      - {{id: norm, op: actnorm, in: x}}
      - {{id: cpl, op: affine_coupling, in: norm, params: {{net: {{kind: mlp, hidden: [8]}}}}}}
      - {{id: flip, op: permute, in: cpl, params: {{kind: reverse}}}}
nodes:
  - {{id: s, repeat: {steps}, use: step, in: x, with: {{seen: "${{earlier}}"}}}}
outputs:
  z: {{from: s}}
"""


def run(n: int, check: bool) -> None:
    limits = SpecLimits().replace(max_nodes=max(2 * n, 100_000))
    text = SPEC.format(steps=n // 3)
    t0 = time.perf_counter()
    spec, smap = parse_spec_text(text, "scaling.yaml", limits=limits)
    program, issues = expand(spec, smap, limits=limits)
    dt = time.perf_counter() - t0
    assert not issues, issues[:3]
    tracemalloc.start()
    spec, smap = parse_spec_text(text, "scaling.yaml", limits=limits)
    expand(spec, smap, limits=limits)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    line = f"{len(program.nodes):>7} nodes: read+expand {dt:6.3f} s, peak {peak / 2**20:7.1f} MiB"
    if check:
        from flowgraph.graph import check_spec
        from flowgraph.spec.limits import use_limits

        t0 = time.perf_counter()
        with use_limits(limits):
            check_spec(spec, smap)
        line += f", check_spec {time.perf_counter() - t0:6.2f} s"
    print(line, flush=True)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    for n in map(int, args or ["1000", "10000", "100000"]):
        run(n, "--check" in sys.argv)
