r"""`CompiledFlow`: the base class of every compiled model.

The compiler generates a subclass whose straight-line methods ``_forward_terms``, ``_inverse``
and ``_generate`` are Python source (see `flow.code`); this class adds the public API on top.
Everything decorated with ``@torch.jit.export`` scripts, compiles with ``fullgraph=True`` and
exports; the Python-only helpers (`initialize`, `draw_noise`, `freeze`) are for eager use.

Conventions: forward maps data x to the latent z (flat, ``[B, latent_dim]``, latents in the
order of the spec's `outputs`); ``logdet`` sums every node's log-det term, including the
stochastic ones (augmentation, dequantization), so ``log_prob = logdet + log prior(z)``.
For discrete data the dequantization term includes ``-D·bits·ln 2``, which makes `log_prob` a
bound on the log-probability of the integer data and `bits_per_dim` the usual measure.
"""

import io
import math
from collections.abc import Callable
from typing import Any, List, Optional, Tuple

import torch
from torch import Tensor, nn

__all__ = ["CompiledFlow", "rebuild_flow"]

def rebuild_flow(spec_text: str, state: "dict[str, Any]") -> "CompiledFlow":
    """Unpickle a `CompiledFlow`: recompile `spec_text`, load the weights, restore the mode.

    `state` holds ``weights`` (serialized state dict bytes), ``dtype``, ``device``,
    ``training``, ``frozen`` and ``requires_grad`` (see `CompiledFlow.__reduce__`).
    """
    from flowgraph.compile import compile_spec
    from flowgraph.spec.io import parse_spec

    spec, smap = parse_spec(spec_text, "<pickled flow spec>")
    flow = compile_spec(spec, smap=smap)
    flow.to(dtype=state["dtype"])
    weights = torch.load(io.BytesIO(state["weights"]), map_location="cpu", weights_only=True)
    flow.load_state_dict(weights)
    flow.to(device=state["device"])
    if state["frozen"]:
        flow.freeze()
    flow.train(state["training"])
    if not state["requires_grad"]:
        flow.requires_grad_(False)
    return flow


