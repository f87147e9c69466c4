r"""Scale functions of affine maps: the closed set of ways a raw output s becomes log σ.

A spec names a scale with a string (`ScaleName`); the op resolves it once, at build time, to a
`Scale` code stored as a plain ``int`` attribute, and the runtime calls `log_scale(s, code)`.
TorchScript compiles the ``if`` chain over an int, and torch.compile / torch.export specialise
on the attribute, so no string is ever compared at runtime.

| name        | log σ(s)              | σ(0)          | used by                        |
|-------------|-----------------------|---------------|--------------------------------|
| `exp_2tanh` | 2·tanh(s/2)           | 1             | DenseFlow (every affine scale) |
| `sigmoid`   | log sigmoid(s + 2)    | sigmoid(2)    | Glow                           |
| `exp`       | s                     | 1             | RealNVP (unbounded)            |
| `exp_tanh`  | tanh(s)               | 1             | bounded variant                |
"""

from __future__ import annotations

import enum
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Scale", "ScaleName", "identity_at_zero", "log_scale", "resolve_scale"]

ScaleName = Literal["exp_2tanh", "sigmoid", "exp", "exp_tanh"]


class Scale(enum.IntEnum):
    """Integer codes of the scale functions (stable: they may end up in scripted modules)."""

    EXP_2TANH = 0
    SIGMOID = 1
    EXP = 2
    EXP_TANH = 3


_BY_NAME: dict[str, Scale] = {
    "exp_2tanh": Scale.EXP_2TANH,
    "sigmoid": Scale.SIGMOID,
    "exp": Scale.EXP,
    "exp_tanh": Scale.EXP_TANH,
}


def resolve_scale(name: str) -> Scale:
    """Map a spec name to its code; raises ValueError listing the known names."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown scale {name!r}; known: {', '.join(_BY_NAME)}") from None


def identity_at_zero(name: str) -> bool:
    """True when s = 0 gives σ = 1, so a zero-initialised conditioner starts at the identity."""
    return resolve_scale(name) != Scale.SIGMOID


def log_scale(s: Tensor, code: int) -> Tensor:
    r"""log σ(s) for the scale function `code` (a `Scale` value).

    Arguments:
        s: raw conditioner output, any shape.
        code: ``int(Scale.X)``, fixed at build time.

    Returns:
        log σ, same shape as `s`.
    """
    if code == 0:  # exp_2tanh: |log σ| < 2 keeps σ in (e^-2, e^2) (DenseFlow)
        return 2.0 * torch.tanh(0.5 * s)
    if code == 1:  # sigmoid: Glow's sigmoid(s + 2), σ in (0, 1), σ(0) ≈ 0.88
        return F.logsigmoid(s + 2.0)
    if code == 2:
        return s
    return torch.tanh(s)
