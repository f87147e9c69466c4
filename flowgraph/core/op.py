r"""The op contract: `OpDef` (one kind of node, everything about it in one class) and the small
structured API through which an op says what code the compiler generates for it.

An op never writes Python text. It receives a `Site` (handles to the variables of its inputs,
outputs, conditions and noise, and to its module) and an `Emitter`, and states calls:

    def emit_forward(self, e: Emitter, s: Site) -> None:
        e.call(torch.split, s.inputs[0], [2, 1], dim=1, out=s.outputs)

The compiler picks every variable name (after the node ids) and writes the line; the default
emission calls the node's module by the convention of `flowgraph.ops.base.FlowModule`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from flowgraph.core.types import OpParams, Shape, TensorType
from flowgraph.errors import ShapeError

if TYPE_CHECKING:
    from torch import nn

__all__ = ["Emitter", "Example", "Method", "ModuleRef", "OpDef", "Role", "Site", "Var",
           "count_parameters", "skipped_init"]

#: What a node is for, read by `draw` and reports: a bijective `transform`, a `dequantize`
#: step, an `augment`ation that appends noise, a `reshape` of the same values, a `prior`.
Role = Literal["transform", "dequantize", "augment", "reshape", "prior"]


@dataclass(frozen=True)
class Var:
    """A handle to one generated variable; only the compiler knows its name."""

    name: str

    def __repr__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Method:
    """A method of a node's module (``forward`` is the module call itself)."""

    module: ModuleRef
    name: str


@dataclass(frozen=True)
class ModuleRef:
    """The node's submodule, by attribute path from the compiled flow."""

    path: str

    @property
    def forward(self) -> Method:
        return Method(self, "forward")

    @property
    def inverse(self) -> Method:
        return Method(self, "inverse")

    def method(self, name: str) -> Method:
        return Method(self, name)


@dataclass(frozen=True)
class Site:
    """One node as the generator sees it, in the direction being generated.

    Forward: `inputs` are the data inputs and `outputs` the node's output ports; inverse: the
    other way round (`inputs` are the node's outputs, reconstructed, and `outputs` the data
    inputs to reconstruct). `conds` are empty in an inverse that does not read conditions.
    """

    node_id: str
    module: ModuleRef
    inputs: tuple[Var, ...]
    outputs: tuple[Var, ...]
    conds: tuple[Var, ...] = ()
    noise: Var | None = None
    params: Any = None
    in_types: tuple[TensorType, ...] = ()
    out_types: tuple[TensorType, ...] = ()


class Emitter(Protocol):
    """What the code generator offers an op (implemented in `flowgraph.compile.codegen`)."""

    def call(self, fn: Method | Callable[..., Any], *args: Any, out: Var | Sequence[Var],
             logdet: bool = False, **kwargs: Any) -> None:
        """Emit ``out = fn(*args, **kwargs)``. Arguments are `Var`s, lists of them, None or
        literals (numbers, strings, bools, lists/tuples of those). With ``logdet=True`` the call
        returns ``(outputs, log_det)`` and the log-det is added to the flow's total. `fn` is a
        `Method` of the node's module, a ``torch`` function, or a TorchScript-compatible function
        at module level of the op's file."""


@dataclass(frozen=True)
class Example:
    """A case the generic contract tests run the op on (every op declares at least one).

    `domain` bounds the random inputs (e.g. (0.05, 0.95) for an op defined on (0, 1)).
    """

    params: Mapping[str, Any] = field(default_factory=dict)
    inputs: tuple[TensorType, ...] = ()
    conds: tuple[TensorType, ...] = ()
    domain: tuple[float, float] | None = None


