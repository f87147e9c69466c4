r"""`CompiledFlow`: the base class of every compiled model.

The compiler generates a subclass whose straight-line methods ``_forward_terms``, ``_inverse``
and ``_generate`` are Python source (see `flow.code`); this class adds the public API on top.
Everything decorated with ``@torch.jit.export`` scripts, compiles with ``fullgraph=True`` and
exports; the Python-only helpers (`initialize`, `draw_noise`, `freeze`) are for eager use.

Precision: the flow runs in the dtype of its parameters whatever autocast it is called under
(its entry points switch a caller's autocast off); `set_conditioner_dtype(torch.bfloat16)` runs
the conditioner networks, and only those, in bfloat16 (see `flowgraph.ops.coupling.Conditioned`).

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


@torch.jit.unused
def _autocast_on(t: Tensor) -> bool:
    return torch.is_autocast_enabled(t.device.type)


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


class _RestorePrecision:
    """What `CompiledFlow.set_conditioner_dtype` / `set_conditioner_recompute` return: a
    context manager whose exit puts the previous setting back."""

    def __init__(self, previous: "list[tuple[nn.Module, Any]]",
                 attribute: str = "conditioner_dtype") -> None:
        self.previous, self.attribute = previous, attribute

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        for m, value in self.previous:
            setattr(m, self.attribute, value)


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
        z, logdet, _ = self._terms(x, context, noise)
        return z, logdet

    @torch.jit.export
    def log_prob_once(self, x: Tensor, context: Optional[Tensor] = None,
                      noise: Optional[Tensor] = None) -> Tensor:
        """Single-sample log-likelihood (exact for bijective graphs, else a lower bound)."""
        _, logdet, log_prior = self._terms(x, context, noise)
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
        x, _ = self.inverse_and_log_det(z, context)
        return x

    @torch.jit.export
    def inverse_and_log_det(self, z: Tensor, context: Optional[Tensor] = None
                            ) -> Tuple[Tensor, Tensor]:
        if torch.jit.is_scripting() or not _autocast_on(z):
            return self._inverse(z, context)
        return self._inverse_no_autocast(z, context)

    @torch.jit.export
    def sample_from_noise(self, eps: Tensor, context: Optional[Tensor] = None) -> Tensor:
        """Map standard-normal `eps` ([B, latent_dim]) through the priors and the inverse."""
        if torch.jit.is_scripting() or not _autocast_on(eps):
            return self._generate(eps, context)
        return self._generate_no_autocast(eps, context)

    @torch.jit.export
    def sample(self, n: int, temperature: float = 1.0, context: Optional[Tensor] = None
               ) -> Tensor:
        """n samples; `temperature` scales the standard-normal noise of every latent."""
        eps = torch.randn([n, self.latent_dim], dtype=self._ref.dtype, device=self._ref.device)
        return self.sample_from_noise(eps * temperature, context)

    # -- the caller's autocast stops at the entry points (eager and torch.compile) -----------
    def _terms(self, x: Tensor, context: Optional[Tensor], noise: Optional[Tensor]
               ) -> Tuple[Tensor, Tensor, Tensor]:
        if torch.jit.is_scripting() or not _autocast_on(x):
            return self._forward_terms(x, context, noise)
        return self._forward_terms_no_autocast(x, context, noise)

    @torch.jit.unused
    def _forward_terms_no_autocast(self, x: Tensor, context: Optional[Tensor],
                                   noise: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
        with torch.autocast(x.device.type, enabled=False):
            return self._forward_terms(x, context, noise)

    @torch.jit.unused
    def _inverse_no_autocast(self, z: Tensor, context: Optional[Tensor]
                             ) -> Tuple[Tensor, Tensor]:
        with torch.autocast(z.device.type, enabled=False):
            return self._inverse(z, context)

    @torch.jit.unused
    def _generate_no_autocast(self, eps: Tensor, context: Optional[Tensor]) -> Tensor:
        with torch.autocast(eps.device.type, enabled=False):
            return self._generate(eps, context)

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
                self._terms(x, context, noise)
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
    def set_conditioner_dtype(self, dtype: Optional[torch.dtype]) -> "_RestorePrecision":
        """Run the conditioner networks under autocast to `dtype` (``torch.bfloat16`` or
        ``torch.float16``), or in the flow's dtype (None, the default).

        Applies at once; like ``torch.set_grad_enabled`` it also works as a context manager
        that restores the previous setting on exit. Only the networks run in `dtype`: their
        outputs come back in the flow's dtype, and the data path (1×1 convs, ActNorm, the
        coupling maps), log-dets, priors and dequantization stay in it, so each coupling
        inverts its forward exactly and the log-likelihood is not rounded to bf16 (through a
        deep flow, though, the fp32 rounding of a reconstructed input can flip a bf16 rounding
        inside a net: the inverse of the whole flow is then accurate to about 1e-3, not 1e-7).
        The Nyström pseudo-inverse stays float32. A setting of the running flow: TorchScript
        ignores it, and copies and pickles start from None.
        """
        if dtype not in (None, torch.bfloat16, torch.float16):
            raise ValueError("set_conditioner_dtype takes torch.bfloat16, torch.float16 or None"
                             f". Got {dtype!r}.")
        previous = []
        for m in self.modules():
            if hasattr(m, "conditioner_dtype"):
                previous.append((m, m.conditioner_dtype))
                m.conditioner_dtype = dtype
        return _RestorePrecision(previous)

    @torch.jit.unused
    def set_conditioner_recompute(self, enabled: bool) -> "_RestorePrecision":
        """Memory-saving training: keep only each conditioner network's input and recompute
        its activations in the backward pass (gradients equal the default's to rounding).

        Applies at once and, as a context manager, restores the previous setting on exit."""
        previous = []
        for m in self.modules():
            if hasattr(m, "recompute") and hasattr(m, "conditioner_dtype"):
                previous.append((m, m.recompute))
                m.recompute = bool(enabled)
        return _RestorePrecision(previous, "recompute")

    @torch.jit.unused
    def freeze(self) -> "CompiledFlow":
        """Cache inverse weights and constant log-dets in every op (for export and sampling),
        and fold each ActNorm into the 1×1 conv it feeds when nothing else reads its output:
        the frozen inverse then runs one convolution with a bias for the pair.

        The caches are taken from the current parameters and do not follow later updates;
        calling `freeze` again refreshes them (folds included).
        """
        for m in self.modules():
            if hasattr(m, "unfold"):
                m.unfold()
        for m in self.modules():
            if m is not self and hasattr(m, "freeze"):
                m.freeze()
        for producer, consumer in self._fold_pairs():
            consumer.absorb_inverse_affine(*producer.fold())
        return self

    def _fold_pairs(self) -> "list[tuple[nn.Module, nn.Module]]":
        """(ActNorm-like, conv-like) module pairs where the first one's only reader is the
        second one's data input: ops that offer ``fold`` and ``absorb_inverse_affine``."""
        analysis = getattr(self, "_analysis", None)
        if analysis is None:
            return []
        g, modules = analysis.graph, dict(self.named_modules())
        pairs = []
        for node in g.ops():
            consumer = modules.get(node.id)
            if not hasattr(consumer, "absorb_inverse_affine"):
                continue
            (src, port), *rest = g.data_inputs(node.id)
            producer = modules.get(src)
            if (not rest and hasattr(producer, "fold") and g.consumers(src, port) == [node.id]
                    and not g.consumers(src, port, "condition")):
                pairs.append((producer, consumer))
        return pairs

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
