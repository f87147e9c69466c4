r"""The Markdown report of a `flowbench.py` result (the JSON document it writes)."""

from __future__ import annotations

from typing import Any

__all__ = ["markdown"]


def _f(v: Any, fmt: str = "{:.3g}") -> str:
    return "–" if v is None else fmt.format(v)


def _size(r: dict[str, Any]) -> str:
    return "spec" if r["size"] is None else str(r["size"])


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            + ["| " + " | ".join(r) + " |" for r in rows])


def _header(res: dict[str, Any]) -> list[str]:
    m = res["machine"]
    out = [f"# flowbench: {res['spec']} ({res['started']})", "",
           (f"- machine: {m.get('cpu_model', '?')}, {m['cpu_count']} CPUs, "
            f"AVX-512 {'yes' if m.get('avx512') else 'no'} "
            f"(bf16 {'yes' if m.get('avx512_bf16') else 'no'}, "
            f"AMX {'yes' if m.get('amx') else 'no'}), {m.get('mem_total_gib', '?')} GiB; "
            f"{m['threads']} threads; torch {m['torch']}, Python {m['python']}"),
           f"- load average at start {_f(res['loadavg_start'][0], '{:.2f}')}"
           + (f", at end {_f(res['loadavg_end'][0], '{:.2f}')}; run took "
              f"{res['wall_s'] / 60:.1f} min" if "loadavg_end" in res else " (run unfinished)")]
    cfg = res["config"]
    out.append(f"- rounds {cfg['rounds']} (ABBA order), {cfg['warmup']} warm-up + "
               f"{cfg['steps']} timed training steps, {cfg['repeats']} timed sampling / "
               f"likelihood calls; sampling {cfg['sample_n']} images, likelihood batch "
               f"{cfg['loglik_batch']}; spec overrides {cfg['overrides'] or 'none'}"
               + ("; extra env " + ", ".join(cfg["env"]) if cfg.get("env") else ""))
    for s in res["systems"]:
        if s["system"] == "official":
            where = f"authors' code at {s['reference']} (tree sha256 {s['tree_sha256']})"
        else:
            g = s.get("git", {})
            where = (f"{s['root']} @ {g.get('commit', '?')[:10]}"
                     f"{' (uncommitted changes)' if g.get('dirty') else ''}, {s['spec']}")
        out.append(f"- `{s['label']}`: {where}")
    return out + [""]


def _rates(d: dict[str, Any]) -> list[str]:
    return [_f(d[k] / 1e9 if k in d else None, "{:.1f}")
            for k in ("fp32", "bf16", "fp32_cpu", "bf16_cpu")]


def _peak(res: dict[str, Any]) -> list[str]:
    rows = []
    for p in res["peak"]:
        if "error" in p:
            rows.append([str(p["round"] + 1), "error: " + p["error"][:80], "", "", "", ""])
            continue
        for c in p["convs"]:
            x, w = c["x"], c["w"]
            shape = (f"conv {w[2]}×{w[3]}, {x[0]}×{x[1]}×{x[2]}×{x[3]} → {w[0]} ch"
                     f"{'' if c['groups'] == 1 else ', groups ' + str(c['groups'])}")
            rows.append([str(p["round"] + 1), shape, *_rates(c)])
        rows.append([str(p["round"] + 1), f"matmul {p['matmul_n']}²", *_rates(p["matmul"])])
        rows.append([str(p["round"] + 1), "**peak used** (best conv)",
                     *[f"**{v}**" for v in _rates(p)]])
    if not rows:
        return []
    return (["## Machine peak: F.conv2d forward on the model's largest-FLOP shapes", ""]
            + _table(["round", "shape", "fp32 GFLOP/s", "bf16 GFLOP/s",
                      "fp32 GFLOP per CPU s", "bf16 GFLOP per CPU s"], rows) + [""])


def _info(res: dict[str, Any]) -> list[str]:
    rows = []
    for key, i in res["info"].items():
        if "params" not in i:
            rows.append([key, (i.get("skipped") or i.get("error", "?"))[:100], "", "", "", ""])
            continue
        gf = [_f(i.get(f"{t}_flops_per_image", 0) / 1e9 or None, "{:.2f}")
              for t in ("train", "loglik", "sample")]
        rows.append([f"`{key.rsplit('@', 1)[0]}`", "×".join(map(str, i["data_shape"])),
                     f"{i['params']:,}", *gf])
    return (["## Models: parameters and FLOPs per image (torch.utils.flop_counter)", ""]
            + _table(["model", "input", "parameters", "train step GFLOP/img",
                      "likelihood GFLOP/img", "sampling GFLOP/img"], rows) + [""])


