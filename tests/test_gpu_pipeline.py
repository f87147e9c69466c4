"""The GPU training pipeline, checked on the CPU (and on CUDA where there is one, `cuda` marker):
no host synchronisation inside a step, exact device-side skipping of non-finite steps, datasets
held once (gathered in place or memory-mapped), SyncBatchNorm under DDP, TF32, one-graph
torch.compile, and the CPU part of benchmarks/gpu_check.sh."""

from __future__ import annotations

import copy
import io
import json
import math
import os
import pickle
import subprocess
import sys
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from flowgraph.data import ArrayImageDataset, load_dataset
from flowgraph.data.imagenet import load_imagenet
from flowgraph.data.mapped import cached_array, map_npz_member
from flowgraph.train import TrainConfig, Trainer
from flowgraph.train.batches import BatchSource
from flowgraph.train.distributed import (
    BitsPerDim,
    GlobalBatchNorm,
    convert_sync_batchnorm,
    set_tf32,
)
from flowgraph.train.inputs import compile_for_training
from flowgraph.train.masked import BufferGuard, MaskedOptimizer, zero_unless

sys.path.insert(0, str(Path(__file__).parent))
from test_train import images

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")
CUDA = torch.cuda.is_available()


def cuda_only(test):
    """The `cuda` marker (benchmarks/gpu_check.sh runs ``-m cuda``), skipped without a GPU."""
    return pytest.mark.cuda(pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")(test))


# TINY of test_train with a DenseFlow coupling net: its fusion has a BatchNorm.
BN_SPEC = """
flowgraph: 1
name: tiny-bn
inputs:
  x: {shape: [1, 8, 8], bits: 8}
nodes:
  - {id: deq, op: dequantize_uniform, in: x}
  - {id: sq, op: squeeze, in: deq}
  - {id: an, op: actnorm, in: sq}
  - {id: conv, op: conv1x1, in: an}
  - id: cp
    op: affine_coupling
    in: conv
    params: {net: {kind: dense_attention, width: 8, depth: 1, growth: 4,
                   attention: {landmarks: 4}}}
  - {id: an2, op: actnorm, in: cp}
outputs:
  z: {from: an2, prior: {dist: channel_normal}}
"""


@pytest.fixture
def bn_spec(tmp_path: Path) -> Path:
    path = tmp_path / "tiny-bn.yaml"
    path.write_text(BN_SPEC)
    return path


def config(**kw: object) -> TrainConfig:
    base = {"batch_size": 8, "epochs": 1, "warmup_steps": 2, "samples": 0, "tensorboard": False,
            "log_every": 1000, "checkpoint_every": 0, "seed": 3, "augment": "eta",
            "grad_clip": 5.0, "device": "cpu", "val_images": 0}
    return TrainConfig(**{**base, **kw})


def trainer(spec: Path, out: Path, n: int = 32, **kw: object) -> Trainer:
    t = Trainer(spec, config(**kw), out, train_data=images(n), stream=io.StringIO())
    t.initialize()
    t.wrap()
    return t


# -------------------------------------------------------------------- no host sync in a step

HOST_READS = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")


@contextmanager
def counting_host_reads():
    """Count the Python-level ways a tensor's value reaches the host (each one waits for the
    device on CUDA)."""
    calls: list[str] = []
    saved = {n: torch.Tensor.__dict__.get(n) for n in HOST_READS}

    def counted(name: str, original):
        def read(self, *args, **kwargs):
            calls.append(name)
            return original(self, *args, **kwargs)
        return read

    for name in HOST_READS:
        setattr(torch.Tensor, name, counted(name, getattr(torch.Tensor, name)))
    try:
        yield calls
    finally:
        for name, original in saved.items():
            if original is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, original)


