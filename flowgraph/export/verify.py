r"""Load an exported file back the way a deployment would and compare it with eager PyTorch.

TorchScript is loaded with `torch.jit.load` in a fresh Python process (nothing of the
exporting process can leak into the check), ONNX with onnxruntime, ``.pt2`` with
`torch.export.pt2_archive` (`torch.export.load`'s loader; also the AOTInductor models when
the archive has them). Inputs are fresh: a batch size and noise the export never saw.

Tolerances: log-likelihoods 1e-4 relative (a log-likelihood near -2000 legitimately differs by
~1e-3 absolute in onnxruntime), samples before quantization 1e-4 absolute. For discrete data
the flow's last inverse step (dequantization) floors, so its float output is already
integer-valued and a rounding difference of 1e-7 can land a value on the neighbouring level:
such values (off by one level, within the tolerance) are counted as `steps` and excluded from
the maximum, and up to `MAX_STEP_FRACTION` of the values (at least one) may do so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from flowgraph.errors import FlowgraphError
from flowgraph.export.modules import DensityModule, SampleModule, data_dtype

__all__ = ["LOG_PROB_RTOL", "SAMPLE_ATOL", "Check", "ExportError", "VerificationError",
           "compare", "fresh_inputs", "run_onnx", "run_pt2", "run_torchscript",
           "verify_outputs"]

LOG_PROB_RTOL = 1e-4
SAMPLE_ATOL = 1e-4
MAX_STEP_FRACTION = 1e-3


class ExportError(FlowgraphError):
    """A flow cannot be exported, or an export cannot be written."""


class VerificationError(ExportError):
    """The exported file, loaded back, disagrees with eager PyTorch beyond the tolerance."""


@dataclass(frozen=True)
class Check:
    """One direction's comparison of an artifact (`runtime`) with eager PyTorch."""

    runtime: str
    direction: str
    quantity: str  # "log_prob" (relative difference) or "x" (absolute, before quantization)
    max_diff: float
    tolerance: float
    batch: int
    pixels_differing: int = 0  # sample direction: quantized values that differ
    steps: int = 0  # sample direction: values one level off (floor at a boundary)
    numel: int = 0

    @property
    def ok(self) -> bool:
        # a small check batch may hold one boundary value even when the rate is far lower
        return (self.max_diff <= self.tolerance
                and self.steps <= max(1.0, MAX_STEP_FRACTION * self.numel))

    def describe(self) -> str:
        kind = "relative" if self.quantity == "log_prob" else "absolute"
        text = (f"{self.runtime} {self.direction}: max {kind} difference of {self.quantity} "
                f"{self.max_diff:.2e} (tolerance {self.tolerance:.0e}, batch {self.batch})")
        if self.direction == "sample":
            text += f", {self.pixels_differing} quantized value(s) differ"
            if self.steps:
                text += (f" ({self.steps} of {self.numel} one level off at a floor boundary, "
                         f"at most {MAX_STEP_FRACTION:.0e} allowed)")
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"runtime": self.runtime, "direction": self.direction,
                "quantity": self.quantity, "max_diff": self.max_diff,
                "tolerance": self.tolerance, "batch": self.batch,
                "pixels_differing": self.pixels_differing, "steps": self.steps,
                "numel": self.numel, "ok": self.ok}


def fresh_inputs(flow: Any, direction: str, batch: int = 3, seed: int = 20261130
                 ) -> dict[str, Tensor]:
    """Named inputs of `direction` (see `flowgraph.export.modules`), reproducible by `seed`."""
    g = torch.Generator().manual_seed(seed)
    if direction == "density":
        shape = (batch, *flow.data_shape)
        if flow.bits:
            x = torch.randint(0, 2**flow.bits, shape, generator=g).to(data_dtype(flow.bits))
        else:
            x = torch.randn(shape, generator=g)
        out = {"x": x}
        if flow.noise_dim:
            out["noise"] = torch.randn(batch, flow.noise_dim, generator=g)
        return out
    return {"eps": torch.randn(batch, flow.latent_dim, generator=g),
            "temperature": torch.tensor(0.8)}


