r"""Deployment: compiled flows as TorchScript, ONNX and torch.export (``.pt2``) artifacts that
describe themselves and are checked against eager PyTorch after writing.

`export_flow` is the entry point (``flowgraph export`` is a thin adapter over it);
`read_metadata` reads back what a file says about itself. onnx/onnxruntime are imported only
by the functions that need them.
"""

from flowgraph.export.artifacts import (
    DIRECTIONS,
    FORMATS,
    ExportReport,
    artifact_paths,
    check_artifact,
    export_flow,
    prepare_for_export,
)
from flowgraph.export.metadata import METADATA_FILE, artifact_metadata, read_metadata
from flowgraph.export.modules import DensityModule, SampleModule, TorchScriptFlow, quantize
from flowgraph.export.verify import Check, ExportError, VerificationError

__all__ = ["DIRECTIONS", "FORMATS", "METADATA_FILE", "Check", "DensityModule", "ExportError",
           "ExportReport", "SampleModule", "TorchScriptFlow", "VerificationError",
           "artifact_metadata", "artifact_paths", "check_artifact", "export_flow",
           "prepare_for_export", "quantize", "read_metadata"]
