"""benchmarks/flowbench.py: a smoke run on the small Fashion-MNIST spec, and the ratio arithmetic.

No timing is asserted: only that every measurement ran in its worker, that the JSON carries
the documented keys and our own parameter count, and that the same-run ratios are computed
round by round.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "benchmarks" / "flowbench.py"
SPEC = ROOT / "specs" / "denseflow-fmnist.yaml"


def _flowbench():
    sys.path.insert(0, str(TOOL.parent))
    try:
        import flowbench
    finally:
        sys.path.remove(str(TOOL.parent))
    return flowbench


def test_smoke_run_writes_json_and_markdown(tmp_path: Path) -> None:
    from flowgraph.compile import compile_spec

    out = tmp_path / "fb.json"
    cmd = [sys.executable, str(TOOL), str(SPEC), "--quick", "--threads", "1", "--batches", "2",
           "--sample-n", "2", "--loglik-batch", "2", "--peak-seconds", "0.05",
           "--json", str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(out.read_text())
    assert {"machine", "config", "systems", "info", "peak", "runs", "summary",
            "ratios"} <= set(res)
    assert {"cpu_model", "avx512", "threads", "torch"} <= set(res["machine"])
    assert res["machine"]["threads"] == 1
    assert res["systems"][0]["git"]["commit"]
    info = res["info"]["ours:eager@None"]
    assert info["params"] == sum(p.numel() for p in compile_spec(SPEC).parameters())
    assert info["data_shape"] == [1, 28, 28]
    assert info["train_flops_per_image"] > info["loglik_flops_per_image"] > 0
    assert info["conv_shapes"]
    peak = res["peak"][0]
    assert peak["fp32"] > 0 and peak["bf16"] > 0
    assert [(r["task"], r["label"]) for r in res["runs"]] == [
        ("train", "ours:eager"), ("sample", "ours:eager"), ("loglik", "ours:eager")]
    for r in res["runs"]:
        got = r["result"]
        assert "error" not in got, got
        assert got["s_median"] > 0 and got["process"]["hwm_mib"] > 0
        assert got["process"]["threads"] == 1
    train = res["runs"][0]["result"]
    assert len(train["s_all"]) == 2 and train["batch"] == 2  # --quick: 2 timed steps
    assert all(row["fraction_fp32_peak"] > 0 for row in res["summary"])
    assert res["ratios"] == []  # no reference, no baseline
    md = out.with_suffix(".md").read_text()
    assert "## Results" in md and "`ours:eager`" in md and "214,848" in md


def _run(rnd: int, label: str, s: float, mib: float) -> dict:
    system, variant = label.split(":")
    return {"round": rnd, "task": "train", "batch": 8, "size": 32, "system": system,
            "variant": variant, "label": label, "flops": 4e9,
            "result": {"s_median": s, "images_per_s": 8 / s, "cpu_per_wall": 2.0,
                       "sys_fraction": 0.1, "process": {"hwm_mib": mib},
                       "user_s_all": [s, 2 * s, 3 * s], "sys_s_all": [0.0, 0.0, 0.0]}}


def test_ratios_are_per_round_and_medians() -> None:
    fb = _flowbench()
    result = {
        "systems": [{"system": "ours", "label": "ours:eager"},
                    {"system": "official", "label": "official:default"}],
        "peak": [{"round": 0, "fp32": 4e9, "bf16": 8e9}, {"round": 1, "fp32": 2e9, "bf16": 4e9}],
        "runs": [_run(0, "ours:eager", 2.0, 300), _run(0, "official:default", 3.0, 400),
                 _run(1, "official:default", 8.0, 400), _run(1, "ours:eager", 4.0, 200)]}
    fb.summarize(result)
    (r,) = result["ratios"]
    assert (r["subject"], r["reference"]) == ("ours:eager", "official:default")
    assert r["speedup"] == pytest.approx([1.5, 2.0]) and r["speedup_median"] == pytest.approx(1.75)
    assert r["memory"] == pytest.approx([0.75, 0.5]) and r["memory_median"] == pytest.approx(0.625)
    assert r["cpu_speedup"] == pytest.approx([1.5, 2.0])  # median CPU s per call: 2 × s
    ours = next(row for row in result["summary"] if row["label"] == "ours:eager")
    # 4 GFLOP in 2 s against a 4 GFLOP/s peak, then in 4 s against 2 GFLOP/s: 0.5 both rounds
    assert ours["fraction_fp32_peak"] == pytest.approx(0.5)
    assert ours["s"] == pytest.approx(3.0) and ours["peak_mib"] == pytest.approx(250)


def test_reference_must_be_a_denseflow_checkout(tmp_path: Path) -> None:
    fb = _flowbench()
    with pytest.raises(SystemExit, match="not a DenseFlow checkout"):
        fb.main([str(SPEC), "--reference", str(tmp_path)])
