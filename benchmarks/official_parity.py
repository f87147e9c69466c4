#!/usr/bin/env python3
r"""Side by side: the DenseFlow authors' model and its `flowgraph import official` copy.

    python benchmarks/official_parity.py /path/to/DenseFlow-checkout [--sizes 32 64] [--batch 4]

Not part of the test suite: it needs a checkout of github.com/matejgrcic/DenseFlow (GPL-2.0),
whose model is imported from that path at run time; nothing of it is copied here.

For each image size it builds the authors' DenseFlow-74-10, gives every parameter and buffer
random values (eval mode; ActNorm marked initialised; BatchNorm running statistics random),
saves it in the authors' checkpoint format, imports that file with `flowgraph import official`
(``--dequant-clamp none``; the default ``margin`` clamp is then switched on in place for
comparison), then on one batch of random 8-bit images:

- bits/dim per image with the same noise (the dequantization ε and every cross-unit η are
  fed to both models), max |Δ| (target ≤ 1e-5 in fp32);
- the fraction of dequantization noise u outside [2⁻¹⁰, 1 − 2⁻¹⁰] (what the default clamp
  changes) and the bits/dim difference that clamp makes (``--deq-log-std-offset 3.5`` widens
  q(u|x)'s base so that most of u saturates);
- samples from the same latents (the last latent's ε and both dropped halves): the 8-bit
  images must be identical except where the continuous value lies within 1e-3 of a bin edge.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "specs" / "denseflow-74-10.yaml"


def _official_imports(repo: Path):
    for p in (repo / "experiments" / "image", repo):
        if str(p) not in sys.path:
            sys.path.insert(0, str(p))
    if "torchvision" not in sys.modules:  # only the data loaders need it; the model does not
        try:
            import torchvision  # noqa: F401
        except ImportError:
            import types
            sys.modules["torchvision"] = types.ModuleType("torchvision")
    from model.model_flow import get_model  # the authors' factory
    return get_model


def build_official(repo: Path, size: int):
    get_model = _official_imports(repo)
    args = argparse.Namespace(block_conf=[6, 4, 1], layers_conf=[5, 6, 20],
                              layer_mid_chnls=[48, 48, 48], growth_rate=10,
                              checkpointing=False, num_classes=10)
    return get_model(args, data_shape=(3, size, size))


def randomize(model: torch.nn.Module, x_init: torch.Tensor, seed: int, scale: float) -> None:
    """Data-dependent ActNorm init (one train-mode forward, as the authors' training starts),
    then random offsets on every parameter and BatchNorm statistic, so that no tensor keeps
    its (often zero) initial value and a wrongly mapped tensor shows in the likelihood."""
    model.train()
    with torch.no_grad():
        model.log_prob(x_init.long())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.add_(scale * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.mul_(1.0 + scale * torch.rand(b.shape, generator=g))
    model.eval()


class _Feed:
    """Stands in for a standard normal: `sample` returns the given tensors in order."""

    def __init__(self, tensors):
        self.tensors = list(tensors)
        self.normal = torch.distributions.Normal(0.0, 1.0)

    def sample(self, shape):
        t = self.tensors.pop(0)
        assert tuple(t.shape) == tuple(shape), (t.shape, shape)
        return t

    def log_prob(self, x):
        return self.normal.log_prob(x)


def official_blocks(model):
    return [t for t in model.transforms if hasattr(t, "noise_params")]


def official_bpd(model, x, deq_eps, etas_per_block):
    """Bits/dim per image with the dequantization ε and the cross-unit η fixed."""
    base = model.transforms[0].encoder.base_dist
    base.sample = lambda n: base.loc + base.log_scale.exp() * deq_eps
    for block, etas in zip(official_blocks(model), etas_per_block, strict=True):
        block.noise_dist = _Feed(etas)
    try:
        lp = model.log_prob(x.long())
    finally:
        del base.sample
    return -lp.double() / (x[0].numel() * math.log(2.0))


def official_inverse(model, z_last, dropped):
    """The continuous output y ∈ [0, 1] of the authors' inverse, from given latents."""
    z = model.base_dist.loc + model.base_dist.log_scale.exp() * z_last
    trans = [t for t in model.transforms if hasattr(t, "dist") and hasattr(t, "squeeze")]
    for t, d in zip(trans, dropped, strict=True):
        t.dist.sample = _Feed([d]).sample
    for t in reversed(list(model.transforms)[1:]):
        z = t.inverse(z)
    return z


def compare(repo: Path, size: int, batch: int, seed: int, scale: float, tmp: Path,
            deq_log_std_offset: float = 0.0) -> dict:
    from flowgraph.interop import import_official

    t_start = time.perf_counter()
    torch.manual_seed(seed)
    official = build_official(repo, size)
    g = torch.Generator().manual_seed(seed + 1)
    x_init = torch.randint(0, 256, (2 * batch, 3, size, size), generator=g, dtype=torch.uint8)
    randomize(official, x_init, seed, scale)
    with torch.no_grad():  # a wider q(u|x) base makes u saturate (to measure the clamp)
        official.transforms[0].encoder.base_dist.log_scale.add_(deq_log_std_offset)
    ckpt = tmp / f"official-{size}.pt"
    torch.save({"current_epoch": 0, "model": official.state_dict()}, ckpt)
    over = {"size": size}
    t0 = time.perf_counter()
    flow_none, report = import_official(ckpt, SPEC, None, overrides=over,
                                        dequant_clamp="none")
    import_s = time.perf_counter() - t0
    ckpt.unlink()
    flow_none.eval()

    x = torch.randint(0, 256, (batch, 3, size, size), generator=g, dtype=torch.uint8)
    noise = flow_none.draw_noise(batch, generator=g)
    slots = {s.name: s for s in flow_none._layout.noise}

    def piece(name):
        s = slots[name]
        return noise[:, s.start:s.stop].reshape(batch, *s.shape)

    deq_eps = piece("deq")
    etas = []
    for b, units in ((1, 6), (2, 4), (3, 1)):
        etas.append([piece(f"block{b}.u{u}.aug") for u in range(1, units)])

    with torch.no_grad():
        bpd_off = official_bpd(official, x, deq_eps, etas)
        lp_none = flow_none.log_prob_once(x, None, noise).double()
        deq = flow_none.deq  # the default clamp, on the same weights
        deq.u_min, deq.u_max = 2.0 ** -10, 1.0 - 2.0 ** -10
        lp_margin = flow_none.log_prob_once(x, None, noise).double()
        deq.u_min, deq.u_max = 0.0, 1.0
        d = x[0].numel() * math.log(2.0)
        bpd_none, bpd_margin = -lp_none / d, -lp_margin / d
        # saturation of u (what the default clamp changes)
        u, _ = flow_none.deq.log_q_and_u(x, deq_eps)
        eps_c = 2.0 ** -10
        saturated = float(((u < eps_c) | (u > 1 - eps_c)).float().mean())

        # sampling from the same latents: flowgraph z = [z1, z2, z] standard-normal noise
        shapes = [tuple(s) for s in flow_none.latent_shapes]
        lat = [torch.randn((batch, *s), generator=g) for s in shapes]
        eps = torch.cat([t.flatten(1) for t in lat], 1)
        img_fg = flow_none.sample_from_noise(eps).long()
        y = official_inverse(official, lat[2], lat[:2])
        v = y.double() * 256
        img_off = v.floor().clamp(0, 255).long()
        near_edge = (v - v.round()).abs() < 1e-3
        differ = img_fg != img_off
        inside = ((img_off > 0) & (img_off < 255)).float().mean()

    return {
        "size": size, "batch": batch, "weight_noise_scale": scale,
        "deq_log_std_offset": deq_log_std_offset,
        "mapped_tensors": report.copied, "constants_checked": report.constants_checked,
        "parameters": report.parameters, "import_s": round(import_s, 1),
        "seconds": round(time.perf_counter() - t_start, 1),
        "bpd_official": [round(float(b), 6) for b in bpd_off],
        "max_abs_dbpd_clamp_none": float((bpd_off - bpd_none).abs().max()),
        "max_abs_dbpd_clamp_margin": float((bpd_off - bpd_margin).abs().max()),
        "max_abs_dbpd_margin_vs_none": float((bpd_margin - bpd_none).abs().max()),
        "u_saturated_fraction": saturated,
        "sample_pixels": int(differ.numel()),
        "sample_pixels_differing": int(differ.sum()),
        "sample_pixels_differing_not_near_edge": int((differ & ~near_edge).sum()),
        "sample_pixels_near_edge": int(near_edge.sum()),
        "sample_fraction_strictly_inside_0_255": float(inside),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("repo", type=Path, help="checkout of github.com/matejgrcic/DenseFlow")
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", type=float, default=0.01,
                    help="std of the random offsets added to every parameter")
    ap.add_argument("--deq-log-std-offset", type=float, default=0.0,
                    help="added to the dequantization base's log-std, so that u saturates")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    if not (a.repo / "denseflow").is_dir() or not (a.repo / "experiments" / "image").is_dir():
        raise SystemExit(f"not a DenseFlow checkout: {a.repo}")
    torch.set_num_threads(a.threads)
    sys.path.insert(0, str(ROOT))
    out = {"torch": torch.__version__, "threads": a.threads, "results": []}
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        for size in a.sizes:
            out["results"].append(compare(a.repo.resolve(), size, a.batch, a.seed, a.scale,
                                          Path(tmp), a.deq_log_std_offset))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
