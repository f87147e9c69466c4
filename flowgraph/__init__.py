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

from flowgraph import evaluate, train
from flowgraph.checkpoint import load_flow
from flowgraph.compile import CompiledFlow, compile_spec
from flowgraph.evaluate import evaluate_bpd, sample_images
from flowgraph.export import export_flow
from flowgraph.version import __version__

__all__ = ["CompiledFlow", "__version__", "compile_spec", "evaluate", "evaluate_bpd",
           "export_flow", "load_flow", "sample_images", "train"]
