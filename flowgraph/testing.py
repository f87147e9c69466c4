r"""Contract assertions for op authors: run them on every op (the built-ins' tests do).

`check_op` / `check_prior_op` / `check_inline_op` take an `OpDef`, its params and static input
types, build the module, move it off its identity init with `perturb_`, and assert the runtime
contract of `flowgraph.ops.base`. Use float64 and small shapes: the log-det is checked against
a dense Jacobian. `check_flow_module` and `check_prior` do the runtime part on a given module.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from flowgraph.compile.codegen import Writer, register_source, release_source
from flowgraph.core.op import Example, ModuleRef, OpDef, Site, Var
from flowgraph.core.types import TensorType
from flowgraph.ops.actnorm import ActNorm
from flowgraph.ops.base import std_normal_log_prob

__all__ = ["check_example", "check_export", "check_flow_module", "check_inline_op", "check_op",
           "check_prior", "check_prior_op", "make_inputs", "per_sample_logabsdet", "perturb_"]


@torch.no_grad()
def perturb_(module: nn.Module, x: Tensor | None = None, *, scale: float = 0.05,
             seed: int = 0) -> nn.Module:
    """Move `module` away from its identity init, in place; returns it.

    ActNorm layers are data-initialised on `x` (when given, and when they are the module
    itself, since their input is only known then); every parameter then gets ``scale``-sized
    Gaussian noise *added*, which makes zero-initialised last layers nonzero while keeping an
    orthogonal 1×1 weight or LU factors well-conditioned; BatchNorm running statistics are
    jittered so eval mode is not the identity either. Uses a local generator.
    """
    g = torch.Generator().manual_seed(seed)
    if x is not None and isinstance(module, ActNorm):
        module.data_init(x)
    for p in module.parameters():
        p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device))
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            m.running_mean.add_(0.1 * torch.randn(m.running_mean.shape, generator=g,
                                                  dtype=m.running_mean.dtype))
            m.running_var.mul_(1 + 0.2 * torch.rand(m.running_var.shape, generator=g,
                                                    dtype=m.running_var.dtype))
    return module


def per_sample_logabsdet(fn: Callable[[list[Tensor]], Tensor], xs: Sequence[Tensor]) -> Tensor:
    """log|det ∂y_b/∂(x_b, ...)| for every sample b, from a dense float64-friendly Jacobian.

    `fn` maps batched variables to a batched output; samples must be independent (put
    BatchNorm in eval mode), which lets one Jacobian of the batch-summed output give every
    sample's block. The variables of one sample, flattened and concatenated, must have as many
    elements as its output.
    """
    def summed(*vs: Tensor) -> Tensor:
        return fn(list(vs)).sum(0)

    inputs = tuple(xs)
    try:
        jac = torch.autograd.functional.jacobian(summed, inputs, vectorize=True)
    except RuntimeError:  # some backward formulas have no batching rule
        jac = torch.autograd.functional.jacobian(summed, inputs)
    b = inputs[0].shape[0]
    dy = math.prod(jac[0].shape[: jac[0].dim() - inputs[0].dim()])
    blocks = [j.reshape(dy, b, -1).transpose(0, 1) for j in jac]
    full = torch.cat(blocks, 2)
    assert full.shape[1] == full.shape[2], f"Jacobian is not square: {tuple(full.shape[1:])}"
    # One matrix at a time: batched slogdet in this torch's MKL build is wrong for n >~ 150
    # with more than one thread (off by nats, with "DLASWP" errors printed).
    sign, logabsdet = torch.stack([torch.stack(torch.linalg.slogdet(m)) for m in full]).T
    assert bool((sign != 0).all()), "the map is singular at this point"
    return logabsdet


def _close(a: Tensor, b: Tensor, what: str, rtol: float, atol: float) -> None:
    if a.shape != b.shape or not torch.allclose(a, b, rtol=rtol, atol=atol):
        err = (a - b).abs().max().item() if a.shape == b.shape else float("nan")
        raise AssertionError(f"{what}: mismatch (shapes {tuple(a.shape)} vs {tuple(b.shape)}, "
                             f"max abs error {err:.3g})")


def check_flow_module(module: nn.Module, x: Tensor, cond: Sequence[Tensor] = (),
                      noise: Tensor | None = None, *, bijective: bool = True,
                      continuous_input: bool = True, fresh: Callable[[], nn.Module] | None = None,
                      rtol: float = 1e-6, atol: float = 1e-8, script: bool = True) -> None:
    """Assert the FlowModule contract at (x, cond, noise).

    Checks: ``inverse(forward(x)) == x``; log-det shape [B]; for bijective ops the inverse
    log-det is minus the forward one, else zero; the log-det against a dense Jacobian (for a
    stochastic op, of (x, noise) ↦ y, or noise ↦ y for discrete x, where the op's log-det plus
    log N(noise) must equal it); a gradient reaching every parameter; ``freeze()`` keeps the
    outputs; a state_dict round trip into ``fresh()``; TorchScript output == eager output.
    """
    cond = list(cond)
    y, ld = module(x, cond, noise)
    assert ld.shape == (x.shape[0],), f"log-det must have shape [B], got {tuple(ld.shape)}"
    assert bool(torch.isfinite(y).all() and torch.isfinite(ld).all()), "non-finite output"
    x_rec, ld_inv = module.inverse(y, cond)
    _close(x_rec, x.to(x_rec.dtype), "inverse(forward(x)) vs x", rtol, atol)
    _close(ld_inv, -ld if bijective else torch.zeros_like(ld), "inverse log-det", rtol, atol)

    # log-det vs the Jacobian, samples independent (eval mode).
    was_training = module.training
    module.eval()
    ld_eval = module(x, cond, noise)[1]
    variables = ([x] if continuous_input else []) + ([noise] if noise is not None else [])

    def fn(vs: list[Tensor]) -> Tensor:
        xv = vs[0] if continuous_input else x
        nv = vs[-1] if noise is not None else None
        return module(xv, cond, nv)[0].flatten(1)

    expected = ld_eval + (std_normal_log_prob(noise) if noise is not None else 0.0)
    _close(per_sample_logabsdet(fn, variables), expected, "log-det vs Jacobian", rtol, atol)
    module.train(was_training)

    # Every parameter receives a gradient.
    params = [(n, p) for n, p in module.named_parameters() if p.numel()]
    if params:
        module.zero_grad()
        y, ld = module(x, cond, noise)
        (y.square().sum() + ld.sum()).backward()
        for name, p in params:
            assert p.grad is not None and bool(p.grad.abs().sum() > 0), f"no gradient: {name}"
        module.zero_grad()

    with torch.no_grad():
        y, ld = module(x, cond, noise)
        frozen = copy.deepcopy(module)
        frozen.freeze()
        _close(frozen(x, cond, noise)[0], y, "frozen forward", rtol, atol)
        _close(frozen(x, cond, noise)[1], ld, "frozen log-det", rtol, atol)
        _close(frozen.inverse(y, cond)[0], module.inverse(y, cond)[0], "frozen inverse",
               rtol, atol)
        if fresh is not None:
            other = fresh().to(dtype=x.dtype if continuous_input else y.dtype)
            other.load_state_dict(module.state_dict())
            other.train(module.training)
            _close(other(x, cond, noise)[0], y, "state_dict round trip", rtol, atol)
            _close(other.inverse(y, cond)[0], module.inverse(y, cond)[0],
                   "state_dict round trip (inverse)", rtol, atol)
        if script:
            scripted = torch.jit.script(module)
            ys, lds = scripted(x, cond, noise)
            _close(ys, y, "scripted forward", rtol, atol)
            _close(lds, ld, "scripted log-det", rtol, atol)
            _close(scripted.inverse(y, cond)[0], module.inverse(y, cond)[0],
                   "scripted inverse", rtol, atol)


def check_prior(prior: nn.Module, z: Tensor, cond: Sequence[Tensor] = (), *,
                fresh: Callable[[], nn.Module] | None = None, rtol: float = 1e-6,
                atol: float = 1e-8, script: bool = True) -> None:
    """Assert the Prior contract: standardize/sample are inverse maps, log_prob equals
    log N(standardize(z)) + log|det ∂standardize/∂z|, gradients, state_dict, TorchScript."""
    cond = list(cond)
    lp = prior.log_prob(z, cond)
    assert lp.shape == (z.shape[0],), f"log_prob must have shape [B], got {tuple(lp.shape)}"
    eps = prior.standardize(z, cond)
    _close(prior.sample(eps, cond), z, "sample(standardize(z)) vs z", rtol, atol)
    prior.eval()
    expected = std_normal_log_prob(prior.standardize(z, cond)) + per_sample_logabsdet(
        lambda vs: prior.standardize(vs[0], cond).flatten(1), [z])
    _close(prior.log_prob(z, cond), expected, "log_prob vs change of variables", rtol, atol)
    prior.train()
    if any(True for _ in prior.parameters()):
        prior.zero_grad()
        prior.log_prob(z, cond).sum().backward()
        for name, p in prior.named_parameters():
            assert p.grad is not None and bool(p.grad.abs().sum() > 0), f"no gradient: {name}"
    with torch.no_grad():
        lp = prior.log_prob(z, cond)
        if fresh is not None:
            other = fresh().to(dtype=z.dtype)
            other.load_state_dict(prior.state_dict())
            _close(other.log_prob(z, cond), lp, "state_dict round trip", rtol, atol)
        if script:
            s = torch.jit.script(prior)
            _close(s.log_prob(z, cond), lp, "scripted log_prob", rtol, atol)
            _close(s.sample(eps, cond), prior.sample(eps, cond), "scripted sample", rtol, atol)
            _close(s.standardize(z, cond), eps, "scripted standardize", rtol, atol)


class _Inverse(nn.Module):
    """Exposes a flow module's inverse as `forward`, for torch.export."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, y: Tensor, cond: list[Tensor]) -> tuple[Tensor, Tensor]:
        return self.module.inverse(y, cond)