def test_training_steps_never_read_the_device_and_return_device_tensors(bn_spec, tmp_path):
    t = trainer(bn_spec, tmp_path / "r")
    calls = {"n": 0}

    def poison_second_step(module, args, out):  # the skip path must not read either
        calls["n"] += 1
        return (out[0] * math.nan, out[1]) if calls["n"] == 2 else None

    t.flow.get_submodule("cp").register_forward_hook(poison_second_step)
    with counting_host_reads() as reads:
        outs = [t.train_step(x, 1e-3) for _, x in t.source.epoch(0)]
    assert reads == []
    assert len(outs) == 4 and all(isinstance(v, torch.Tensor) and v.device == t.device
                                  and v.dim() == 0 for out in outs for v in out.values())
    assert [bool(o["skipped"]) for o in outs] == [False, True, False, False]
    t._pull()  # the sync point: the device statistics reach the host
    assert (t.skipped, t.streak, t.interval[1], t.epoch_sum[1]) == (1, 0, 3, 3)
    assert t.interval[0] == pytest.approx(sum(float(o["bpd"]) for o in outs if not o["skipped"]))


@cuda_only
@pytest.mark.parametrize("budget", [0, 64], ids=["pinned", "on-device"])
def test_cuda_steps_run_under_sync_debug_mode_error(bn_spec, tmp_path, budget):
    t = trainer(bn_spec, tmp_path / "r", device="cuda", device_data_mb=budget,
                channels_last=True)
    assert t.source.on_device == bool(budget)
    t.train_step(t.source.get(0, 0), 1e-3)  # the first step allocates the optimizer state
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _, x in t.source.epoch(0, 1):
            out = t.train_step(x, 1e-3)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert out["bpd"].is_cuda and math.isfinite(float(out["bpd"]))


# --------------------------------------------------------------------- exact skipping

def _snapshot(t: Trainer) -> tuple[dict, dict]:
    return ({k: v.clone() for k, v in t.flow.state_dict().items()},
            copy.deepcopy(t.optimizer.state_dict()["state"]))


def test_a_skipped_step_leaves_parameters_optimizer_state_and_batchnorm_bit_for_bit(
        bn_spec, tmp_path):
    t = trainer(bn_spec, tmp_path / "r")
    batches = [x for _, x in t.source.epoch(0)]
    t.train_step(batches[0], 1e-3)
    model, state = _snapshot(t)
    handle = t.flow.get_submodule("cp").register_forward_hook(
        lambda m, a, out: (out[0] * math.inf, out[1]))
    assert bool(t.train_step(batches[1], 1e-3)["skipped"])
    handle.remove()
    model2, state2 = _snapshot(t)
    bn = [k for k in model if "running" in k or "num_batches" in k]
    assert bn and all(torch.equal(model[k], model2[k]) for k in model)
    assert all(torch.equal(state[p][k], state2[p][k]) for p in state for k in state[p])
    assert not bool(t.train_step(batches[2], 1e-3)["skipped"])  # training goes on
    assert not torch.equal(model["an.shift"], t.flow.state_dict()["an.shift"])


