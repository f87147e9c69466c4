r"""`export_flow`: write a compiled flow as TorchScript, ONNX or torch.export (``.pt2``) files.

Every export works on a deep copy of the flow in eval mode, float32, without gradients and
frozen (`CompiledFlow.freeze` caches inverse weights and constant log-dets), then writes the
files, then loads them back and compares them with eager PyTorch on fresh inputs
(`flowgraph.export.verify`). See `flowgraph.export.modules` for the inputs and outputs of the
two directions, and `flowgraph.export.metadata` for what every file says about itself.

Files written for ``path`` (the directions are ``density`` and/or ``sample``):

- ``torchscript``: ``path`` (one scripted module; the directions are its methods). TorchScript
  is deprecated upstream in favour of torch.export; it stays here because libtorch's
  `torch::jit::load` is the simplest way to run a model from C++.
- ``onnx``: ``<stem>.<direction>.onnx`` per direction, next to ``path`` (dynamo exporter by
  default, opset 18; ``onnx_exporter="legacy"`` uses the TorchScript-based one).
- ``export``: ``path`` (must end in ``.pt2``): one archive holding an ExportedProgram per
  direction under the direction's name, and with ``aoti=True`` also the AOTInductor-compiled
  models under the same names (loadable from C++ by `AOTIModelPackageLoader(path, name)`).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from flowgraph.export.metadata import METADATA_FILE, artifact_metadata
from flowgraph.export.modules import DensityModule, SampleModule, TorchScriptFlow
from flowgraph.export.verify import (
    Check,
    ExportError,
    compare,
    eager_outputs,
    fresh_inputs,
    run_onnx,
    run_pt2,
    run_torchscript,
    verify_outputs,
)

__all__ = ["DIRECTIONS", "FORMATS", "ExportReport", "artifact_paths", "check_artifact", "export_flow",
           "prepare_for_export"]

FORMATS = ("torchscript", "onnx", "export")
DIRECTIONS = ("density", "sample")
MAX_BATCH = 1 << 16
EXAMPLE_BATCH = 2  # not 1: torch.export would specialise the batch dimension to 1


@dataclass
class ExportReport:
    """What `export_flow` wrote and how the check went."""

    format: str
    directions: list[str]
    files: list[Path]
    export_seconds: float
    verify_seconds: float = 0.0
    checks: list[Check] = field(default_factory=list)

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files)

    def summary(self) -> str:
        files = ", ".join(map(str, self.files))
        lines = [(f"wrote {files} ({self.size_bytes / 2**20:.2f} MiB, {self.format}, "
                  f"{'+'.join(self.directions)}) in {self.export_seconds:.1f} s")]
        if self.checks:
            lines.append(f"checked against eager PyTorch in {self.verify_seconds:.1f} s:")
            lines += [f"  {c.describe()}" for c in self.checks]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "directions": self.directions,
                "files": [str(p) for p in self.files], "size_bytes": self.size_bytes,
                "export_seconds": self.export_seconds, "verify_seconds": self.verify_seconds,
                "checks": [c.to_dict() for c in self.checks]}


def prepare_for_export(flow: Any) -> Any:
    """A deep copy of `flow` in eval mode, float32, on the CPU, without gradients, frozen."""
    flow = copy.deepcopy(flow).to("cpu", torch.float32).eval()
    flow.requires_grad_(False)
    return flow.freeze()


def artifact_paths(path: str | Path, fmt: str, directions: Iterable[str]) -> dict[str, Path]:
    """The file of each direction (one shared file except for ONNX)."""
    path = Path(path)
    if fmt == "onnx":
        stem = path.with_suffix("") if path.suffix == ".onnx" else path
        return {d: stem.parent / f"{stem.name}.{d}.onnx" for d in directions}
    return dict.fromkeys(directions, path)


@contextlib.contextmanager
def quiet_torch():
    """Silence the exporters' chatter (deprecation notes, torchvision-not-installed logs); the
    TorchScript deprecation is stated once in the CLI help and exporters/README.md."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