def eager_outputs(flow: Any, direction: str, inputs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    module = DensityModule(flow) if direction == "density" else SampleModule(flow)
    with torch.no_grad():
        return module.eval()(*inputs.values())


def compare(runtime: str, direction: str, got: tuple[Any, Any], want: tuple[Tensor, Tensor]
            ) -> Check:
    """A `Check` of outputs ``(log_prob, bpd)`` or ``(images, x)`` against eager ones."""
    a, b = (torch.as_tensor(got[0]), torch.as_tensor(got[1]))
    if direction == "density":
        ref = want[0].double()
        diff = ((a.double() - ref).abs() / ref.abs().clamp_min(1e-12))
        return Check(runtime, direction, "log_prob", _max(diff), LOG_PROB_RTOL, len(ref))
    ref = torch.nan_to_num(want[1].double())
    diff = (torch.nan_to_num(b.double()) - ref).abs()
    step = ((diff - 1.0).abs() <= SAMPLE_ATOL) & (ref == ref.round())
    differing = int((a.to(want[0].dtype) != want[0]).sum())
    return Check(runtime, direction, "x", _max(diff[~step]), SAMPLE_ATOL, len(ref), differing,
                 int(step.sum()), ref.numel())


def _max(t: Tensor) -> float:
    if t.numel() == 0:
        return 0.0
    if not torch.isfinite(t).all():
        return float("inf")
    return float(t.max())


def verify_outputs(checks: list[Check]) -> None:
    """Raise `VerificationError` naming the direction and the largest difference."""
    bad = [c for c in checks if not c.ok]
    if bad:
        worst = max(bad, key=lambda c: c.max_diff / c.tolerance)
        raise VerificationError("exported model disagrees with eager PyTorch: "
                                + "; ".join(c.describe() for c in bad)
                                + f". Largest: {worst.direction} "
                                  f"{worst.max_diff:.3g} > {worst.tolerance:.0e}")


# -- runtimes -------------------------------------------------------------------------------
_TS_CHILD = r"""
import json, sys, torch
path, inputs_path, out_path = sys.argv[1:4]
extra = {"flowgraph.json": ""}
m = torch.jit.load(path, _extra_files=extra)
inputs = torch.load(inputs_path, weights_only=True)
out = {"metadata": json.loads(extra["flowgraph.json"])["spec_hash"]}
with torch.no_grad(), torch.jit.optimized_execution(False):
    if "density" in inputs:
        d = inputs["density"]
        noise = d.get("noise")
        out["density"] = [m.log_prob(d["x"], noise), m.bits_per_dim(d["x"], noise)]
    if "sample" in inputs:
        s = inputs["sample"]
        out["sample"] = list(m.sample_from_noise(s["eps"], float(s["temperature"])))
torch.save({"spec_hash": out.pop("metadata"), **out}, out_path)
"""


def run_torchscript(path: Path, inputs: dict[str, dict[str, Tensor]], fresh_process: bool = True
                    ) -> dict[str, Any]:
    """Outputs per direction of a TorchScript file, loaded in a fresh process by default."""
    if not fresh_process:
        import warnings

        extra = {"flowgraph.json": ""}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            m = torch.jit.load(str(path), _extra_files=extra)
        out: dict[str, Any] = {"spec_hash": json.loads(extra["flowgraph.json"])["spec_hash"]}
        # no profiling/fusion passes: they cost seconds per method on big graphs, for one call
        with torch.no_grad(), torch.jit.optimized_execution(False):
            if "density" in inputs:
                d = inputs["density"]
                out["density"] = [m.log_prob(d["x"], d.get("noise")),
                                  m.bits_per_dim(d["x"], d.get("noise"))]
            if "sample" in inputs:
                s = inputs["sample"]
                out["sample"] = list(m.sample_from_noise(s["eps"], float(s["temperature"])))
        return out
    with tempfile.TemporaryDirectory(prefix="flowgraph-verify-") as tmp:
        inp, outp = Path(tmp, "inputs.pt"), Path(tmp, "outputs.pt")
        torch.save(inputs, inp)
        env = {**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning"}
        proc = subprocess.run([sys.executable, "-c", _TS_CHILD, str(path), str(inp), str(outp)],
                              capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            raise VerificationError(f"torch.jit.load of {str(path)!r} in a fresh process "
                                    f"failed:\n{proc.stderr.strip()[-2000:]}")
        return torch.load(outp, weights_only=True)


def run_onnx(paths: dict[str, Path], inputs: dict[str, dict[str, Tensor]]) -> dict[str, Any]:
    """Outputs per direction of ONNX files (one per direction) under onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ExportError("checking an ONNX export needs onnxruntime: pip install "
                          "'flowgraph[export]' (or pass verify=False)") from e
    out = {}
    for direction, path in paths.items():
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]
        feeds = {k: v.numpy() for k, v in inputs[direction].items() if k in names}
        out[direction] = [torch.from_numpy(a) for a in sess.run(None, feeds)]
    return out


def run_pt2(path: Path, inputs: dict[str, dict[str, Tensor]]) -> dict[str, Any]:
    """Outputs per direction of a ``.pt2`` archive: its ExportedPrograms, and its AOTInductor
    models (key ``"aoti:<direction>"``) when it has them."""
    from torch.export.pt2_archive._package import load_pt2

    contents = load_pt2(str(path))
    out: dict[str, Any] = {}
    with torch.no_grad():
        for direction, args in inputs.items():
            values = list(args.values())
            out[direction] = list(contents.exported_programs[direction].module()(*values))
            if direction in contents.aoti_runners:
                out[f"aoti:{direction}"] = list(contents.aoti_runners[direction](*values))
    return out