@pytest.mark.parametrize("cls", [torch.optim.Adamax, torch.optim.Adam, torch.optim.AdamW])
def test_masked_optimizer_is_the_torch_update_when_kept_and_exact_when_skipped(cls):
    torch.manual_seed(0)
    shapes = [(5, 3, 1, 1), (4,), (2, 2)]
    ref_params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    params = [torch.nn.Parameter(p.detach().clone()) for p in ref_params]
    ref = cls(ref_params, lr=1e-2, weight_decay=0.05)
    masked = MaskedOptimizer(cls(params, lr=1e-2, weight_decay=0.05))
    plan = [False, True, True, False, True, True]  # a skipped very first step, then one later
    for i, keep in enumerate(plan):
        grads = [torch.randn(s) for s in shapes]
        if i == 4:  # parameter 2 gets no gradient: its count falls behind (per-tensor path)
            grads[2] = None
        before = [p.detach().clone() for p in params]
        state = copy.deepcopy(masked.optimizer.state_dict()["state"])
        for p, g in zip(params, grads, strict=True):
            p.grad = None if g is None else (g if keep else g * math.nan)
        live = [p.grad for p in params if p.grad is not None]
        zero_unless(live, torch.tensor(keep))
        masked.step(torch.tensor(keep))
        if keep:
            for p, g in zip(ref_params, grads, strict=True):
                p.grad = g
            ref.step()
        else:
            assert all(torch.equal(a, b) for a, b in zip(before, params, strict=True))
            after = masked.optimizer.state_dict()["state"]
            assert all(torch.equal(state[k][n], after[k][n]) for k in state for n in state[k])
            fresh = [after[k] for k in after.keys() - state.keys()]  # a skipped first step
            assert all(not v.any() for s in fresh for v in s.values())
    assert masked.lockstep == [False]
    for a, b in zip(ref_params, params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    steps = [int(masked.optimizer.state[p]["step"]) for p in params]
    assert steps == [int(ref.state[p]["step"]) for p in ref_params] == [4, 4, 3]


def test_zeroing_and_buffer_restore_are_bit_exact_for_every_bit_pattern():
    special = torch.tensor([math.nan, -math.inf, math.inf, -0.0, 1e-45, -3.5])
    floats = [special.clone(), torch.randn(7, dtype=torch.float64)]
    zero_unless(floats, torch.tensor(True))
    assert torch.equal(floats[0].view(torch.int32), special.view(torch.int32))
    zero_unless(floats, torch.tensor(False))
    assert all(torch.equal(f.view(torch.int8), torch.zeros_like(f.view(torch.int8)))
               for f in floats)
    buffers = [special.clone(), torch.tensor([3, -2**62]), torch.tensor([True, False]),
               torch.tensor([7], dtype=torch.uint8), torch.randn(2, dtype=torch.bfloat16)]
    guard = BufferGuard(buffers)
    for keep in (False, True):
        before = [b.clone() for b in buffers]
        guard.save()
        for b in buffers:
            b.copy_(torch.full_like(b, 1 if b.dtype != torch.bool else False))
        changed = [b.clone() for b in buffers]
        guard.restore_unless(torch.tensor(keep))
        expect = changed if keep else before
        assert all(torch.equal(a.view(torch.uint8), b.view(torch.uint8))
                   for a, b in zip(expect, buffers, strict=True))


# ------------------------------------------------------------------ datasets held once

RSS_SCRIPT = r"""
import json, sys
from pathlib import Path
import numpy as np
import torch
from flowgraph.data.imagenet import load_imagenet
from flowgraph.train.batches import BatchSource


def anon_kib():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1])


root, mode = Path(sys.argv[1]), sys.argv[2]
out = {"start": anon_kib()}
cache = str(root / "cache") if mode == "cache" else None
ds = load_imagenet(root, "train", 16, cache=cache)
out["loaded"] = anon_kib()
source = BatchSource(ds, 64, seed=0, rank=1, world_size=2)
total = 0
for _, x in source.epoch(0):
    total += int(x.sum(dtype=torch.int64))
out["epoch"] = anon_kib()
out["n"], out["nbytes"], out["checksum"] = len(ds), ds.nbytes, total
print(json.dumps(out))
"""


def _write_imagenet16(root: Path, per_batch: int) -> None:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for i in range(1, 11):
        data = rng.integers(0, 256, (per_batch, 3 * 16 * 16), dtype=np.uint8)
        batch = {"data": data, "labels": list(range(per_batch)), "mean": data.mean(0)}
        (root / f"train_data_batch_{i}").write_bytes(pickle.dumps(batch))


def test_an_imagenet_format_dataset_of_100k_images_is_held_once(tmp_path):
    """The private memory (RssAnon) of a process that loads 100,000 ImageNet-format images
    grows by one copy of them (the ten batch files, never joined), and not at all more for a
    training epoch; from the memory-mapped cache it does not grow by a copy at all."""
    root = tmp_path / "in16"
    _write_imagenet16(root, 10_000)
    load_imagenet(root, "train", 16, cache=str(root / "cache"))  # built here, mapped there
    runs = {}
    for mode in ("memory", "cache"):
        proc = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(root), mode],
                              capture_output=True, text=True, check=False, timeout=120,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs[mode] = json.loads(proc.stdout)
    size_kib = runs["memory"]["nbytes"] / 1024
    assert runs["memory"]["n"] == 100_000 and size_kib == pytest.approx(75_000)
    mem = runs["memory"]
    assert 0.9 * size_kib < mem["loaded"] - mem["start"] < 1.3 * size_kib
    assert mem["epoch"] - mem["loaded"] < 0.1 * size_kib  # no joined copy for training
    cached = runs["cache"]
    assert cached["epoch"] - cached["start"] < 0.2 * size_kib
    assert cached["checksum"] == mem["checksum"]


