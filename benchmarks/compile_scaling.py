"""How the compiler scales with the number of nodes: reading, expansion, checks, shape pass and
code generation of a chain of N vector ops, written out node by node and as one `repeat`.

    python benchmarks/compile_scaling.py 1000 10000 100000

Each size runs in its own process so that its peak memory (ru_maxrss) is its own. Prints one
row per (size, form) and the JSON of all rows last.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def spec_text(n: int, written_out: bool) -> str:
    head = ["flowgraph: 1", f"name: chain-{n}", "inputs:", "  x: {shape: [4]}"]
    if written_out:
        nodes = ["nodes:"]
        prev = "x"
        for i in range(n):
            op = "affine_coupling" if i % 2 == 0 else "permute"
            params = "{net: {kind: mlp, hidden: [8]}}" if i % 2 == 0 else "{kind: reverse}"
            nodes.append(f"  - {{id: n{i}, op: {op}, in: {prev}, params: {params}}}")
            prev = f"n{i}"
        return "\n".join(head + nodes + ["outputs:", f"  z: {{from: {prev}}}", ""])
    body = ["templates:", "  step:", "    nodes:",
            "      - {id: c, op: affine_coupling, in: x, params: {net: {kind: mlp, hidden: [8]}}}",
            "      - {id: p, op: permute, in: c, params: {kind: reverse}}",
            "nodes:", f"  - {{id: s, repeat: {n // 2}, use: step, in: x}}",
            "outputs:", "  z: {from: s}", ""]
    return "\n".join(head + body)


def measure(path: str) -> dict:
    t0 = time.perf_counter()
    from flowgraph.compile.codegen import generate_source
    from flowgraph.graph import analyze
    from flowgraph.spec.io import read_spec
    t_import = time.perf_counter() - t0
    t0 = time.perf_counter()
    spec, smap = read_spec(path)
    t_read = time.perf_counter() - t0
    t0 = time.perf_counter()
    analysis = analyze(spec, smap)
    t_check = time.perf_counter() - t0
    t0 = time.perf_counter()
    code = generate_source(analysis.graph)
    t_gen = time.perf_counter() - t0
    return {"nodes": len(analysis.graph.nodes), "read_s": round(t_read, 3),
            "check_s": round(t_check, 3), "codegen_s": round(t_gen, 3),
            "total_s": round(t_read + t_check + t_gen, 3), "import_s": round(t_import, 2),
            "source_lines": code.source.count("\n"),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        print(json.dumps(measure(sys.argv[2])))
        return
    sizes = [int(a) for a in sys.argv[1:]] or [1000, 10000]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            for written_out in (True, False):
                path = Path(tmp) / f"chain-{n}-{written_out}.yaml"
                path.write_text(spec_text(n, written_out))
                # sizes beyond the default input limits are the point here
                env = {**os.environ, "FLOWGRAPH_SPEC_LIMITS": "max_yaml_nodes=100000000,"
                       "max_nodes=10000000,max_file_bytes=1000000000,max_expr_steps=100000000"}
                out = subprocess.run([sys.executable, __file__, "--child", str(path)],
                                     capture_output=True, text=True, env=env)
                if out.returncode:
                    print(out.stderr[-2000:], file=sys.stderr)
                    continue
                row = {"size": n, "form": "written out" if written_out else "repeat",
                       **json.loads(out.stdout)}
                rows.append(row)
                print(f"{n:>7} {row['form']:<11} nodes {row['nodes']:>7}  read {row['read_s']:>6}s"
                      f"  checks {row['check_s']:>6}s  codegen {row['codegen_s']:>6}s  total "
                      f"{row['total_s']:>6}s  peak RSS {row['peak_rss_mb']} MB", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