def check_export(module: nn.Module, x: Tensor, cond: Sequence[Tensor] = (),
                 noise: Tensor | None = None, *, rtol: float = 1e-6, atol: float = 1e-8) -> None:
    """`torch.export` forward and inverse of a frozen copy with a dynamic batch; the exported
    programs must match eager, also at another batch size, and hold no linear algebra."""
    module = copy.deepcopy(module).eval()
    module.freeze()
    cond = list(cond)
    batch = torch.export.Dim("batch", min=2, max=1024)
    y, _ = module(x, cond, noise)
    specs = ({0: batch}, [{0: batch} for _ in cond], None if noise is None else {0: batch})
    fwd = torch.export.export(module, (x, cond, noise), dynamic_shapes=specs)
    inv = torch.export.export(_Inverse(module), (y, cond), dynamic_shapes=specs[:2])
    for program in (fwd, inv):
        targets = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
        assert not [t for t in targets if "linalg" in t], f"linear algebra after freeze: {targets}"
    n = x.shape[0] + 1  # a batch size the export did not see
    xs, cs = x.repeat_interleave(2, 0)[:n], [c.repeat_interleave(2, 0)[:n] for c in cond]
    ns = None if noise is None else noise.repeat_interleave(2, 0)[:n]
    ye, lde = fwd.module()(xs, cs, ns)
    yr, ldr = module(xs, cs, ns)
    _close(ye, yr, "exported forward", rtol, atol)
    _close(lde, ldr, "exported log-det", rtol, atol)
    _close(inv.module()(yr, cs)[0], module.inverse(yr, cs)[0], "exported inverse", rtol, atol)