class OpDef:
    """A kind of node. A subclass in any module of `flowgraph.ops` (or of a plugin's
    ``flowgraph.ops`` entry point) that sets `name` is registered; it declares:

    - `name`, `Params` (an `OpParams` model), `summary`, `role`, and `examples` for the tests;
    - arity: `n_inputs` (data inputs, None = two or more), `outputs` (port names) and
      `conditions` ("none", "optional", "required");
    - flags: `bijective`, `stochastic` (forward consumes noise of `noise_shape`),
      `inverse_needs_conditions` (False when the inverse ignores the conditions, as
      augmentation does: any earlier tensor is then a legal condition), `dequantizes`,
      `is_prior`;
    - `infer` (output types; raise `ShapeError` naming the rule) and `build` (the module).
      Parameter counts are not declared: they are counted on the module built on the ``meta``
      device, so they cannot disagree with it.
    - ops without a module (`build` returns None) override `emit_forward` / `emit_inverse`.

    Direction: forward maps data to latent (x -> z).
    """

    name: ClassVar[str]
    Params: ClassVar[type[OpParams]] = OpParams
    summary: ClassVar[str] = ""
    role: ClassVar[Role] = "transform"
    examples: ClassVar[tuple[Example, ...]] = ()
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

    def noise_shape(self, p: Any, inputs: list[TensorType]) -> Shape | None:
        return None

    def added_dims(self, p: Any, inputs: list[TensorType]) -> int:
        """Latent dimensions this op adds (noise channels of an augmentation)."""
        return 0

    def param_count(self, p: Any, inputs: list[TensorType], conds: list[TensorType]) -> int:
        """Exact parameter count, from the module built on the meta device (no memory).

        Memoised per (params, types): a deep flow repeats a few distinct nodes many times."""
        key = (p.model_dump_json() if isinstance(p, OpParams) else repr(p),
               tuple(inputs), tuple(conds))
        cache = self.__dict__.setdefault("_param_counts", {})
        if key not in cache:
            cache[key] = count_parameters(lambda: self.build(p, inputs, conds))
        return cache[key]

    # -- runtime side ------------------------------------------------------------------------
    def build(self, p: Any, inputs: list[TensorType], conds: list[TensorType]) -> nn.Module | None:
        return None

    def emit_forward(self, e: Emitter, s: Site) -> None:
        e.call(s.module.forward, s.inputs[0], list(s.conds), s.noise, out=s.outputs,
               logdet=True)

    def emit_inverse(self, e: Emitter, s: Site) -> None:
        e.call(s.module.inverse, s.inputs[0], list(s.conds), out=s.outputs, logdet=True)

    # -- helpers for subclasses ----------------------------------------------------------------
    @staticmethod
    def require_image(x: TensorType, what: str = "input") -> tuple[int, int, int]:
        if len(x.shape) != 3:
            raise ShapeError(f"this op needs an image {what} of shape [C, H, W]",
                             found=f"shape {list(x.shape)}")
        c, h, w = x.shape
        return c, h, w

    @staticmethod
    def require_continuous(x: TensorType, op: str) -> None:
        """Density ops need continuous data: a log-det on n-bit integers means nothing."""
        if x.bits is not None:
            raise ShapeError(f"{op} needs continuous input, but this tensor is discrete",
                             found=f"{x}",
                             hint="put a dequantize op (e.g. dequantize_uniform) before it")

    def __repr__(self) -> str:
        return f"<op {self.name}>"


@contextlib.contextmanager
def skipped_init() -> Iterator[None]:
    """Make `torch.nn.init`'s in-place initialisers no-ops while a module is built whose values
    do not matter (built on `meta` to count, or about to be overwritten by loaded weights).
    Process-wide while it lasts: not for use while another thread builds modules."""
    from torch.nn import init

    saved = {n: getattr(init, n) for n in dir(init)
             if n.endswith("_") and not n.startswith("_") and callable(getattr(init, n))}
    try:
        for name in saved:
            setattr(init, name, lambda tensor, *a, **k: tensor)
        yield
    finally:
        for name, fn in saved.items():
            setattr(init, name, fn)


def count_parameters(build: Callable[[], nn.Module | None]) -> int:
    """Parameters of the module `build` makes, built on the meta device (shapes, no storage)."""
    import torch

    with torch.device("meta"), skipped_init():
        module = build()
    return 0 if module is None else sum(t.numel() for t in module.parameters())
