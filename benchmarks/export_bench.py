r"""Export time, file size and per-image sampling latency of each export format vs eager PyTorch.

For each spec: a randomly initialised model (seed 0, ActNorm initialised on random data),
exported for the sample direction with `flowgraph.export.export_flow` (checked against eager
as the CLI does), then the sampling latency of a batch of `--batch` images, median of
`--repeats` runs after one warm-up, divided by the batch:

- eager: `CompiledFlow.sample_from_noise` (frozen) under `torch.inference_mode`;
- torchscript: `torch.jit.load` + ``sample_from_noise`` (the profiling executor's warm-up runs
  are excluded);
- onnx: onnxruntime (CPU provider) on ``<stem>.sample.onnx``;
- export: the ExportedProgram of the ``.pt2`` (``module()``), and with ``--aoti`` the
  AOTInductor-compiled model.

Usage::

    python benchmarks/export_bench.py specs/denseflow-fmnist.yaml --batch 16 --out /tmp/bench
    python benchmarks/export_bench.py specs/denseflow-74-10.yaml --batch 4 --formats torchscript

Prints one markdown row per format and writes ``results.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flowgraph.compile import compile_spec
from flowgraph.export import export_flow, prepare_for_export


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _runner(fmt: str, files: list[Path], eps: torch.Tensor, t: torch.Tensor):
    if fmt == "torchscript":
        m = torch.jit.load(str(files[0]))
        for _ in range(2):  # profiling executor: the first calls record and optimise
            m.sample_from_noise(eps, float(t))
        return {"torchscript": lambda: m.sample_from_noise(eps, float(t))}
    if fmt == "onnx":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        sess = ort.InferenceSession(str(files[0]), opts, providers=["CPUExecutionProvider"])
        feeds = {"eps": eps.numpy(), "temperature": t.numpy()}
        return {"onnx": lambda: sess.run(None, feeds)}
    from torch.export.pt2_archive._package import load_pt2

    contents = load_pt2(str(files[0]))
    module = contents.exported_programs["sample"].module()
    out = {"export": lambda: module(eps, t)}
    if "sample" in contents.aoti_runners:
        runner = contents.aoti_runners["sample"]
        out["export (AOTInductor)"] = lambda: runner(eps, t)
    return out


def bench(spec: str, overrides: dict, formats: list[str], batch: int, repeats: int,
          out_dir: Path, aoti: bool) -> list[dict]:
    t0 = time.perf_counter()
    flow = compile_spec(spec, overrides, seed=0)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 2**max(flow.bits, 1), (2, *flow.data_shape), generator=g).float()
    torch.manual_seed(0)  # initialize() draws dequantization noise from the global RNG
    flow.initialize(x)
    params = sum(p.numel() for p in flow.parameters())
    print(f"{spec}: {params:,} parameters, built in {time.perf_counter() - t0:.1f} s",
          flush=True)
    eps = torch.randn(batch, flow.latent_dim, generator=g)
    temp = torch.tensor(0.8)
    frozen = prepare_for_export(flow)
    rows = []
    with torch.inference_mode():
        s = _median_seconds(lambda: frozen.sample_from_noise(eps * temp, None), repeats)
    rows.append({"spec": spec, "params": params, "format": "eager", "export_s": None,
                 "size_mb": None, "ms_per_image": 1000 * s / batch})
    print(f"  eager: {1000 * s / batch:.2f} ms/image", flush=True)
    name = Path(spec).stem
    for fmt in formats:
        suffix = {"torchscript": "pt", "onnx": "onnx", "export": "pt2"}[fmt]
        try:
            report = export_flow(flow, out_dir / f"{name}.{suffix}", fmt, ["sample"],
                                 aoti=aoti and fmt == "export", source=spec)
        except Exception as e:  # noqa: BLE001 - a benchmark reports and goes on
            print(f"  {fmt}: export failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
            rows.append({"spec": spec, "params": params, "format": fmt,
                         "error": f"{type(e).__name__}: {str(e)[:300]}"})
            continue
        print("  " + report.summary().replace("\n", "\n  "), flush=True)
        with torch.inference_mode():
            for label, fn in _runner(fmt, report.files, eps, temp).items():
                s = _median_seconds(fn, repeats)
                rows.append({"spec": spec, "params": params, "format": label,
                             "export_s": report.export_seconds,
                             "verify_s": report.verify_seconds,
                             "size_mb": report.size_bytes / 2**20,
                             "max_diff": max(c.max_diff for c in report.checks),
                             "ms_per_image": 1000 * s / batch})
                print(f"  {label}: {1000 * s / batch:.2f} ms/image", flush=True)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("specs", nargs="+")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    p.add_argument("--formats", default="torchscript,onnx,export")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1,
                   help="intra-op threads of torch and onnxruntime (default 1: on a shared "
                        "machine OpenMP spin-waiting makes more threads much slower)")
    p.add_argument("--aoti", action="store_true", help="also AOTInductor (slow compile)")
    p.add_argument("--out", type=Path, default=Path("/tmp/flowgraph-export-bench"))
    args = p.parse_args()
    from flowgraph.cli.common import parse_overrides

    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for spec in args.specs:
        rows += bench(spec, parse_overrides(args.overrides), args.formats.split(","),
                      args.batch, args.repeats, args.out, args.aoti)
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    print("\n| spec | format | export (s) | file (MiB) | sampling (ms/image) |")
    print("|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {Path(r['spec']).stem} | {r['format']} | failed: {r['error'][:80]} | | |")
            continue
        exp = "" if r["export_s"] is None else f"{r['export_s']:.1f}"
        size = "" if r["size_mb"] is None else f"{r['size_mb']:.1f}"
        print(f"| {Path(r['spec']).stem} | {r['format']} | {exp} | {size} | "
              f"{r['ms_per_image']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