def make_inputs(types: Sequence[TensorType], batch: int, dtype: torch.dtype,
                generator: torch.Generator) -> list[Tensor]:
    """A batch per type: integers in [0, 2^bits) for discrete types, N(0, 1) otherwise."""
    out = []
    for t in types:
        shape = (batch, *t.shape)
        if t.bits is not None:
            out.append(torch.randint(0, 2**t.bits, shape, generator=generator).to(dtype))
        else:
            out.append(torch.randn(shape, generator=generator, dtype=dtype))
    return out


def check_op(op: OpDef, params: Mapping[str, Any], inputs: Sequence[TensorType],
             conds: Sequence[TensorType] = (), *, x: Tensor | None = None, batch: int = 3,
             dtype: torch.dtype = torch.float64, seed: int = 0, **kw: Any) -> nn.Module:
    """Static and runtime contract of a one-input module op; returns the perturbed module.

    Static: `infer` matches the built module's output shape, `noise_shape` its noise, and
    `param_count` its parameter count. `x` overrides the generated input (for ops with a
    restricted domain, e.g. logit). Extra keywords go to `check_flow_module`.
    """
    p = op.parse(params)
    inputs, conds = list(inputs), list(conds)
    out_types = op.infer(p, inputs, conds)
    g = torch.Generator().manual_seed(seed)
    if x is None:
        (x,) = make_inputs(inputs, batch, dtype, g)
    cond = make_inputs(conds, x.shape[0], dtype, g)
    noise = None
    if op.stochastic:
        shape = op.noise_shape(p, inputs)
        assert shape is not None, "a stochastic op must declare noise_shape"
        noise = torch.randn((x.shape[0], *shape), generator=g, dtype=dtype).clamp(-3, 3)

    def fresh() -> nn.Module:
        with torch.random.fork_rng():  # the same weights whatever ran before
            torch.manual_seed(seed)
            m = op.build(p, inputs, conds)
        assert m is not None, f"{op.name} built no module"
        return m

    module = perturb_(fresh().to(dtype), x, seed=seed)
    n_params = sum(t.numel() for t in module.parameters())
    assert op.param_count(p, inputs, conds) == n_params, (
        f"param_count {op.param_count(p, inputs, conds)} != built {n_params}")
    y, _ = module(x, cond, noise)
    (out_type,) = out_types.values()
    assert tuple(y.shape[1:]) == out_type.shape, f"infer {out_type.shape} vs {tuple(y.shape)}"
    check_flow_module(module, x, cond, noise, bijective=op.bijective,
                      continuous_input=inputs[0].bits is None, fresh=fresh, **kw)
    return module


