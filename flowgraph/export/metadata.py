r"""What an exported file says about itself: one JSON document, stored inside every artifact.

The document (`artifact_metadata`) holds the spec text and hash, the data shape, bits and
dtype, the latent and noise sizes, and the inputs and outputs of every direction. It travels
as ``flowgraph.json`` in TorchScript's ``_extra_files`` (``extra/flowgraph.json`` in the zip),
as ONNX ``metadata_props`` (key ``flowgraph``, plus flat ``spec_hash``, ``data_shape`` and
``bits`` for quick inspection) and as an extra file of the ``.pt2`` archive. `read_metadata`
reads it back from any of the three without loading the model.
"""

from __future__ import annotations

import datetime as _dt
import json
import zipfile
from pathlib import Path
from typing import Any

import torch

from flowgraph.export.modules import data_dtype
from flowgraph.version import __version__

__all__ = ["METADATA_FILE", "METADATA_VERSION", "artifact_metadata", "io_signature",
           "read_metadata"]

METADATA_FILE = "flowgraph.json"
METADATA_VERSION = 1


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def io_signature(flow: Any, direction: str) -> dict[str, list[dict[str, Any]]]:
    """Names, shapes (``"N"`` for the batch) and dtypes of a direction's inputs and outputs."""
    data = {"shape": ["N", *flow.data_shape], "dtype": _dtype_name(data_dtype(flow.bits))}
    if direction == "density":
        inputs = [{"name": "x", **data}]
        if flow.noise_dim:
            inputs.append({"name": "noise", "shape": ["N", flow.noise_dim], "dtype": "float32"})
        outputs = [{"name": "log_prob", "shape": ["N"], "dtype": "float32"},
                   {"name": "bits_per_dim", "shape": ["N"], "dtype": "float32"}]
    else:
        inputs = [{"name": "eps", "shape": ["N", flow.latent_dim], "dtype": "float32"},
                  {"name": "temperature", "shape": [], "dtype": "float32"}]
        outputs = [{"name": "images", **data},
                   {"name": "x", "shape": ["N", *flow.data_shape], "dtype": "float32"}]
    return {"inputs": inputs, "outputs": outputs}


def artifact_metadata(flow: Any, fmt: str, directions: list[str],
                      source: str | None = None) -> dict[str, Any]:
    """The self-description of an artifact of `flow` in format `fmt`."""
    return {
        "flowgraph_artifact": METADATA_VERSION,
        "format": fmt,
        "directions": list(directions),
        "signatures": {d: io_signature(flow, d) for d in directions},
        "spec_name": getattr(flow, "_analysis", None) and flow._analysis.spec.name,
        "spec_hash": flow.spec_hash,
        "spec_text": flow.spec_text,
        "data_shape": [int(s) for s in flow.data_shape],
        "bits": int(flow.bits),
        "data_dtype": _dtype_name(data_dtype(flow.bits)),
        "data_dims": int(flow.data_dims),
        "latent_dim": int(flow.latent_dim),
        "noise_dim": int(flow.noise_dim),
        "source": source,
        "flowgraph_version": __version__,
        "torch_version": torch.__version__,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def _from_zip(path: Path) -> dict[str, Any]:
    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            if name.endswith(f"extra/{METADATA_FILE}"):
                return json.loads(z.read(name))
    raise ValueError(f"{str(path)!r} has no {METADATA_FILE}; it was not written by flowgraph "
                     "export")


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of a ``.pt`` (TorchScript), ``.onnx`` or ``.pt2`` file written by
    `flowgraph.export.export_flow`; raises ValueError when there is none."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        props = {p.key: p.value for p in model.metadata_props}
        if "flowgraph" not in props:
            raise ValueError(f"{str(path)!r} has no flowgraph metadata_props; it was not "
                             "written by flowgraph export")
        return json.loads(props["flowgraph"])
    return _from_zip(path)