class CompiledFlow(nn.Module):
    """A flow compiled from a spec. Attribute names of submodules are the spec's node ids."""

    __jit_unused_properties__ = ["code"]  # noqa: RUF012 - TorchScript's opt-out list

    data_shape: List[int]
    latent_shapes: List[List[int]]
    data_dims: int
    latent_dim: int
    noise_dim: int
    bits: int

    def __init__(self) -> None:
        super().__init__()
        self.data_shape = []
        self.latent_shapes = []
        self.data_dims = 0
        self.latent_dim = 0
        self.noise_dim = 0
        self.bits = 0
        # follows .to(device/dtype); tells sample() and draw_noise() what to allocate
        self.register_buffer("_ref", torch.zeros(0), persistent=False)

    # -- the public, exportable API ---------------------------------------------------------
    def forward(self, x: Tensor, context: Optional[Tensor] = None, noise: Optional[Tensor] = None
                ) -> Tuple[Tensor, Tensor]:
        """x -> (z, logdet). `noise` ([B, noise_dim] standard normal) fixes stochastic nodes."""
        z, logdet, _ = self._forward_terms(x, context, noise)
        return z, logdet

    @torch.jit.export
    def log_prob_once(self, x: Tensor, context: Optional[Tensor] = None,
                      noise: Optional[Tensor] = None) -> Tensor:
        """Single-sample log-likelihood (exact for bijective graphs, else a lower bound)."""
        _, logdet, log_prior = self._forward_terms(x, context, noise)
        return logdet + log_prior

    @torch.jit.export
    def log_prob(self, x: Tensor, context: Optional[Tensor] = None, k: int = 1,
                 chunk: int = 0) -> Tensor:
        """log p(x): exact, or the importance-weighted bound over `k` noise samples.

        The bound is ``log mean_k exp(L_k)`` (not the mean of the L_k), evaluated `chunk`
        samples at a time (0: all at once) so that k = 1000 fits in memory.
        """
        if k <= 1 or self.noise_dim == 0:
            return self.log_prob_once(x, context, None)
        b = x.shape[0]
        step = k if chunk <= 0 else min(chunk, k)
        acc = torch.full([b], -math.inf, dtype=self._ref.dtype, device=x.device)
        done = 0
        while done < k:
            m = min(step, k - done)
            ctx: Optional[Tensor] = None
            if context is not None:
                ctx = context.repeat_interleave(m, 0)
            lw = self.log_prob_once(x.repeat_interleave(m, 0), ctx, None).view(b, m)
            acc = torch.logaddexp(acc, torch.logsumexp(lw, 1).to(acc.dtype))
            done += m
        return acc - math.log(k)

    @torch.jit.export
    def bits_per_dim(self, x: Tensor, context: Optional[Tensor] = None, k: int = 1,
                     chunk: int = 0) -> Tensor:
        """−log2 p(x) / D per sample, D = data dimensions (noise dimensions excluded)."""
        return -self.log_prob(x, context, k, chunk) / (self.data_dims * math.log(2.0))

    @torch.jit.export
    def inverse(self, z: Tensor, context: Optional[Tensor] = None) -> Tensor:
        """z -> x with every latent given (nothing is re-sampled)."""
        x, _ = self._inverse(z, context)
        return x

    @torch.jit.export
    def inverse_and_log_det(self, z: Tensor, context: Optional[Tensor] = None
                            ) -> Tuple[Tensor, Tensor]:
        return self._inverse(z, context)

    @torch.jit.export
    def sample_from_noise(self, eps: Tensor, context: Optional[Tensor] = None) -> Tensor:
        """Map standard-normal `eps` ([B, latent_dim]) through the priors and the inverse."""
        return self._generate(eps, context)

    @torch.jit.export
    def sample(self, n: int, temperature: float = 1.0, context: Optional[Tensor] = None
               ) -> Tensor:
        """n samples; `temperature` scales the standard-normal noise of every latent."""
        eps = torch.randn([n, self.latent_dim], dtype=self._ref.dtype, device=self._ref.device)
        return self._generate(eps * temperature, context)

    # -- eager-only helpers ------------------------------------------------------------------
    @torch.jit.unused
    def draw_noise(self, batch: int, generator: Optional[torch.Generator] = None,
                   dtype: Optional[torch.dtype] = None, device: Optional[torch.device] = None
                   ) -> Tensor:
        """Standard-normal noise for `forward`/`log_prob_once`, reproducible via `generator`."""
        return torch.randn(batch, self.noise_dim, generator=generator,
                           dtype=dtype or self._ref.dtype, device=device or self._ref.device)

    @torch.jit.unused
    def initialize(self, x: Tensor, context: Optional[Tensor] = None,
                   all_reduce: Optional[Callable[[Tensor], Tensor]] = None,
                   noise: Optional[Tensor] = None) -> None:
        """Data-dependent initialisation (ActNorm) from a batch, run once before training.

        Each module with a ``data_init`` method is initialised from its own input, in forward
        order, through forward pre-hooks; `forward` itself has no initialisation branch, so a
        loaded checkpoint is never re-initialised. `all_reduce` (sum across processes) makes
        every rank compute identical statistics under DDP; `noise` (as for `log_prob_once`;
        None: drawn from the global generator) lets it draw the same noise as one process.
        """
        hooks = []

        def hook(module: nn.Module, args: tuple) -> None:
            module.data_init(args[0], all_reduce)

        for m in self.modules():
            if hasattr(m, "data_init"):
                hooks.append(m.register_forward_pre_hook(hook))
        try:
            with torch.no_grad():
                self._forward_terms(x, context, noise)
        finally:
            for h in hooks:
                h.remove()

    @torch.jit.unused
    def latent_parts(self, z: Tensor) -> "dict[str, Tensor]":
        """Split a flat latent [B, latent_dim] into the spec's named latents, unflattened."""
        return {s.name: z[:, s.start:s.stop].reshape(z.shape[0], *s.shape)
                for s in self._layout.latents}

    @torch.jit.unused
    def is_initialized(self) -> bool:
        flags = [m.initialized for m in self.modules() if hasattr(m, "data_init")]
        return all(bool(f.item()) for f in flags)

    @torch.jit.unused
    def freeze(self) -> "CompiledFlow":
        """Cache inverse weights and constant log-dets in every op (for export)."""
        for m in self.modules():
            if m is not self and hasattr(m, "freeze"):
                m.freeze()
        return self

    def __reduce__(self) -> "tuple[Callable[..., CompiledFlow], tuple[str, dict[str, Any]]]":
        """Pickle and deep-copy as (spec text, weights), like torch.fx's ``GraphModule``.

        The generated class has no importable name, so the flow is rebuilt by `rebuild_flow`
        from `spec_text` and its state dict (stored as ``torch.save`` bytes and read back with
        ``weights_only=True``); dtype, device, train/eval mode and ``freeze()`` carry over.
        Attributes set by hand on the instance do not.
        """
        ref = next(self.parameters(), self._ref)
        buffer = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in self.state_dict().items()}, buffer)
        frozen = any(bool(getattr(m, "frozen", False)) for m in self.modules())
        requires_grad = any(p.requires_grad for p in self.parameters())
        return rebuild_flow, (self.spec_text, {
            "weights": buffer.getvalue(), "dtype": ref.dtype, "device": str(ref.device),
            "training": self.training, "frozen": frozen, "requires_grad": requires_grad})

    @property
    def code(self) -> str:
        """The generated source of the straight-line methods."""
        return type(self)._generated_source
