r"""Flow ops: the runtime contract (`base`), the static `OpDef` contract (`registry`) and the
default registry of every built-in op.

`DEFAULT_REGISTRY` is built on first access (PEP 562 ``__getattr__``) rather than at import:
`flowgraph.nn.registry` imports `flowgraph.ops.registry`, and the coupling ops import
`flowgraph.nn`, so importing every op here eagerly would make ``import flowgraph.nn`` (before
``flowgraph.ops``) fail with a circular import. The list itself stays explicit: add an op by
appending its instance in `default_ops`.
"""

from __future__ import annotations

from typing import Any

from flowgraph.ops.registry import OpDef, OpRegistry

__all__ = ["DEFAULT_REGISTRY", "PRIOR_OPS", "default_ops"]

#: Names of the prior (latent sink) ops in `DEFAULT_REGISTRY`.
PRIOR_OPS: tuple[str, ...] = ("standard_normal", "channel_normal", "conditional_normal")


def default_ops() -> list[OpDef]:
    """One instance of every built-in op, in a stable order."""
    from flowgraph.ops.actnorm import ACTNORM_OP
    from flowgraph.ops.affine import LOGIT_OP, SCALAR_AFFINE_OP
    from flowgraph.ops.augment import CROSS_UNIT_COUPLING_OP
    from flowgraph.ops.conv1x1 import CONV1X1_OP
    from flowgraph.ops.coupling import AFFINE_COUPLING_OP
    from flowgraph.ops.dequantize import DEQUANTIZE_UNIFORM_OP
    from flowgraph.ops.dequantize_variational import DEQUANTIZE_VARIATIONAL_OP
    from flowgraph.ops.permute import PERMUTE_OP
    from flowgraph.ops.priors import CHANNEL_NORMAL_OP, CONDITIONAL_NORMAL_OP, STANDARD_NORMAL_OP
    from flowgraph.ops.reshape import CONCAT_OP, SPLIT_OP, SQUEEZE_OP, UNSQUEEZE_OP
    from flowgraph.ops.spline import SPLINE_COUPLING_OP

    return [
        # data side
        DEQUANTIZE_UNIFORM_OP,
        DEQUANTIZE_VARIATIONAL_OP,
        SCALAR_AFFINE_OP,
        LOGIT_OP,
        # Glow / DenseFlow step
        ACTNORM_OP,
        CONV1X1_OP,
        AFFINE_COUPLING_OP,
        SPLINE_COUPLING_OP,
        PERMUTE_OP,
        CROSS_UNIT_COUPLING_OP,
        # shape
        SQUEEZE_OP,
        UNSQUEEZE_OP,
        SPLIT_OP,
        CONCAT_OP,
        # priors
        STANDARD_NORMAL_OP,
        CHANNEL_NORMAL_OP,
        CONDITIONAL_NORMAL_OP,
    ]


def __getattr__(name: str) -> Any:
    if name == "DEFAULT_REGISTRY":
        registry = OpRegistry(default_ops())
        globals()["DEFAULT_REGISTRY"] = registry  # later lookups skip __getattr__
        return registry
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