def check_prior_op(op: OpDef, params: Mapping[str, Any], inputs: Sequence[TensorType],
                   conds: Sequence[TensorType] = (), *, batch: int = 3,
                   dtype: torch.dtype = torch.float64, seed: int = 0, **kw: Any) -> nn.Module:
    """Static and runtime contract of a prior op; returns the perturbed prior."""
    p = op.parse(params)
    inputs, conds = list(inputs), list(conds)
    assert op.is_prior and op.infer(p, inputs, conds) == {}, "a prior has no outputs"
    g = torch.Generator().manual_seed(seed)
    (z,) = make_inputs(inputs, batch, dtype, g)
    cond = make_inputs(conds, batch, dtype, g)

    def fresh() -> nn.Module:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return op.build(p, inputs, conds)

    prior = perturb_(fresh().to(dtype), seed=seed)
    assert op.param_count(p, inputs, conds) == sum(t.numel() for t in prior.parameters())
    check_prior(prior, z, cond, fresh=fresh, **kw)
    return prior


def check_inline_op(op: OpDef, params: Mapping[str, Any], inputs: Sequence[TensorType], *,
                    batch: int = 3, dtype: torch.dtype = torch.float64, seed: int = 0) -> None:
    """Compile an inline op's emitted forward and inverse code with TorchScript and check the
    output types and the exact round trip (inline ops only rearrange, log-det 0)."""
    p = op.parse(params)
    inputs = list(inputs)
    out_types = op.infer(p, inputs, [])
    ins = tuple(Var(f"i{k}") for k in range(len(inputs)))
    outs = tuple(Var(f"o{k}") for k in range(len(out_types)))
    kw = {"params": p, "in_types": tuple(inputs), "out_types": tuple(out_types.values())}
    namespace: dict[str, Any] = {}
    fwd, inv = Writer(namespace), Writer(namespace)
    op.emit_forward(fwd, Site("x", ModuleRef("x"), ins, outs, **kw))
    op.emit_inverse(inv, Site("x", ModuleRef("x"), outs, ins, **kw))
    assert not any("self." in line or "_ld" in line for line in fwd.lines + inv.lines), (
        "an inline op has no module and no log-det")
    fwd, inv = fwd.lines, inv.lines
    ins = tuple(v.name for v in ins)
    outs = tuple(v.name for v in outs)
    src = (f"def fwd({', '.join(ins)}):\n" + "".join(f"    {line}\n" for line in fwd)
           + f"    return ({', '.join(outs)},)\n"
           + f"def inv({', '.join(outs)}):\n" + "".join(f"    {line}\n" for line in inv)
           + f"    return ({', '.join(ins)},)\n")
    eager: dict[str, Any] = {"torch": torch, "__name__": "flowgraph_inline", **namespace}
    filename = register_source(src, f"inline-{op.name}")
    exec(compile(src, filename, "exec"), eager)  # noqa: S102 - text generated just above
    scripted_fwd, scripted_inv = torch.jit.script(eager["fwd"]), torch.jit.script(eager["inv"])
    release_source(filename)
    xs = make_inputs(inputs, batch, dtype, torch.Generator().manual_seed(seed))
    ys = scripted_fwd(*xs)
    assert len(ys) == len(out_types)
    for y, (port, t) in zip(ys, out_types.items(), strict=True):
        assert tuple(y.shape[1:]) == t.shape, f"port {port}: infer {t.shape} vs {y.shape}"
    for a, b in zip(ys, eager["fwd"](*xs), strict=True):
        assert torch.equal(a, b), "scripted and eager forward differ"
    for a, b in zip(scripted_inv(*ys), xs, strict=True):
        assert torch.equal(a, b), "inverse(forward(x)) != x"


def check_example(op: OpDef, example: Example, **kw: Any) -> None:
    """Run the contract that fits `op` (module, prior or inline) on one of its examples."""
    params, inputs, conds = example.params, list(example.inputs), list(example.conds)
    if op.is_prior:
        check_prior_op(op, params, inputs, conds, **kw)
    elif type(op).build is OpDef.build:
        check_inline_op(op, params, inputs, **kw)
    else:
        x = None
        if example.domain is not None:
            lo, hi = example.domain
            g = torch.Generator().manual_seed(kw.get("seed", 0))
            x = lo + (hi - lo) * torch.rand((3, *inputs[0].shape), generator=g,
                                            dtype=torch.float64)
        check_op(op, params, inputs, conds, x=x, **kw)
