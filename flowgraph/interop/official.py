r"""Import the DenseFlow authors' checkpoints into a flowgraph checkpoint.

The authors' training code saves ``{'current_epoch', 'train_metrics', 'eval_metrics',
'eval_epochs', 'model', 'optimizer', 'scheduler_iter', 'scheduler_epoch'}`` with `torch.save`;
``model`` is the state dict, with a ``module.`` prefix on every key when the model was wrapped
in `nn.DataParallel`. The file is read with ``weights_only=True``: a file that needs arbitrary
unpickling is refused.

`import_official` checks the spec's switches against the mapping's `requires`, compiles the
spec, maps every tensor by the mapping's rules (`plan_import`: every source key consumed once,
every flowgraph parameter and persistent buffer filled with the right shape; all problems are
reported together), copies the tensors and writes a normal flowgraph checkpoint with
`flowgraph.checkpoint.save_checkpoint` (spec text and hash embedded).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from flowgraph.core.op import skipped_init
from flowgraph.errors import FlowgraphError
from flowgraph.interop.mapping import Rule, StateMapping, load_mapping, mapping_for_spec

__all__ = ["ImportReport", "MappedTensor", "WeightImportError", "import_official",
           "plan_import", "read_official_checkpoint"]

DP_PREFIX = "module."
_LIST_LIMIT = 40  # keys listed per kind of problem; the rest are counted


class WeightImportError(FlowgraphError):
    """The checkpoint or the spec does not fit the mapping (exit status 2); lists every
    problem."""

    usage = True


@dataclass(frozen=True)
class MappedTensor:
    """One planned copy: flowgraph key <- source key, with the conversion."""

    target: str
    source: str
    convert: str


@dataclass
class ImportReport:
    """What an import did (printed by the CLI, returned by `import_official`)."""

    out: Path | None
    source_entries: int
    copied: int
    constants_checked: int
    derived: int
    parameters: int
    parameter_tensors: int
    spec_hash: str
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"out": None if self.out is None else str(self.out),
                "source_entries": self.source_entries, "copied": self.copied,
                "constants_checked": self.constants_checked, "derived": self.derived,
                "parameters": self.parameters, "parameter_tensors": self.parameter_tensors,
                "spec_hash": self.spec_hash, "provenance": self.provenance}


# -- reading the authors' file --------------------------------------------------------------------

def _unsafe_reason(e: Exception) -> str:
    """Name what the file wanted to unpickle, without torch's advice on how to allow it."""
    m = re.search(r"(?:unsupported|Unsupported global:)\s*GLOBAL\s+([\w.]+)", str(e))
    return f" (it asks for {m.group(1)})" if m else ""