def _check_args(fmt: str, directions: list[str], path: Path) -> None:
    if fmt not in FORMATS:
        raise ExportError(f"format must be one of {', '.join(FORMATS)}. Got {fmt!r}.")
    if not directions or any(d not in DIRECTIONS for d in directions):
        raise ExportError(f"directions must be among {', '.join(DIRECTIONS)}. "
                          f"Got {directions!r}.")
    if fmt == "export" and path.suffix != ".pt2":
        raise ExportError(f"--format export writes a .pt2 archive, so the path must end in "
                          f".pt2. Got {str(path)!r}.")


def _modules_and_args(flow: Any, direction: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    inputs = fresh_inputs(flow, direction, batch=EXAMPLE_BATCH, seed=0)
    module = DensityModule(flow) if direction == "density" else SampleModule(flow)
    return module.eval(), inputs


def _dynamic_shapes(inputs: dict[str, Any]) -> dict[str, Any]:
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    return {k: ({0: batch} if v.dim() > 0 else None) for k, v in inputs.items()}


def _export_programs(flow: Any, directions: list[str]) -> dict[str, Any]:
    programs = {}
    for d in directions:
        module, inputs = _modules_and_args(flow, d)
        try:
            programs[d] = torch.export.export(module, tuple(inputs.values()),
                                              dynamic_shapes=_dynamic_shapes(inputs))
        except Exception as e:
            raise ExportError(f"torch.export of the {d} direction failed: "
                              f"{type(e).__name__}: {str(e)[:2000]}") from e
    return programs


def _write_torchscript(flow: Any, path: Path, directions: list[str], meta: dict) -> None:
    module = TorchScriptFlow(flow, density="density" in directions,
                             sample="sample" in directions)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(module)
        torch.jit.save(scripted, str(path), _extra_files={METADATA_FILE: json.dumps(meta)})


def _write_onnx(flow: Any, paths: dict[str, Path], meta: dict, exporter: str,
                programs: dict[str, Any] | None) -> None:
    try:
        import onnx
    except ImportError as e:
        raise ExportError("--format onnx needs onnx and onnxscript: pip install "
                          "'flowgraph[export]'") from e
    for d, path in paths.items():
        module, inputs = _modules_and_args(flow, d)
        outputs = ["log_prob", "bits_per_dim"] if d == "density" else ["images", "x"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if exporter == "legacy":
                torch.onnx.export(module, tuple(inputs.values()), str(path), dynamo=False,
                                  input_names=list(inputs), output_names=outputs,
                                  dynamic_axes={k: {0: "batch"} for k, v in inputs.items()
                                                if v.dim() > 0}, opset_version=17)
            else:
                program = (programs or {}).get(d) or _export_programs(flow, [d])[d]
                onnx_program = torch.onnx.export(program, dynamo=True, verbose=False,
                                                 output_names=outputs)
                onnx_program.save(str(path))
        model = onnx.load(str(path))
        props = {"flowgraph": json.dumps({**meta, "directions": [d]}),
                 "spec_hash": meta["spec_hash"], "spec_name": str(meta["spec_name"]),
                 "data_shape": json.dumps(meta["data_shape"]), "bits": str(meta["bits"]),
                 "direction": d}
        del model.metadata_props[:]
        for key, value in props.items():
            model.metadata_props.add(key=key, value=value)
        onnx.save(model, str(path))


def _write_pt2(flow: Any, path: Path, programs: dict[str, Any], meta: dict, aoti: bool) -> None:
    from torch.export.pt2_archive._package import package_pt2

    aoti_files = None
    if aoti:
        aoti_files = {}
        # what exporters/cpp reads with AOTIModelPackageLoader::get_metadata()
        info = {"flowgraph.data_shape": ",".join(map(str, meta["data_shape"])),
                "flowgraph.bits": str(meta["bits"]), "flowgraph.spec_hash": meta["spec_hash"],
                "flowgraph.latent_dim": str(meta["latent_dim"]),
                "flowgraph.noise_dim": str(meta["noise_dim"])}
        for d, program in programs.items():
            _, inputs = _modules_and_args(flow, d)
            aoti_files[d] = torch._inductor.aot_compile(
                program.module(), tuple(inputs.values()),
                options={"aot_inductor.package": True, "aot_inductor.metadata": info})
    package_pt2(str(path), exported_programs=programs, aoti_files=aoti_files,
                extra_files={METADATA_FILE: json.dumps(meta)})


def export_flow(flow: Any, path: str | Path, fmt: str = "export",
                directions: Iterable[str] = DIRECTIONS, *, verify: bool = True,
                fresh_process: bool = True, aoti: bool = False, onnx_exporter: str = "dynamo",
                source: str | None = None) -> ExportReport:
    """Export `flow` (a `CompiledFlow`; left unchanged) in format `fmt` and check the result.

    Arguments:
        flow: the compiled flow (a copy is frozen and exported).
        path: output file; ONNX writes ``<stem>.<direction>.onnx`` next to it.
        fmt: ``"torchscript"``, ``"onnx"`` or ``"export"`` (torch.export ``.pt2`` archive).
        directions: ``"density"`` and/or ``"sample"``.
        verify: load the files back and compare with eager PyTorch on fresh inputs; raises
            `VerificationError` beyond 1e-4 relative on log-likelihoods and 1e-4 absolute
            on samples before quantization.
        fresh_process: load TorchScript in a new Python process (slower; the CLI does).
        aoti: ``"export"`` only: also compile the programs with AOTInductor into the archive.
        onnx_exporter: ``"dynamo"`` (torch.export-based, default) or ``"legacy"``.
        source: recorded in the metadata (the checkpoint or spec the flow came from).

    Returns:
        `ExportReport` with the files, their size, the export time and the checks.

    Example:
        >>> flow = compile_spec("specs/denseflow-fmnist.yaml")  # doctest: +SKIP
        >>> print(export_flow(flow, "fmnist.pt2").summary())  # doctest: +SKIP
    """
    directions = [d for d in DIRECTIONS if d in set(directions)]
    path = Path(path)
    _check_args(fmt, directions, path)
    if onnx_exporter not in ("dynamo", "legacy"):
        raise ExportError(f"onnx_exporter must be dynamo or legacy. Got {onnx_exporter!r}.")
    start = time.perf_counter()
    frozen = prepare_for_export(flow)
    meta = artifact_metadata(frozen, fmt, directions, source)
    paths = artifact_paths(path, fmt, directions)
    for p in set(paths.values()):
        p.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), quiet_torch():
        if fmt == "torchscript":
            _write_torchscript(frozen, path, directions, meta)
        elif fmt == "onnx":
            programs = None if onnx_exporter == "legacy" else _export_programs(frozen,
                                                                                directions)
            _write_onnx(frozen, paths, meta, onnx_exporter, programs)
        else:
            _write_pt2(frozen, path, _export_programs(frozen, directions), meta, aoti)
    report = ExportReport(fmt, directions, sorted(set(paths.values())),
                          time.perf_counter() - start)
    if verify:
        t0 = time.perf_counter()
        with quiet_torch():
            report.checks = check_artifact(frozen, fmt, paths, fresh_process)
        report.verify_seconds = time.perf_counter() - t0
        verify_outputs(report.checks)
    return report


def check_artifact(flow: Any, fmt: str, paths: dict[str, Path], fresh_process: bool = True
                   ) -> list[Check]:
    """Compare the files of an export of (frozen) `flow` with eager PyTorch on fresh inputs."""
    inputs = {d: fresh_inputs(flow, d) for d in paths}
    if fmt == "torchscript":
        got = run_torchscript(next(iter(paths.values())), inputs, fresh_process)
        if got.pop("spec_hash") != flow.spec_hash:
            raise ExportError("the TorchScript file's metadata does not carry the flow's spec "
                              "hash")
        runtime = "torch.jit.load" + (" (fresh process)" if fresh_process else "")
    elif fmt == "onnx":
        got, runtime = run_onnx(paths, inputs), "onnxruntime"
    else:
        got, runtime = run_pt2(next(iter(paths.values())), inputs), "torch.export.load"
    checks = []
    for key, outputs in got.items():
        direction = key.removeprefix("aoti:")
        name = "AOTInductor" if key.startswith("aoti:") else runtime
        want = eager_outputs(flow, direction, inputs[direction])
        checks.append(compare(name, direction, outputs, want))
    return checks
