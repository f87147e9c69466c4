r"""`OpDef` (what a kind of node is, statically) and `OpRegistry` (the closed set of ops).

An op definition is torch-free at the static level: its parameters model, its shape rule and
its parameter count are all evaluated before any tensor exists. `build` is the only method that
creates a torch module, and the compiler is the only caller of it.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from flowgraph.errors import ShapeError

if TYPE_CHECKING:
    from torch import nn

__all__ = ["CallSite", "OpDef", "OpParams", "OpRegistry", "Shape", "TensorType", "numel"]

Shape = tuple[int, ...]


def numel(shape: Iterable[int]) -> int:
    return math.prod(shape)


@dataclass(frozen=True)
class TensorType:
    """Static type of a tensor edge, without the batch dimension.

    `bits` is set for discrete data (n-bit integers in [0, 2**bits)); continuous tensors have None.
    """

    shape: Shape
    bits: int | None = None

    @property
    def numel(self) -> int:
        return numel(self.shape)

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3

    def __str__(self) -> str:
        s = "×".join(str(d) for d in self.shape)
        return f"{s} ({self.bits}-bit)" if self.bits else s


class OpParams(BaseModel):
    """Base of every op's parameters model: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class CallSite:
    """What the code generator knows about one node when it asks the op for code.

    `attr` is the module attribute path (`self.block1.u0.coupling`), `inputs`/`outputs` are
    variable names (in the direction being generated), `conds` is a Python list literal of
    condition variables and `noise` an expression for this node's noise (or "None").
    `params`, `in_types` and `out_types` are the node's parsed params and its forward-direction
    data input / output types, for ops emitted inline (split, concat).
    """

    attr: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    conds: str = "[]"
    noise: str = "None"
    node_id: str = ""
    params: Any = None
    in_types: tuple[TensorType, ...] = ()
    out_types: tuple[TensorType, ...] = ()


class OpDef:
    """A kind of node. Subclass requirements:

    - set `name`, `Params` (an `OpParams` subclass) and `summary`;
    - declare arity: `n_inputs` (data inputs, None = one or more), `outputs` (port names) and
      `conditions` ("none", "optional", "required");
    - declare flags: `bijective` (forward is invertible given its conditions), `stochastic`
      (forward consumes noise, see `noise_shape`), `inverse_needs_conditions` (False when the
      inverse ignores the conditions, as augmentation does: that makes any forward tensor a
      legal condition);
    - implement `infer` (raise `ShapeError` naming the rule) and `param_count` (exact, equal to
      the built module's parameter count; a contract test checks it);
    - implement `build` unless the op is emitted inline (`emit_forward`/`emit_inverse`).

    Direction: forward maps data to latent (x -> z). The default code convention calls the
    module as ``y, ld = m(x, conds, noise)`` and ``x, ld = m.inverse(y, conds)``.
    """

    name: ClassVar[str]
    Params: ClassVar[type[OpParams]] = OpParams
    summary: ClassVar[str] = ""
    family: ClassVar[str] = "flow"
    n_inputs: ClassVar[int | None] = 1
    outputs: ClassVar[tuple[str, ...]] = ("out",)
    conditions: ClassVar[Literal["none", "optional", "required"]] = "none"
    bijective: ClassVar[bool] = True
    stochastic: ClassVar[bool] = False
    inverse_needs_conditions: ClassVar[bool] = True
    dequantizes: ClassVar[bool] = False
    is_prior: ClassVar[bool] = False

    # -- static side -------------------------------------------------------------------------
    def parse(self, params: Mapping[str, Any]) -> OpParams:
        return self.Params.model_validate(dict(params))

    def infer(self, p: Any, inputs: list[TensorType], conds: list[TensorType]
              ) -> dict[str, TensorType]:
        """Output types by port. Default: one continuous output of the input's shape."""
        (x,) = inputs
        return {"out": TensorType(x.shape)}

    def param_count(self, p: Any, inputs: list[TensorType], conds: list[TensorType]) -> int:
        return 0

    def noise_shape(self, p: Any, inputs: list[TensorType]) -> Shape | None:
        return None

    def added_dims(self, p: Any, inputs: list[TensorType]) -> int:
        """Latent dimensions this op adds (noise channels of an augmentation)."""
        return 0

    # -- runtime side ------------------------------------------------------------------------
    def build(self, p: Any, inputs: list[TensorType], conds: list[TensorType]) -> nn.Module | None:
        return None

    def emit_forward(self, site: CallSite) -> list[str]:
        outs = ", ".join(site.outputs)
        return [f"{outs}, _ld = {site.attr}({site.inputs[0]}, {site.conds}, {site.noise})",
                "ld = ld + _ld"]

    def emit_inverse(self, site: CallSite) -> list[str]:
        outs = ", ".join(site.outputs)
        return [f"{outs}, _ld = {site.attr}.inverse({site.inputs[0]}, {site.conds})",
                "ld = ld + _ld"]

    # -- helpers for subclasses ----------------------------------------------------------------
    @staticmethod
    def require_image(x: TensorType, what: str = "input") -> tuple[int, int, int]:
        if len(x.shape) != 3:
            raise ShapeError(f"this op needs an image {what} of shape [C, H, W]",
                             found=f"shape {list(x.shape)}")
        c, h, w = x.shape
        return c, h, w

    def __repr__(self) -> str:
        return f"<op {self.name}>"


class OpRegistry:
    """An immutable name -> OpDef mapping built from an explicit list (no import side effects)."""

    def __init__(self, ops: Iterable[OpDef]):
        table: dict[str, OpDef] = {}
        for op in ops:
            if op.name in table:
                raise ValueError(f"duplicate op name {op.name!r} in registry")
            table[op.name] = op
        self._ops = table

    def with_ops(self, ops: Iterable[OpDef]) -> OpRegistry:
        return OpRegistry([*self._ops.values(), *ops])

    def __contains__(self, name: object) -> bool:
        return name in self._ops

    def __iter__(self):
        return iter(self._ops.values())

    def names(self) -> list[str]:
        return sorted(self._ops)

    def get(self, name: str) -> OpDef:
        try:
            return self._ops[name]
        except KeyError:
            raise KeyError(self.unknown_message(name)) from None

    def suggestions(self, name: str) -> list[str]:
        return difflib.get_close_matches(name, list(self._ops), n=3, cutoff=0.5)

    def unknown_message(self, name: str) -> str:
        close = self.suggestions(name)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return f"unknown op {name!r}.{hint}"
