r"""flowgraph: normalizing flows declared as YAML specs and compiled into `torch.nn.Module`\ s.

The public API, re-exported from the modules that define it:

- `compile_spec` (`flowgraph.compile`): spec file or `FlowSpec` -> `CompiledFlow`;
- `load_flow` (`flowgraph.checkpoint`): checkpoint -> ``(flow, checkpoint dict)``;
- `train` (`flowgraph.train.loop`): the training loop behind ``flowgraph train``;
- `evaluate_bpd` and `sample_images` (`flowgraph.evaluate`): bits/dim and samples;
- `export_flow` (`flowgraph.export`): TorchScript, ONNX and torch.export artifacts.

`flowgraph.train` is the function; the training package stays importable by its dotted names
(``from flowgraph.train import TrainConfig``). `evaluate` is the evaluation module.
"""

__version__ = "0.1.0"

from flowgraph import evaluate
from flowgraph.checkpoint import load_flow
from flowgraph.compile import CompiledFlow, compile_spec
from flowgraph.evaluate import evaluate_bpd, sample_images
from flowgraph.export import export_flow
from flowgraph.train.loop import train

__all__ = ["CompiledFlow", "__version__", "compile_spec", "evaluate", "evaluate_bpd",
           "export_flow", "load_flow", "sample_images", "train"]
