"""`flowgraph export`: every spec to TorchScript, ONNX and torch.export (.pt2), both directions,
loaded back and compared with eager PyTorch; metadata inside each file; the CLI; the failure
message; and the ONNX runner of exporters/onnx in a process that cannot import torch.

Small variants of each spec (test_flow_contract.small_overrides) keep this fast. The ONNX
matrix over every spec uses the legacy (TorchScript-based) exporter, about 10x faster here than
the dynamo one; the dynamo exporter (the CLI's default) is checked on three specs that cover
every op family (dense blocks with attention, Glow, 2-D augmentation).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, SPEC_FILES
from test_flow_contract import IDS
from test_flow_export import ready

from flowgraph.cli.main import main
from flowgraph.export import (
    VerificationError,
    artifact_paths,
    export_flow,
    read_metadata,
)

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning",
                                         "ignore::UserWarning"),
              pytest.mark.usefixtures("one_thread")]
DYNAMO_SPECS = ("augmented-2d", "denseflow-fmnist", "glow")
SUFFIX = {"torchscript": "pt", "onnx": "onnx", "export": "pt2"}



def _check(report, flow, fmt):
    assert {c.direction for c in report.checks} == {"density", "sample"}
    assert all(c.ok for c in report.checks), report.summary()
    assert all(c.batch == 3 for c in report.checks)  # a batch the export never saw
    meta = read_metadata(report.files[0])
    assert meta["spec_hash"] == flow.spec_hash and meta["spec_text"] == flow.spec_text
    assert meta["data_shape"] == list(flow.data_shape) and meta["bits"] == flow.bits
    assert meta["format"] == fmt


@pytest.mark.parametrize("path", SPEC_FILES, ids=IDS)
def test_every_spec_exports_to_every_format_in_both_directions(path, tmp_path):
    flow, _, _ = ready(path)
    for fmt in ("torchscript", "export", "onnx"):
        exporter = "dynamo" if path.stem in DYNAMO_SPECS else "legacy"
        report = export_flow(flow, tmp_path / f"m.{SUFFIX[fmt]}", fmt, fresh_process=False,
                             onnx_exporter=exporter)
        _check(report, flow, fmt)
    assert not any(getattr(m, "frozen", False) for m in flow.modules())  # flow left as is


def test_cli_exports_a_checkpoint_with_a_fresh_process_check(tmp_path, capsys):
    from flowgraph.checkpoint import save_checkpoint

    flow, _, _ = ready(ROOT / "specs" / "augmented-2d.yaml")
    ckpt = save_checkpoint(tmp_path / "final.pt", {
        "model": flow.state_dict(), "spec_text": flow.spec_text, "spec_hash": flow.spec_hash})
    out = tmp_path / "model.pt"
    assert main(["export", str(ckpt), "--format", "torchscript", "-o", str(out),
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["files"] == [str(out)] and report["size_bytes"] > 0
    assert [c["runtime"] for c in report["checks"]] == ["torch.jit.load (fresh process)"] * 2
    assert read_metadata(out)["source"] == str(ckpt)
    # a spec source with --set, one direction, human-readable report
    assert main(["export", str(ROOT / "specs" / "realnvp-2d.yaml"), "--set", "steps=2",
                 "--format", "onnx", "--onnx-exporter", "legacy", "--direction", "sample",
                 "-o", str(tmp_path / "r.onnx")]) == 0
    text = capsys.readouterr().out
    assert "r.sample.onnx" in text and "onnxruntime sample" in text
    assert not (tmp_path / "r.density.onnx").exists()


def test_cli_usage_errors(tmp_path, capsys):
    spec = str(ROOT / "specs" / "realnvp-2d.yaml")
    assert main(["export", spec, "--format", "export", "-o", str(tmp_path / "m.zip")]) == 2
    assert ".pt2" in capsys.readouterr().err
    assert main(["export", spec, "--format", "onnx", "--aoti", "-o", str(tmp_path / "m")]) == 2


def test_a_disagreeing_artifact_fails_naming_direction_and_difference(tmp_path, monkeypatch):
    from flowgraph.export import artifacts

    flow, _, _ = ready(ROOT / "specs" / "realnvp-2d.yaml")

    original = artifacts.eager_outputs

    def wrong(frozen, direction, inputs):
        out = original(frozen, direction, inputs)
        return (out[0], out[1] + 1e-3) if direction == "sample" else out

    monkeypatch.setattr(artifacts, "eager_outputs", wrong)
    with pytest.raises(VerificationError, match=r"sample: max absolute difference of x 1\.0"):
        export_flow(flow, tmp_path / "m.pt", "torchscript", fresh_process=False)


def test_onnx_runner_works_where_torch_cannot_be_imported(tmp_path):
    flow, _, _ = ready(ROOT / "specs" / "denseflow-fmnist.yaml")
    export_flow(flow, tmp_path / "m.onnx", "onnx", onnx_exporter="legacy")
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (5, *flow.data_shape), generator=g, dtype=torch.uint8)
    noise = torch.randn(5, flow.noise_dim, generator=g)
    eps = torch.randn(4, flow.latent_dim, generator=g)
    x.numpy().tofile(tmp_path / "images.bin")
    noise.numpy().tofile(tmp_path / "noise.bin")
    eps.numpy().tofile(tmp_path / "eps.bin")
    frozen = copy_frozen(flow)
    with torch.no_grad():
        bpd = -frozen.log_prob_once(x.float(), None, noise) / (frozen.data_dims * np.log(2))
        images = frozen.sample_from_noise(eps * 0.7, None)
    blocker = ("import sys\n"
               "class Block:\n"
               "    def find_spec(self, name, path=None, target=None):\n"
               "        if name.split('.')[0] in ('torch', 'flowgraph'):\n"
               "            raise ImportError('torch is blocked in this test')\n"
               "sys.meta_path.insert(0, Block())\n"
               "sys.path.insert(0, sys.argv.pop(1))\n"
               "sys.argv[0] = 'flowgraph_onnx.py'\n"
               "import flowgraph_onnx\n"
               "assert 'torch' not in sys.modules\n"
               "sys.exit(flowgraph_onnx.main())\n")
    runner = str(ROOT / "exporters" / "onnx")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = [sys.executable, "-I", "-c", blocker, runner, str(tmp_path / "m")]
    subprocess.run([*run, "bpd", str(tmp_path / "images.bin"), "--noise",
                    str(tmp_path / "noise.bin"), "--out", str(tmp_path / "bpd.bin")],
                   check=True, env=env, cwd=tmp_path)
    subprocess.run([*run, "sample", "-t", "0.7", "--noise", str(tmp_path / "eps.bin"),
                    "--raw", str(tmp_path / "samples.bin"), "-o", str(tmp_path / "g.ppm")],
                   check=True, env=env, cwd=tmp_path)
    got = np.fromfile(tmp_path / "bpd.bin", np.float32)
    np.testing.assert_allclose(got, bpd.numpy(), rtol=1e-5)
    got = np.fromfile(tmp_path / "samples.bin", np.uint8).reshape(images.shape)
    want = images.nan_to_num(0).round().clamp(0, 255).to(torch.uint8).numpy()
    assert (got != want).mean() < 1e-3  # a value may round the other way at .5
    assert (tmp_path / "g.ppm").read_bytes().startswith(b"P6\n")
    # the metadata is readable by onnxruntime alone, and names every input
    meta = read_metadata(artifact_paths(tmp_path / "m.onnx", "onnx", ["density"])["density"])
    names = [i["name"] for i in meta["signatures"]["density"]["inputs"]]
    assert names == ["x", "noise"]


def copy_frozen(flow):
    from flowgraph.export import prepare_for_export

    return prepare_for_export(flow)
