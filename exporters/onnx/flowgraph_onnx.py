r"""Sample and score images with ONNX files written by ``flowgraph export --format onnx``.

Needs only onnxruntime and numpy (never torch or flowgraph), so it runs where PyTorch is not
installed. As a library::

    from flowgraph_onnx import OnnxFlow
    flow = OnnxFlow("model")                # model.density.onnx and/or model.sample.onnx
    images = flow.sample(16, temperature=0.8, seed=0)        # uint8 [16, C, H, W]
    bpd = flow.bits_per_dim(images, seed=0)                   # float32 [16]

As a script::

    python exporters/onnx/flowgraph_onnx.py model sample -n 16 -t 0.8 --seed 0 -o grid.ppm
    python exporters/onnx/flowgraph_onnx.py model bpd images.bin [--noise noise.bin]
    python exporters/onnx/flowgraph_onnx.py model info

Raw files have no header: images uint8 N×C×H×W (float32 for continuous data), noise float32
N×latent_dim (sample) or N×noise_dim (bpd). Noise drawn here comes from numpy's generator, so
seeded samples differ from PyTorch's for the same seed; pass ``--noise`` (or ``eps=``) to
reproduce another runtime's samples exactly.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

__all__ = ["OnnxFlow", "main", "write_ppm"]


class OnnxFlow:
    """The density and/or sample graphs of one export, with their flowgraph metadata."""

    def __init__(self, path: str | Path, threads: int = 0):
        path = Path(path)
        stem = path.name
        for suffix in (".onnx", ".density", ".sample"):
            stem = stem.removesuffix(suffix)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.sessions: dict[str, ort.InferenceSession] = {}
        self.meta: dict = {}
        for direction in ("density", "sample"):
            file = path.parent / f"{stem}.{direction}.onnx"
            if file.is_file():
                sess = ort.InferenceSession(str(file), options,
                                            providers=["CPUExecutionProvider"])
                self.sessions[direction] = sess
                self.meta = json.loads(sess.get_modelmeta().custom_metadata_map["flowgraph"])
        if not self.sessions:
            raise FileNotFoundError(f"no {stem}.density.onnx or {stem}.sample.onnx in "
                                    f"{str(path.parent)!r}")
        self.data_shape = list(self.meta["data_shape"])
        self.bits = int(self.meta["bits"])
        self.latent_dim = int(self.meta["latent_dim"])
        self.noise_dim = int(self.meta["noise_dim"])

    def _session(self, direction: str) -> ort.InferenceSession:
        if direction not in self.sessions:
            raise ValueError(f"this export has no {direction} graph; export it with "
                             f"--direction {direction} or both")
        return self.sessions[direction]

    def sample_from_noise(self, eps: np.ndarray, temperature: float = 1.0
                          ) -> tuple[np.ndarray, np.ndarray]:
        """(images as stored, float samples) from standard-normal `eps` [N, latent_dim]."""
        eps = np.ascontiguousarray(eps, dtype=np.float32).reshape(-1, self.latent_dim)
        images, x = self._session("sample").run(
            None, {"eps": eps, "temperature": np.asarray(temperature, np.float32)})
        return images, x

    def sample(self, n: int, temperature: float = 1.0, seed: int = 0) -> np.ndarray:
        """`n` samples; noise from ``numpy.random.default_rng(seed)``."""
        eps = np.random.default_rng(seed).standard_normal((n, self.latent_dim), np.float32)
        return self.sample_from_noise(eps, temperature)[0]

    def log_prob(self, x: np.ndarray, noise: np.ndarray | None = None, seed: int = 0
                 ) -> np.ndarray:
        """Log-likelihood [N] of stored data `x` (noise drawn from `seed` when not given)."""
        return self._density(x, noise, seed)[0]

    def bits_per_dim(self, x: np.ndarray, noise: np.ndarray | None = None, seed: int = 0
                     ) -> np.ndarray:
        """Bits/dim [N] of stored data `x` (noise drawn from `seed` when not given)."""
        return self._density(x, noise, seed)[1]

    def _density(self, x: np.ndarray, noise: np.ndarray | None, seed: int
                 ) -> tuple[np.ndarray, np.ndarray]:
        dtype = np.uint8 if 0 < self.bits <= 8 else (np.int32 if self.bits else np.float32)
        x = np.ascontiguousarray(x, dtype=dtype).reshape(-1, *self.data_shape)
        feeds = {"x": x}
        if self.noise_dim:
            if noise is None:
                noise = np.random.default_rng(seed).standard_normal(
                    (len(x), self.noise_dim), np.float32)
            feeds["noise"] = np.ascontiguousarray(noise, np.float32).reshape(len(x), -1)
        log_prob, bpd = self._session("density").run(None, feeds)
        return log_prob, bpd


def write_ppm(images: np.ndarray, path: str | Path, bits: int = 8, nrow: int = 0) -> Path:
    """[N, 1|3, H, W] integer images -> one binary PPM grid (gray replicated to RGB)."""
    x = images.astype(np.float64)
    if bits != 8:
        x = x * (255.0 / (2**bits - 1))
    x = np.clip(np.round(x), 0, 255).astype(np.uint8)
    n, c, h, w = x.shape
    cols = nrow or max(1, math.ceil(math.sqrt(n)))
    rows, pad = math.ceil(n / cols), 2
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for i in range(n):
        top, left = pad + (i // cols) * (h + pad), pad + (i % cols) * (w + pad)
        grid[top:top + h, left:left + w] = x[i].transpose(1, 2, 0)[:, :, [0, 0, 0] if c == 1
                                                                    else [0, 1, 2]]
    path = Path(path)
    path.write_bytes(b"P6\n%d %d\n255\n" % (grid.shape[1], grid.shape[0]) + grid.tobytes())
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="flowgraph_onnx.py", description=__doc__.split("\n")[0])
    p.add_argument("model", help="MODEL (for MODEL.density.onnx / MODEL.sample.onnx)")
    p.add_argument("command", choices=("info", "sample", "bpd"))
    p.add_argument("images", nargs="?", help="bpd: raw images file")
    p.add_argument("-n", type=int, default=16)
    p.add_argument("-t", "--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise", help="raw float32 noise file")
    p.add_argument("-o", "--output", help="sample: PPM grid")
    p.add_argument("--raw", help="sample: raw images file")
    p.add_argument("--out", help="bpd: raw float32 bits/dim file")
    args = p.parse_args(argv)
    flow = OnnxFlow(args.model)
    if args.command == "info":
        print(json.dumps({k: v for k, v in flow.meta.items() if k != "spec_text"}, indent=1))
    elif args.command == "sample":
        if args.noise:
            eps = np.fromfile(args.noise, np.float32).reshape(-1, flow.latent_dim)
            images = flow.sample_from_noise(eps, args.temperature)[0]
        else:
            images = flow.sample(args.n, args.temperature, args.seed)
        if args.raw:
            np.ascontiguousarray(images).tofile(args.raw)
        if args.output:
            write_ppm(images, args.output, flow.bits)
        print(f"sampled {len(images)} images, T={args.temperature:g}")
    else:
        if not args.images:
            p.error("bpd needs an images file")
        dtype = np.uint8 if 0 < flow.bits <= 8 else np.float32
        x = np.fromfile(args.images, dtype).reshape(-1, *flow.data_shape)
        noise = (np.fromfile(args.noise, np.float32).reshape(len(x), -1) if args.noise
                 else None)
        bpd = flow.bits_per_dim(x, noise, args.seed)
        if args.out:
            bpd.astype(np.float32).tofile(args.out)
        print(f"bits/dim {float(bpd.mean()):.6f} over {len(x)} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
