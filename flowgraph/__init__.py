r"""flowgraph: normalizing flows declared as YAML specs and compiled into `torch.nn.Module`\ s.

The public API, re-exported from the modules that define it:

- `compile_spec` (`flowgraph.compile`): spec file or `FlowSpec` -> `CompiledFlow`;
- `load_flow` (`flowgraph.checkpoint`): checkpoint -> ``(flow, checkpoint dict)``;
- `train`: the training package, callable as the training loop behind ``flowgraph train``
  (``flowgraph.train(spec, config, out)`` is ``flowgraph.train.train(...)``);
- `evaluate_bpd` and `sample_images` (`flowgraph.evaluate`): bits/dim and samples;
- `export_flow` (`flowgraph.export`): TorchScript, ONNX and torch.export artifacts.

`evaluate` is the evaluation module.
"""

from __future__ import annotations

import importlib
from typing import Any

from flowgraph.version import __version__

# name -> (module, attribute or None for the module itself). Loaded on first use, so that
# `import flowgraph.spec` (or the CLI) does not pay for export, training and evaluation.
_API = {
    "CompiledFlow": ("flowgraph.compile", "CompiledFlow"),
    "compile_spec": ("flowgraph.compile", "compile_spec"),
    "evaluate": ("flowgraph.evaluate", None),
    "evaluate_bpd": ("flowgraph.evaluate", "evaluate_bpd"),
    "export_flow": ("flowgraph.export", "export_flow"),
    "load_flow": ("flowgraph.checkpoint", "load_flow"),
    "sample_images": ("flowgraph.evaluate", "sample_images"),
    "train": ("flowgraph.train", None),
}

__all__ = ["CompiledFlow", "__version__", "compile_spec", "evaluate", "evaluate_bpd",
           "export_flow", "load_flow", "sample_images", "train"]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'flowgraph' has no attribute {name!r}")
    module, attr = _API[name]
    value = importlib.import_module(module)
    return value if attr is None else getattr(value, attr)