def _results(res: dict[str, Any]) -> list[str]:
    rows = []
    for r in res.get("summary", []):
        if not r["ok"]:
            rows.append([r["task"], str(r["batch"]), _size(r), f"`{r['label']}`",
                         "not measured: " + str(r.get("note", "?"))[:90]] + [""] * 9)
            continue
        rows.append([r["task"], str(r["batch"]), _size(r), f"`{r['label']}`",
                     ", ".join(f"{t:.3f}" for t in r["s_per_round"]), f"**{r['s']:.3f}**",
                     _f(r["images_per_s"], "{:.2f}"), f"{r['peak_mib']:,.0f}",
                     _f(r.get("gflops"), "{:.1f}"), _f(r.get("fraction_fp32_peak"), "{:.2f}"),
                     _f(r.get("fraction_fp32_peak_cpu"), "{:.2f}"),
                     _f(r.get("cpu_s"), "{:.2f}"), _f(r["cpu_per_wall"], "{:.2f}"),
                     f"{100 * r['sys_fraction']:.0f}%"])
    return (["## Results (median over rounds)", "",
             ("s: median seconds per training step / sampling call / likelihood batch (batch = "
              "images); peak = the worker's VmHWM; of fp32 peak = achieved FLOP/s over the "
              "same round's fp32 conv rate, per wall second and per CPU second (the latter "
              "holds up better on a busy host); CPU s = median user + system seconds per call (all threads); CPU/wall = "
              "(user + system) / wall over timed calls; sys = system share of CPU."),
             ""]
            + _table(["task", "batch", "size", "model", "s per round", "s", "images/s",
                      "peak MiB", "GFLOP/s", "of fp32 peak", "of fp32 peak (CPU s)", "CPU s",
                      "CPU/wall", "sys"], rows)
            + [""])


def _ratios(res: dict[str, Any]) -> list[str]:
    if not res.get("ratios"):
        return []
    rows = [[r["task"], str(r["batch"]), _size(r), f"`{r['subject']}`", f"`{r['reference']}`",
             ", ".join(f"{v:.2f}" for v in r["speedup"]), f"**{r['speedup_median']:.2f}×**",
             ", ".join(f"{v:.2f}" for v in r["memory"]), f"**{r['memory_median']:.2f}**",
             ", ".join(f"{v:.2f}" for v in r.get("cpu_speedup", [])),
             _f(r.get("cpu_speedup_median"), "{:.2f}×")]
            for r in res["ratios"]]
    title = ("## Ratios, same run (speedup = reference time / ours; memory = our peak / "
             "the reference's; CPU speedup = the same with CPU seconds)")
    return ([title, ""]
            + _table(["task", "batch", "size", "ours", "vs", "speedup per round",
                      "speedup", "memory per round", "memory", "CPU speedup per round",
                      "CPU speedup"], rows) + [""])


def _scaling(res: dict[str, Any]) -> list[str]:
    train = [r for r in res.get("summary", []) if r["task"] == "train" and r["ok"]]
    cells = list(dict.fromkeys((r["batch"], r["size"]) for r in train))
    if len(cells) < 2:
        return []
    labels = list(dict.fromkeys(r["label"] for r in train))
    by = {(r["label"], r["batch"], r["size"]): r for r in train}
    rows = []
    for lab in labels:
        first = next((by[(lab, *c)] for c in cells if (lab, *c) in by), None)
        row = [f"`{lab}`"]
        for c in cells:
            r = by.get((lab, *c))
            row.append("–" if r is None else
                       f"{r['s']:.2f} s ({r['s'] / first['s']:.2f}×), "
                       f"{r['peak_mib']:,.0f} MiB ({r['peak_mib'] / first['peak_mib']:.2f}×)")
        rows.append(row)
    head = ["model"] + [f"batch {b}, size {'spec' if s is None else s}" for b, s in cells]
    return (["## Scaling: training step time and peak memory (× the first column)", ""]
            + _table(head, rows) + [""])


def markdown(res: dict[str, Any]) -> str:
    """The report: machine and provenance, peak, models, results, ratios, scaling."""
    parts = (_header(res) + _peak(res) + _info(res) + _results(res) + _ratios(res)
             + _scaling(res))
    return "\n".join(parts) + "\n"