def test_gather_reads_across_chunks_like_the_joined_array():
    rng = np.random.default_rng(1)
    chunks = [rng.integers(0, 256, (n, 1, 2, 2), dtype=np.uint8) for n in (3, 5, 4)]
    ds = ArrayImageDataset("t", "train", Path("."), chunks)
    joined = torch.from_numpy(np.concatenate(chunks))
    idx = torch.tensor([11, 0, 3, 7, 7, 2, 8])
    assert torch.equal(ds.gather(idx), joined[idx])
    out = torch.empty(len(idx), 1, 2, 2, dtype=torch.uint8)
    assert ds.gather(idx, out=out) is out and torch.equal(out, joined[idx])
    with pytest.raises(IndexError, match="out of range"):
        ds.gather([12])


def test_under_ddp_each_rank_reads_only_its_share(tmp_path):
    read: list[int] = []

    class Recording(ArrayImageDataset):
        def gather(self, indices, out=None):
            read.extend(np.asarray(indices).tolist())
            return super().gather(indices, out)

    ds = Recording("t", "train", tmp_path, [np.zeros((40, 1, 1, 1), np.uint8)])
    seen = []
    for rank in range(2):
        read.clear()
        source = BatchSource(ds, 8, seed=5, rank=rank, world_size=2)
        for b, _ in source.epoch(1):
            assert read[-4:] == source.indices(1, b).tolist()
        seen.append(set(read))
        assert len(read) == 20  # 5 batches of 4: its half, nothing else
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 40


def test_uncompressed_npz_is_memory_mapped_and_compressed_npz_is_read(tmp_path):
    data = np.arange(6 * 12, dtype=np.uint8).reshape(6, 12)
    np.savez(tmp_path / "a.npz", data=data, labels=np.arange(6))
    np.savez_compressed(tmp_path / "b.npz", data=data, labels=np.arange(6))
    mapped = map_npz_member(tmp_path / "a.npz", "data")
    assert isinstance(mapped, np.memmap) and np.array_equal(mapped, data)
    assert map_npz_member(tmp_path / "b.npz", "data") is None
    assert map_npz_member(tmp_path / "a.npz", "nope") is None
    with zipfile.ZipFile(tmp_path / "a.npz") as z:  # the member really is stored
        assert z.getinfo("data.npy").compress_type == zipfile.ZIP_STORED


def test_the_cache_is_built_once_and_rebuilt_when_a_source_changes(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"x")
    built = []

    def rows():
        built.append(1)
        yield np.full((2, 3), 7, np.uint8), np.array([1, 2])
        yield np.full((1, 3), 9, np.uint8), np.array([3])

    a, labels = cached_array(tmp_path / "c", "t", [src], (3,), rows)
    b, _ = cached_array(tmp_path / "c", "t", [src], (3,), rows)
    assert len(built) == 1 and isinstance(b, np.memmap) and a.shape == (3, 3)
    assert a[:, 0].tolist() == [7, 7, 9] and labels.tolist() == [1, 2, 3]
    os.utime(src, ns=(1, 1))
    cached_array(tmp_path / "c", "t", [src], (3,), rows)
    assert len(built) == 2


def test_cifar_cache_option_maps_the_split(tmp_path):
    from test_data import write_cifar

    root = write_cifar(tmp_path / "cifar")
    plain = load_dataset("cifar10", "train", root)
    cached = load_dataset("cifar10", "train", root, cache="auto")
    assert isinstance(cached.chunks()[0].base, np.memmap) or isinstance(
        cached.chunks()[0], np.memmap)
    assert (root / ".flowgraph-cache").is_dir()
    assert torch.equal(plain.images(), cached.images())
    assert np.array_equal(plain.labels, cached.labels)


# ---------------------------------------------------------------------- SyncBatchNorm

@pytest.mark.parametrize(("device", "kind"), [("cuda", torch.nn.SyncBatchNorm),
                                            ("cpu", GlobalBatchNorm)])