def read_official_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The state dict of an authors' checkpoint (``module.`` stripped) and its metadata.

    Accepts the training checkpoint dict (state dict under ``model``) or a bare state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightImportError(f"checkpoint {str(path)!r} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - every failure means: not a safe tensor file
        if isinstance(e, __import__("pickle").UnpicklingError) or "Weights only load" in str(e):
            raise WeightImportError(
                f"{str(path)!r} cannot be read safely: it needs arbitrary Python objects to "
                f"be unpickled{_unsafe_reason(e)}, and unpickling runs code. The authors' "
                "checkpoints hold only tensors, numbers, lists and dicts, so this file is not "
                "one of them or has been altered; flowgraph does not load it.") from None
        raise WeightImportError(f"{str(path)!r} cannot be read ({type(e).__name__}); it is "
                                "not a PyTorch checkpoint or it is truncated.") from None
    if not isinstance(obj, Mapping):
        raise WeightImportError(f"{str(path)!r} holds a {type(obj).__name__}, not the "
                                "authors' checkpoint dict with a 'model' state dict.")
    if "spec_hash" in obj and "spec_text" in obj:
        raise WeightImportError(f"{str(path)!r} is already a flowgraph checkpoint; use it "
                                "directly with eval, sample, train --resume or export.")
    meta: dict[str, Any] = {}
    if "model" in obj and isinstance(obj["model"], Mapping):
        sd = obj["model"]
        epoch = obj.get("current_epoch")
        if isinstance(epoch, int):
            meta["epoch"] = epoch
        ev = obj.get("eval_metrics")
        if isinstance(ev, Mapping):
            last = {k: v[-1] for k, v in ev.items()
                    if isinstance(v, list) and v and isinstance(v[-1], (int, float))}
            if last:
                meta["eval_metrics_last"] = last
    elif obj and all(isinstance(v, Tensor) for v in obj.values()):
        sd = obj
    else:
        raise WeightImportError(f"{str(path)!r} has no 'model' state dict (keys: "
                                f"{', '.join(map(str, list(obj)[:8]))}).")
    bad = [str(k) for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise WeightImportError(f"{str(path)!r}: the state dict has non-tensor entries: "
                                f"{', '.join(bad[:8])}")
    keys = list(sd)
    if keys and all(k.startswith(DP_PREFIX) for k in keys):
        sd = {k[len(DP_PREFIX):]: v for k, v in sd.items()}
        meta["data_parallel_prefix"] = True
    return dict(sd), meta


# -- planning -------------------------------------------------------------------------------

def _shape(t: Tensor | tuple[int, ...] | list[int]) -> tuple[int, ...]:
    return tuple(t.shape) if isinstance(t, Tensor) else tuple(t)


def _fits(convert: str, src: tuple[int, ...], dst: tuple[int, ...]) -> bool:
    if convert == "copy":
        return src == dst
    if convert == "squeeze":
        return [d for d in src if d != 1] == [d for d in dst if d != 1]
    return src in ((1,), ()) and dst == ()  # flag


def _listing(title: str, lines: list[str]) -> list[str]:
    if not lines:
        return []
    out = [f"{title} ({len(lines)}):"] + [f"  {x}" for x in lines[:_LIST_LIMIT]]
    if len(lines) > _LIST_LIMIT:
        out.append(f"  ... and {len(lines) - _LIST_LIMIT} more")
    return out


def plan_import(source: Mapping[str, Tensor | tuple[int, ...]],
                target: Mapping[str, Tensor | tuple[int, ...]], mapping: StateMapping,
                args: Mapping[str, Any]) -> list[MappedTensor]:
    """Map every target key to one source key; raise `WeightImportError` listing every problem.

    `source` and `target` map keys to tensors (or shapes); `args` are the spec's arguments,
    visible to the rules' expressions. Constants are checked when `source` holds tensors.
    """
    plan: list[MappedTensor] = []
    unruled, missing, shapes, twice, consts = [], [], [], [], []
    used: dict[str, str] = {}
    for key, t in target.items():
        rule: Rule | None = mapping.rule_for(key)
        if rule is None:
            if not mapping.is_derived(key):
                unruled.append(key)
            continue
        src_key = rule.source_key(key, args)
        if src_key not in source:
            missing.append(f"{src_key} {list(_shape(t))} (for {key})")
            continue
        if src_key in used:
            twice.append(f"{src_key} (for {used[src_key]} and {key})")
            continue
        used[src_key] = key
        s, d = _shape(source[src_key]), _shape(t)
        if not _fits(rule.convert, s, d):
            want = "" if rule.convert == "copy" else f" ({rule.convert} to {list(d)})"
            shapes.append(f"{src_key}: {list(s)}, expected {list(d)}{want} (for {key})")
            continue
        plan.append(MappedTensor(key, src_key, rule.convert))
    extra = []
    for src_key, v in source.items():
        if src_key in used:
            continue
        c = mapping.constant_for(src_key)
        if c is None:
            extra.append(f"{src_key} {list(_shape(v))}")
        elif isinstance(v, Tensor) and (v.numel() != 1 or abs(float(v) - c.value) > 1e-5):
            shown = float(v) if v.numel() == 1 else f"shape {list(v.shape)}"
            consts.append(f"{src_key} is {shown}, expected {c.value} ({c.why})")
    problems = (_listing("source keys missing from the checkpoint", missing)
                + _listing("unexpected source keys (no flowgraph tensor takes them)", extra)
                + _listing("wrong shapes", shapes)
                + _listing("source constants with other values", consts)
                + _listing("source keys claimed twice (a mapping error)", twice)
                + _listing(f"flowgraph keys that no rule of {mapping.path} covers", unruled))
    if problems:
        raise WeightImportError("the checkpoint does not fit the spec:\n" + "\n".join(problems))
    return plan


def _convert(src: Tensor, dst: Tensor, convert: str) -> Tensor:
    if convert == "flag":
        return (src.reshape(()) != 0).to(dst.dtype)
    return src.reshape(dst.shape).to(dst.dtype)


def apply_plan(plan: list[MappedTensor], source: Mapping[str, Tensor], flow: torch.nn.Module
               ) -> None:
    """Copy the planned tensors into `flow`'s parameters and buffers (in place)."""
    state = flow.state_dict(keep_vars=True)
    with torch.no_grad():
        for m in plan:
            dst = state[m.target]
            dst.copy_(_convert(source[m.source], dst, m.convert))


# -- the whole import -----------------------------------------------------------------------------

def _with_clamp_none(spec: Any, node_id: str | None) -> Any:
    """The spec with ``clamp: none`` on its dequantization node (a top-level op node)."""
    nodes = list(spec.nodes)
    for i, n in enumerate(nodes):
        if n.id == node_id and n.op is not None:
            nodes[i] = n.model_copy(update={"params": {**n.params, "clamp": "none"}})
            return spec.model_copy(update={"nodes": nodes})
    raise WeightImportError(f"--dequant-clamp none: the spec has no top-level op node "
                            f"{node_id!r} (the mapping's `dequantizer`).")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _training_state(flow: torch.nn.Module, dataset: str | None) -> dict[str, Any]:
    """A fresh training state (step 0) so that `flowgraph train --resume` accepts the file."""
    from flowgraph.train.config import TrainConfig
    from flowgraph.train.state import capture_rng

    cfg = TrainConfig(dataset=dataset)
    opt = torch.optim.Adamax([p for p in flow.parameters() if p.requires_grad], lr=cfg.lr,
                             betas=cfg.betas, weight_decay=cfg.weight_decay)
    return {"optimizer": opt.state_dict(),
            "schedule": {"mode": cfg.lr_schedule, "lr": 0.0, "epoch": 0, "step": 0},
            "step": 0, "epoch": 0, "batch": 0, "skipped": 0, "nonfinite_streak": 0,
            "wall_time": 0.0, "epoch_bpd": [0.0, 0], "world_size": 1, "rng": capture_rng(),
            "config": cfg.model_dump(mode="json")}


def import_official(checkpoint: str | Path, spec_path: str | Path, out: str | Path | None, *,
                    overrides: Mapping[str, Any] | None = None,
                    mapping_path: str | Path | None = None, dataset: str | None = None,
                    dequant_clamp: str = "margin", training_state: bool = True
                    ) -> tuple[torch.nn.Module, ImportReport]:
    """Import the authors' `checkpoint` into the model of `spec_path` and write `out`.

    Returns the loaded flow and a report. With ``out=None`` nothing is written (a dry run).
    """
    from flowgraph.checkpoint import save_checkpoint
    from flowgraph.compile import compile_spec
    from flowgraph.spec.io import read_spec

    spec, smap = read_spec(spec_path, overrides)
    mapping = load_mapping(mapping_path or mapping_for_spec(spec_path))
    refusals = mapping.refusals(spec.args)
    if refusals:
        raise WeightImportError(
            f"{spec_path} does not compute what the authors' code computes, so their weights "
            "cannot be imported into it:\n" + "\n".join(f"  {r}" for r in refusals))
    if dataset is not None:
        from flowgraph.data import DATASETS

        if dataset not in DATASETS:
            raise WeightImportError(f"--dataset must be one of {', '.join(DATASETS)}. "
                                    f"Got {dataset!r}.")
    if dequant_clamp not in ("margin", "none"):
        raise WeightImportError(f"--dequant-clamp must be margin or none. Got {dequant_clamp!r}.")
    if dequant_clamp == "none":
        spec = _with_clamp_none(spec, mapping.dequantizer)
    source, meta = read_official_checkpoint(checkpoint)
    with skipped_init():  # every parameter is overwritten by the import (plan_import proves it)
        flow = compile_spec(spec, smap=smap, seed=0)
    target = flow.state_dict()
    plan = plan_import(source, target, mapping, spec.args)
    apply_plan(plan, source, flow)
    n_const = sum(1 for k in source if mapping.constant_for(k) is not None
                  and k not in {m.source for m in plan})
    provenance = {"format": "DenseFlow official (github.com/matejgrcic/DenseFlow)",
                  "file": Path(checkpoint).name, "mapping": mapping.path.name,
                  "dequant_clamp": dequant_clamp, **meta}
    params = [p for p in flow.parameters()]
    report = ImportReport(None, len(source), len(plan), n_const,
                          len(target) - len(plan), sum(p.numel() for p in params), len(params),
                          flow.spec_hash, provenance)
    if out is not None:
        provenance["sha256"] = _sha256(Path(checkpoint))
        state: dict[str, Any] = {"model": flow.state_dict(), "spec_text": flow.spec_text,
                                 "spec_hash": flow.spec_hash, "imported": provenance}
        if training_state:
            state.update(_training_state(flow, dataset))
        elif dataset is not None:
            from flowgraph.train.config import TrainConfig
            state["config"] = TrainConfig(dataset=dataset).model_dump(mode="json")
        report.out = save_checkpoint(out, state)
    return flow, report
