r"""`conv1x1`: invertible 1×1 convolution (Glow), plain (DenseFlow official) or LU-parameterised.

On images [C, H, W] it mixes channels at every pixel; on vectors [D] it is an invertible D×D
linear map. Both parameterisations hold exactly C² parameters.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowgraph.core.op import Example, OpDef
from flowgraph.core.types import OpParams, TensorType
from flowgraph.errors import ShapeError
from flowgraph.ops.base import FlowModule, building_on_meta

__all__ = ["Conv1x1Params", "LUConv1x1", "PlainConv1x1"]


class Conv1x1Params(OpParams):
    """`plain`: unconstrained W (DenseFlow's code); `lu`: W = P·L·(U + diag(sign·exp(log_s)))."""

    parameterization: Literal["plain", "lu"] = "plain"


class _Conv1x1(FlowModule):
    """Shared apply / freeze logic; subclasses give the weight, its inverse and log|det W|.

    `freeze()` caches W, W⁻¹ and log|det W| as non-persistent buffers and sets ``frozen``;
    from then on forward and inverse use only the caches, so an exported graph holds no
    linear algebra (slogdet, inv, solve_triangular have no ONNX lowering). Freeze after
    training: the caches do not follow later parameter updates (`freeze()` again refreshes
    them).

    `absorb_inverse_affine` folds the per-channel affine map that follows this inverse (the
    inverse of the ActNorm before this conv, see `CompiledFlow.freeze`) into the frozen
    inverse: x = (diag(scale)·W⁻¹)·y + shift, one convolution with a bias, and its log-det.
    """

    def __init__(self, channels: int, image: bool, spatial: int):
        super().__init__()
        self.channels = channels
        self.image = image
        self.spatial = spatial
        self.frozen = False
        self.register_buffer("w_frozen", torch.zeros(channels, channels), persistent=False)
        self.register_buffer("w_inv_frozen", torch.zeros(channels, channels), persistent=False)
        self.register_buffer("logdet_frozen", torch.zeros(()), persistent=False)
        self.absorbed = False
        self.register_buffer("absorbed_scale", torch.ones(channels), persistent=False)
        self.register_buffer("absorbed_shift", torch.zeros(channels), persistent=False)
        self.register_buffer("absorbed_logdet", torch.zeros(()), persistent=False)

    def weight_and_logdet(self) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def inverse_weight(self) -> Tensor:
        raise NotImplementedError

    def _apply_weight(self, x: Tensor, w: Tensor, bias: Tensor | None = None) -> Tensor:
        if self.image:
            return F.conv2d(x, w.view(self.channels, self.channels, 1, 1), bias)
        return F.linear(x, w, bias)

    def forward(self, x: Tensor, cond: list[Tensor], noise: Tensor | None
                ) -> tuple[Tensor, Tensor]:
        if self.frozen:
            w, logdet = self.w_frozen, self.logdet_frozen
        else:
            w, logdet = self.weight_and_logdet()
        return self._apply_weight(x, w), x.new_zeros(x.shape[0]) + self.spatial * logdet

    @torch.jit.export
    def inverse(self, y: Tensor, cond: list[Tensor]) -> tuple[Tensor, Tensor]:
        if self.frozen:
            ld = y.new_zeros(y.shape[0]) - self.spatial * self.logdet_frozen
            if self.absorbed:
                return (self._apply_weight(y, self.w_inv_frozen, self.absorbed_shift),
                        ld + self.absorbed_logdet)
            return self._apply_weight(y, self.w_inv_frozen), ld
        w_inv, logdet = self.inverse_weight(), self.weight_and_logdet()[1]
        return self._apply_weight(y, w_inv), y.new_zeros(y.shape[0]) - self.spatial * logdet

    def freeze(self) -> None:
        with torch.no_grad():
            w, logdet = self.weight_and_logdet()
            w_inv = self.inverse_weight()
            if self.absorbed:  # row i of W⁻¹ feeds output channel i, scaled by scale_i
                w_inv = self.absorbed_scale.to(w_inv.dtype).unsqueeze(1) * w_inv
            self.w_frozen = w.detach().clone()
            self.w_inv_frozen = w_inv.detach().clone()
            self.logdet_frozen = logdet.detach().clone()
        self.frozen = True

    def absorb_inverse_affine(self, scale: Tensor, shift: Tensor, logdet: Tensor) -> None:
        """Freeze with x = scale·v + shift (per channel, log-det `logdet`) applied after the
        inverse v = W⁻¹·y, folded into one frozen convolution. `unfold` undoes it."""
        with torch.no_grad():
            self.absorbed_scale = scale.detach().clone()
            self.absorbed_shift = shift.detach().clone()
            self.absorbed_logdet = logdet.detach().clone()
        self.absorbed = True
        self.freeze()

    def unfold(self) -> None:
        """Forget an absorbed affine (a frozen conv then refreshes its plain caches)."""
        if self.absorbed:
            self.absorbed = False
            if self.frozen:
                self.freeze()


class PlainConv1x1(_Conv1x1):
    r"""z = W·x per pixel, W unconstrained (orthogonal init from the global RNG).

    log|det| = H·W·log|det W| (slogdet); inverse x = W⁻¹·z with W⁻¹ from `torch.linalg.inv`,
    computed once per call.
    """

    def __init__(self, channels: int, image: bool, spatial: int):
        super().__init__(channels, image, spatial)
        self.weight = nn.Parameter(nn.init.orthogonal_(torch.empty(channels, channels)))

    def weight_and_logdet(self) -> tuple[Tensor, Tensor]:
        return self.weight, torch.linalg.slogdet(self.weight)[1]

    def inverse_weight(self) -> Tensor:
        return torch.linalg.inv(self.weight)


class LUConv1x1(_Conv1x1):
    r"""W = P·L·(U + diag(sign·exp(log_s))), Glow's LU form (Kingma & Dhariwal 2018, §3.2).

    P (permutation) and sign are fixed buffers from the LU factors of an orthogonal init; the
    strictly-lower entries of L, the strictly-upper entries of U and log|s| are trained as
    compact vectors (C(C−1)/2 + C(C−1)/2 + C = C² parameters). L and U are rebuilt by an
    ``index_select`` from constant index buffers (0 picks a padded zero), and the diagonal by
    ``eye * v``: no masked_scatter and no ``torch.diag``, which legacy ONNX cannot export.

    log|det| = H·W·Σ log|s| (no slogdet); the inverse W⁻¹ = U⁻¹·L⁻¹·Pᵀ uses two triangular
    solves, once per call.
    """

    def __init__(self, channels: int, image: bool, spatial: int):
        super().__init__(channels, image, spatial)
        c = channels
        li, ui = torch.tril_indices(c, c, -1), torch.triu_indices(c, c, 1)
        if building_on_meta():  # parameters of the right shapes; no factorisation
            n = c * (c - 1) // 2
            self.lower, self.upper = nn.Parameter(torch.empty(n)), nn.Parameter(torch.empty(n))
            self.log_s = nn.Parameter(torch.empty(c))
            return
        w0 = nn.init.orthogonal_(torch.empty(c, c))
        p, lower, upper = torch.linalg.lu(w0)
        s = torch.diagonal(upper)
        self.register_buffer("perm", p)
        self.register_buffer("sign", torch.sign(s))
        self.lower = nn.Parameter(lower[li[0], li[1]].clone())
        self.upper = nn.Parameter(upper[ui[0], ui[1]].clone())
        self.log_s = nn.Parameter(torch.log(s.abs()))
        # Constant gather tables: flat position i*C + j -> 1 + index into the compact vector.
        self.register_buffer("lower_index", self._table(c, li), persistent=False)
        self.register_buffer("upper_index", self._table(c, ui), persistent=False)
        self.register_buffer("eye", torch.eye(c), persistent=False)

    @staticmethod
    def _table(c: int, idx: Tensor) -> Tensor:
        table = torch.zeros(c * c, dtype=torch.long)
        table[idx[0] * c + idx[1]] = torch.arange(1, idx.shape[1] + 1)
        return table

    def _gather(self, v: Tensor, table: Tensor) -> Tensor:
        padded = torch.cat([v.new_zeros(1), v])
        return padded.index_select(0, table).view(self.channels, self.channels)

    def factors(self) -> tuple[Tensor, Tensor]:
        lower = self._gather(self.lower, self.lower_index) + self.eye
        upper = self._gather(self.upper, self.upper_index) + self.eye * (
            self.sign * torch.exp(self.log_s))
        return lower, upper

    def weight_and_logdet(self) -> tuple[Tensor, Tensor]:
        lower, upper = self.factors()
        return self.perm @ lower @ upper, self.log_s.sum()

    def inverse_weight(self) -> Tensor:
        lower, upper = self.factors()
        inv_l = torch.linalg.solve_triangular(lower, self.eye, upper=False, unitriangular=True)
        inv_u = torch.linalg.solve_triangular(upper, self.eye, upper=True)
        return inv_u @ inv_l @ self.perm.t()


class _Conv1x1Op(OpDef):
    name = "conv1x1"
    Params = Conv1x1Params
    summary = "invertible 1x1 convolution (plain W or LU), a D×D linear map on vectors"
    examples = (
        Example({}, (TensorType((3, 4, 4)),)),
        Example({"parameterization": "lu"}, (TensorType((3, 4, 4)),)),
        Example({"parameterization": "lu"}, (TensorType((4, 4, 4)),)),
        Example({}, (TensorType((5,)),)),
        Example({"parameterization": "lu"}, (TensorType((5,)),)),
    )

    def infer(self, p: Any, inputs: list[TensorType], conds: list[TensorType]
              ) -> dict[str, TensorType]:
        (x,) = inputs
        self.require_continuous(x, self.name)
        if len(x.shape) not in (1, 3):
            raise ShapeError("conv1x1 needs an image [C, H, W] or a vector [D]",
                             found=f"shape {list(x.shape)}")
        return {"out": TensorType(x.shape)}

    def build(self, p: Any, inputs: list[TensorType], conds: list[TensorType]) -> nn.Module:
        x = inputs[0]
        cls = LUConv1x1 if p.parameterization == "lu" else PlainConv1x1
        return cls(x.shape[0], x.is_image, x.numel // x.shape[0])