def test_sync_batchnorm_conversion_of_a_generated_flow_keeps_weights_and_outputs(
        bn_spec, device, kind):
    """The conversion for CUDA (torch's SyncBatchNorm) and for the CPU (GlobalBatchNorm), both
    made here on the CPU: same parameters, buffers, keys and eval outputs."""
    flow = compile_for_training(str(bn_spec), None, 0)
    x = images(8)
    flow.initialize(x)
    params = dict(flow.named_parameters())
    keys = flow.state_dict().keys()
    noise = flow.draw_noise(8, generator=torch.Generator().manual_seed(0))
    flow.eval()
    before = flow.log_prob_once(x, None, noise)
    assert convert_sync_batchnorm(flow, torch.device(device)) == 1
    assert convert_sync_batchnorm(flow, torch.device(device)) == 0
    norms = [type(m) for m in flow.modules()
             if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms == [kind]
    assert flow.state_dict().keys() == keys
    assert all(p is params[n] for n, p in flow.named_parameters())  # optimizer refs stay valid
    assert torch.equal(flow.log_prob_once(x, None, noise), before)
    if device == "cpu":  # no process group: plain batch statistics, as BatchNorm2d
        flow.train()
        flow.log_prob_once(x, None, noise).sum().backward()


DDP_WORKER = r"""
import io, os, sys, torch, torch.distributed as dist
from pathlib import Path
sys.path.insert(0, sys.argv[4])
from test_train import images
from flowgraph.train import TrainConfig, Trainer

rank, world, tmp = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
torch.set_num_threads(1)
# precise_bn: 0 because the two biases excluded below (zero true gradient, Adamax-amplified
# rounding) shift BatchNorm's input mean, which re-estimated statistics would show in full.
cfg = dict(batch_size=8, epochs=1, warmup_steps=2, samples=0, tensorboard=False, log_every=1,
           checkpoint_every=0, seed=3, augment="eta", grad_clip=5.0, device="cpu", max_steps=5,
           lr=3e-3, val_images=0, precise_bn=0)
out = {}
for name, sync in (("sync", None), ("local", False)):
    if world == 1 and name == "local":
        break
    t = Trainer(tmp / "tiny-bn.yaml", TrainConfig(**cfg, sync_batchnorm=sync),
                tmp / f"{name}{world}", train_data=images(40), stream=io.StringIO())
    t.initialize()
    t.wrap()
    out[name + "_kinds"] = sorted({type(m).__name__ for m in t.flow.modules()
                                   if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)})
    t.fit()
    out[name] = {k: v.clone() for k, v in t.flow.state_dict().items()}
if rank == 0:
    torch.save(out, tmp / f"world{world}.pt")
if dist.is_initialized():
    dist.destroy_process_group()
"""


def test_two_gloo_ranks_with_sync_batchnorm_train_like_one_process_on_the_global_batch(
        bn_spec, tmp_path):
    """5 steps of DDP (2 ranks, 4 images each) equal 5 single-process steps on the same 8
    images within float tolerance: ActNorm's init, BatchNorm (SyncBatchNorm, the default under
    DDP) and the augmentation and noise all see the global batch. With per-process BatchNorm
    (`sync_batchnorm: false`) they do not."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "worker.py"
    script.write_text(DDP_WORKER)
    base = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port)}
    procs = [subprocess.Popen([sys.executable, str(script), str(r), "2", str(tmp_path),
                               str(ROOT / "tests")], env={**base, "RANK": str(r),
                              "WORLD_SIZE": "2", "LOCAL_RANK": str(r)},
                              stderr=subprocess.PIPE, text=True) for r in range(2)]
    single = subprocess.run([sys.executable, str(script), "0", "1", str(tmp_path),
                             str(ROOT / "tests")], env={**os.environ, "OMP_NUM_THREADS": "1"},
                            capture_output=True, text=True, timeout=180, check=False)
    errors = [p.communicate(timeout=180)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errors[0][-3000:] + errors[1][-3000:]
    assert single.returncode == 0, single.stderr[-3000:]
    ddp, one = torch.load(tmp_path / "world2.pt"), torch.load(tmp_path / "world1.pt")
    assert ddp["sync_kinds"] == ["GlobalBatchNorm"]  # torch's SyncBatchNorm on CUDA
    assert ddp["local_kinds"] == ["BatchNorm2d"]

    def bpd(run: str) -> list[float]:
        rows = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [json.loads(r)["bpd"] for r in rows if json.loads(r)["bpd"] is not None]

    assert len(bpd("sync1")) == 6  # 5 steps and the epoch row
    torch.testing.assert_close(bpd("sync2"), bpd("sync1"), rtol=1e-6, atol=0)
    # The fusion's branch outputs go straight into the BatchNorm, which removes any constant:
    # their biases get a zero gradient up to rounding, which Adamax scales up to ±lr a step.
    null = ("cp.net.branches.0.proj.bias", "cp.net.branches.1.out.conv.bias")
    for k, v in one["sync"].items():
        if v.is_floating_point() and k not in null:
            torch.testing.assert_close(ddp["sync"][k], v, rtol=1e-5, atol=1e-4 if "running"
                                       in k else 1e-6, msg=lambda m, k=k: f"{k}: {m}")
    differs = [k for k, v in one["sync"].items() if v.is_floating_point()
               and not torch.allclose(ddp["local"][k], v, rtol=1e-4, atol=1e-4)]
    assert "cp.net.norm.running_mean" in differs and "cp.net.norm.weight" in differs


# --------------------------------------------------------------------------- TF32

def test_tf32_is_a_no_op_on_the_cpu():
    before = torch.get_float32_matmul_precision()
    set_tf32(torch.device("cpu"), True)
    set_tf32(torch.device("cpu"), False)
    assert torch.get_float32_matmul_precision() == before
    assert TrainConfig().tf32 is True


@cuda_only
def test_tf32_switch_on_cuda():
    try:
        set_tf32(torch.device("cuda"), True)
        a = torch.randn(256, 256, device="cuda")
        b = (a @ a).float()
        set_tf32(torch.device("cuda"), False)
        c = a @ a
        assert not torch.equal(b, c)  # TF32 rounds the inputs to 10 mantissa bits
    finally:
        set_tf32(torch.device("cuda"), True)


# ----------------------------------------------------------------- torch.compile: one graph

COMPILE_SPEC = """
flowgraph: 1
name: tiny-compile
inputs:
  x: {shape: [3, 8, 8], bits: 8}
nodes:
  - id: deq
    op: dequantize_variational
    in: x
    params: {steps: 1, context_width: 8, context_depth: 1, context_growth: 4,
             net: {kind: dense_residual, width: 8, depth: 1, growth: 4}}
  - {id: sq, op: squeeze, in: deq}
  - {id: an, op: actnorm, in: sq}
  - {id: conv, op: conv1x1, in: an}
  - id: cp
    op: affine_coupling
    in: conv
    params: {net: {kind: dense_attention, width: 8, depth: 1, growth: 4,
                   attention: {landmarks: 4}}, scale: exp_2tanh, layout: interleaved}
  - {id: sp, op: split, in: cp}
  - {id: aug, op: cross_unit_coupling, in: "sp:first", condition: [sq], params: {growth: 2}}
outputs:
  z1: {from: "sp:second"}
  z: {from: aug, prior: {dist: channel_normal}}
"""


def test_the_training_loss_compiles_to_one_graph():
    """fullgraph=True turns any graph break in the generated code or an op into an error;
    the eager backend keeps this cheap (no code generation)."""
    flow = compile_for_training(yaml.safe_load(COMPILE_SPEC), None, 0)
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    flow.initialize(x)
    noise = flow.draw_noise(4, generator=torch.Generator().manual_seed(0))
    loss = BitsPerDim(flow)
    compiled = torch.compile(loss, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x, noise), loss(x, noise))
    compiled(x, noise).mean().backward()
    assert all(p.grad is not None for p in flow.parameters() if p.requires_grad)


# ------------------------------------------------------------------------ gpu_check.sh

def test_gpu_check_runs_its_cpu_fallback(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "OMP_NUM_THREADS": "1", "PYTHON": sys.executable,
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu-dry-run"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "CPU fallback" in proc.stdout
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["cpu_fallback"] is True and result["device"] == "cpu"
    runs = result["train"]
    assert [r["config"] for r in runs] == ["fp32", "tf32", "bf16+channels_last",
                                           "bf16+channels_last+compile"]
    assert all(r["images_per_s"] > 0 and math.isfinite(r["bpd_last"]) for r in runs)
    assert result["sample"]["n"] > 0 and result["sample"]["seconds"] > 0
    assert result["flops_per_image"] > 0
