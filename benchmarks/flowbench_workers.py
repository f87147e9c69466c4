r"""The measuring side of `flowbench.py`: one job per process, described by a JSON object.

A job names a task (``info``, ``peak``, ``train``, ``sample``, ``loglik``), a system and a
variant:

- ``ours`` / ``base``: a flowgraph checkout (whichever ``flowgraph`` the worker's PYTHONPATH
  selects), variant = mode ``eager`` | ``script`` | ``compile`` with optional modifiers
  ``+bf16`` (bf16 conditioner networks through ``flow.set_conditioner_dtype`` where the
  checkout has it, else CPU autocast around the loss: what ``TrainConfig.bf16`` does),
  ``+cl`` (channels-last model and input, ``TrainConfig.channels_last``) and ``+ms``
  (memory-saving training, ``flow.set_conditioner_recompute(True)``,
  ``TrainConfig.memory_saving``);
- ``official``: the DenseFlow authors' code imported at run time from a checkout (GPL-2.0;
  nothing of it is copied here), variant ``default`` or ``ckpt`` (its ``checkpointing=True``).

Every job returns a dict; `run_job` adds the process's resource usage (VmHWM, utime, stime,
page faults), so that peak memory belongs to that one measurement.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
import traceback
import types
from collections import defaultdict
from contextlib import nullcontext
from typing import Any, Self

import torch
import torch.nn.functional as F

__all__ = ["run_job"]

OFFICIAL_ARCH = {"block_conf": [6, 4, 1], "layers_conf": [5, 6, 20],
                 "layer_mid_chnls": [48, 48, 48], "growth_rate": 10}  # DenseFlow-74-10


# -- process accounting ----------------------------------------------------------------------
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _mem() -> dict[str, float]:
    return {"rss_mib": round(_status_kib("VmRSS") / 1024, 1),
            "hwm_mib": round(_status_kib("VmHWM") / 1024, 1)}


def _usage() -> dict[str, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return {"utime_s": round(r.ru_utime, 3), "stime_s": round(r.ru_stime, 3),
            "minflt": r.ru_minflt, "majflt": r.ru_majflt, "nvcsw": r.ru_nvcsw,
            "nivcsw": r.ru_nivcsw, "maxrss_mib": round(r.ru_maxrss / 1024, 1)}


class _Clock:
    """Wall, process CPU, user and system time of a region (all threads of the process)."""

    def __enter__(self) -> Self:
        self.t0, self.os0 = time.perf_counter(), os.times()
        self.flt0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        return self

    def __exit__(self, *exc: object) -> None:
        t1, os1 = time.perf_counter(), os.times()
        self.wall = t1 - self.t0
        self.user = os1.user - self.os0.user
        self.sys = os1.system - self.os0.system
        self.minflt = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - self.flt0


def _timed(fn: Any, warmup: int, repeats: int) -> dict[str, Any]:
    walls, users, syss, faults = [], [], [], []
    for i in range(warmup + repeats):
        with _Clock() as c:
            fn()
        if i >= warmup:
            walls.append(c.wall)
            users.append(c.user)
            syss.append(c.sys)
            faults.append(c.minflt)
    med = statistics.median(walls)
    return {"s_median": med, "s_min": min(walls), "s_all": walls, "user_s_all": users,
            "sys_s_all": syss, "minflt_all": faults,
            "cpu_per_wall": (sum(users) + sum(syss)) / sum(walls),
            "sys_fraction": sum(syss) / max(sum(users) + sum(syss), 1e-9)}


# -- the models --------------------------------------------------------------------------------
def _uint8(batch: int, shape: list[int], gen: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 256, (batch, *shape), dtype=torch.uint8, generator=gen)


class _Flowgraph:
    """A flowgraph model (ours or a baseline checkout, chosen by PYTHONPATH)."""

    def __init__(self, job: dict[str, Any]):
        import flowgraph
        from flowgraph.compile import compile_spec

        self.job = job
        mode, *mods = job.get("variant", "eager").split("+")
        bad = [m for m in mods if m not in ("bf16", "cl", "ms")]
        if mode not in ("eager", "script", "compile") or bad:
            raise ValueError(f"flowbench: unknown mode {job['variant']!r}: expected "
                             "eager|script|compile with optional +bf16, +cl, +ms")
        self.mode, self.bf16, self.cl = mode, "bf16" in mods, "cl" in mods
        torch.manual_seed(job["seed"])
        t0 = time.perf_counter()
        self.flow = compile_spec(job["spec"], job.get("overrides") or None, seed=job["seed"])
        self.build_s = time.perf_counter() - t0
        self.library = os.path.dirname(os.path.dirname(flowgraph.__file__))
        self.data_shape = list(self.flow.data_shape)
        self.scale = 1.0 / (self.flow.data_dims * 0.6931471805599453)
        if "ms" in mods:
            if not hasattr(self.flow, "set_conditioner_recompute"):
                raise ValueError(f"flowbench: +ms needs flow.set_conditioner_recompute, which "
                                 f"the flowgraph at {self.library} lacks")
            self.flow.set_conditioner_recompute(True)

    def batch(self, n: int, gen: torch.Generator) -> torch.Tensor:
        x = _uint8(n, self.data_shape, gen).float()
        return x.contiguous(memory_format=torch.channels_last) if self.cl and x.dim() == 4 else x

    def init(self, x: torch.Tensor) -> None:
        self.flow.train()
        self.flow.initialize(x)
        if self.cl:
            self.flow.to(memory_format=torch.channels_last)

    def autocast(self) -> Any:
        if not self.bf16:
            return nullcontext()
        if hasattr(self.flow, "set_conditioner_dtype"):  # bf16 in the conditioners only
            return self.flow.set_conditioner_dtype(torch.bfloat16)
        return torch.autocast("cpu", dtype=torch.bfloat16)

    def params(self) -> int:
        return sum(p.numel() for p in self.flow.parameters())

    def train_step_fn(self, batches: list[torch.Tensor]) -> Any:
        flow, scale, gen = self.flow, self.scale, torch.Generator().manual_seed(7)
        if self.mode == "script":
            scripted = torch.jit.script(flow)

            def loss_fn(x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
                return -scripted.log_prob_once(x, None, noise).float() * scale
        else:
            def loss_fn(x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
                return -flow.log_prob_once(x, None, noise).float() * scale
            if self.mode == "compile":
                loss_fn = torch.compile(loss_fn)
        opt = torch.optim.Adamax([p for p in flow.parameters() if p.requires_grad], lr=1e-3)
        it = iter(range(1 << 30))
        self.last_loss = float("nan")

        def step() -> None:
            x = batches[next(it) % len(batches)]
            opt.zero_grad(set_to_none=True)
            noise = flow.draw_noise(len(x), generator=gen)
            with self.autocast():
                loss = loss_fn(x, noise).float().mean()
            loss.backward()
            opt.step()
            self.last_loss = loss.item()
        return step

    def _inference_module(self) -> Any:
        self.flow.eval()
        if self.job.get("freeze", True):
            self.flow.freeze()
        return torch.jit.script(self.flow) if self.mode == "script" else self.flow

    def sample_fn(self, n: int) -> Any:
        m = self._inference_module()
        fn = torch.compile(m.sample) if self.mode == "compile" else m.sample

        def sample() -> None:
            with torch.no_grad(), self.autocast():
                self.last = fn(n)
        return sample

    def loglik_fn(self, x: torch.Tensor) -> Any:
        m = self._inference_module()
        fn = torch.compile(m.bits_per_dim) if self.mode == "compile" else m.bits_per_dim

        def loglik() -> None:
            with torch.no_grad(), self.autocast():
                self.last = fn(x).float().mean().item()
        return loglik


class _Official:
    """The authors' DenseFlow-74-10, imported from their checkout at run time."""

    def __init__(self, job: dict[str, Any]):
        if job.get("variant", "default") not in ("default", "ckpt"):
            raise ValueError(f"flowbench: the authors' code has variants default|ckpt. "
                             f"Got {job['variant']!r}")
        repo = os.path.abspath(job["reference"])
        for p in (os.path.join(repo, "experiments", "image"), repo):
            if p not in sys.path:
                sys.path.insert(0, p)
        if "torchvision" not in sys.modules:  # only their data loaders need it
            try:
                import torchvision  # noqa: F401
            except ImportError:
                sys.modules["torchvision"] = types.ModuleType("torchvision")
        from denseflow.utils import elbo_bpd
        from model.model_flow import get_model
        from optim.expdecay_flow import get_optim

        self.job, self.elbo_bpd, self.get_optim = job, elbo_bpd, get_optim
        self.data_shape = list(job["data_shape"])
        args = argparse.Namespace(**OFFICIAL_ARCH, num_classes=10,
                                  checkpointing=job.get("variant") == "ckpt")
        torch.manual_seed(job["seed"])
        t0 = time.perf_counter()
        self.model = get_model(args, data_shape=tuple(self.data_shape))
        self.build_s = time.perf_counter() - t0
        self.library = repo
        self.bf16 = False

    def batch(self, n: int, gen: torch.Generator) -> torch.Tensor:
        return _uint8(n, self.data_shape, gen).long()  # their Quantize transform yields int64

    def init(self, x: torch.Tensor) -> None:
        """Their ActNorm initialises on the first train-mode forward."""
        self.model.train()
        with torch.no_grad():
            self.elbo_bpd(self.model, x)

    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def train_step_fn(self, batches: list[torch.Tensor]) -> Any:
        args = argparse.Namespace(optimizer="adamax", lr=1e-3, warmup=5000, momentum=0.9,
                                  momentum_sqr=0.999, gamma=0.995, use_grad_norm=0.0,
                                  batch_size=len(batches[0]))
        opt, sched_iter, _ = self.get_optim(args, self.model)
        it = iter(range(1 << 30))
        self.model.train()

        def step() -> None:
            x = batches[next(it) % len(batches)]
            opt.zero_grad()
            loss = self.elbo_bpd(self.model, x)
            loss.backward()
            opt.step()
            if sched_iter:
                sched_iter.step()
            self.last_loss = loss.item()
        return step

    def sample_fn(self, n: int) -> Any:
        self.model.eval()

        def sample() -> None:
            with torch.no_grad():
                self.last = self.model.sample(n)
        return sample

    def loglik_fn(self, x: torch.Tensor) -> Any:
        self.model.eval()

        def loglik() -> None:
            with torch.no_grad():
                self.last = self.elbo_bpd(self.model, x).item()
        return loglik


def _model(job: dict[str, Any]) -> Any:
    return _Official(job) if job["system"] == "official" else _Flowgraph(job)


def _prepared(job: dict[str, Any], n_batches: int, batch: int) -> tuple[Any, list[torch.Tensor]]:
    m = _model(job)
    gen = torch.Generator().manual_seed(job["seed"] + 1)
    batches = [m.batch(batch, gen) for _ in range(n_batches)]
    m.init(batches[0])
    return m, batches


# -- FLOP counting and conv shapes -------------------------------------------------------------
def _count_flops(fn: Any) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    class NoModules:  # the per-module breakdown is not needed, and its backward hooks
        parents = frozenset({"Global"})  # fail on the authors' modules ("Expected gradient
        # function to be set"): count every op under "Global" only

        def __enter__(self) -> None:
            pass

        def __exit__(self, *exc: object) -> None:
            pass

    counter = FlopCounterMode(display=False)
    counter.mod_tracker = NoModules()
    with counter:
        fn()
    return int(counter.get_total_flops())


def _conv_shapes(fn: Any) -> list[dict[str, Any]]:
    """Every aten.convolution of `fn`'s forward, grouped by shape, with its FLOP total."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen: dict[tuple, int] = defaultdict(int)

    class Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten.convolution.default:
                x, w, _, stride, padding, dilation, transposed, _, groups = args
                if not transposed:
                    seen[(tuple(x.shape), tuple(w.shape), tuple(stride), tuple(padding),
                          tuple(dilation), groups)] += 1
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), Spy():
        fn()
    rows = []
    for (xs, ws, stride, padding, dilation, groups), calls in seen.items():
        out = F.conv2d(torch.empty(xs, device="meta"), torch.empty(ws, device="meta"),
                       stride=stride, padding=padding, dilation=dilation, groups=groups)
        flops = 2 * out.numel() * ws[1] * ws[2] * ws[3]
        rows.append({"x": list(xs), "w": list(ws), "stride": list(stride),
                     "padding": list(padding), "dilation": list(dilation), "groups": groups,
                     "calls": calls, "flops_per_call": flops, "flops_total": flops * calls})
    return sorted(rows, key=lambda r: -r["flops_total"])


# -- tasks -------------------------------------------------------------------------------------
def task_info(job: dict[str, Any]) -> dict[str, Any]:
    """Parameter count, FLOPs of one training step / likelihood batch / sampling call, and
    (flowgraph models) the convolution shapes of one forward, largest FLOP share first."""
    b = job["batch"]
    m, batches = _prepared(job, 1, b)
    out: dict[str, Any] = {"params": m.params(), "data_shape": m.data_shape,
                           "build_s": m.build_s, "library": m.library}
    if isinstance(m, _Flowgraph):
        out["noise_dim"] = m.flow.noise_dim
        out["conv_shapes"] = _conv_shapes(
            lambda: m.flow.log_prob_once(batches[0], None, None))[: job.get("top_convs", 6)]
    if job.get("flops", True):
        step = m.train_step_fn(batches)
        out["train_flops_per_image"] = _count_flops(step) / b
        # per image: counted at batch b, as every op here is linear in the batch
        out["loglik_flops_per_image"] = _count_flops(m.loglik_fn(batches[0])) / b
        out["sample_flops_per_image"] = _count_flops(m.sample_fn(b)) / b
    return out


def task_peak(job: dict[str, Any]) -> dict[str, Any]:
    """F.conv2d forward rate at fp32 and bf16 on the given shapes, and a square matmul rate
    as a second reference: FLOP per wall second and per CPU second (user + system, all
    threads; what a busy host does not change as much)."""
    budget = job.get("seconds", 0.5)

    def rate(fn: Any, flops: int) -> tuple[float, float]:
        for _ in range(2):
            fn()
        rates, cpu_rates = [], []
        for _ in range(3):
            n = 0
            with _Clock() as c:
                t0 = time.perf_counter()
                while True:
                    fn()
                    n += 1
                    if time.perf_counter() - t0 >= budget / 3 and n >= 2:
                        break
            rates.append(flops * n / c.wall)
            cpu_rates.append(flops * n / max(c.user + c.sys, 1e-3))
        return statistics.median(rates), statistics.median(cpu_rates)

    g = torch.Generator().manual_seed(0)
    convs = []
    for s in job["conv_shapes"]:
        row = {k: s[k] for k in ("x", "w", "stride", "padding", "groups", "flops_per_call")}
        for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            x = torch.randn(s["x"], generator=g).to(dt)
            w = torch.randn(s["w"], generator=g).to(dt)
            row[name], row[name + "_cpu"] = rate(lambda x=x, w=w, s=s: F.conv2d(
                x, w, stride=s["stride"], padding=s["padding"], dilation=s["dilation"],
                groups=s["groups"]), s["flops_per_call"])
        convs.append(row)
    n = job.get("matmul_n", 1024)
    mm = {}
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(n, n, generator=g).to(dt)
        mm[name], mm[name + "_cpu"] = rate(lambda a=a: a @ a, 2 * n ** 3)
    best = convs or [mm]
    return {"convs": convs, "matmul_n": n, "matmul": mm,
            **{k: max(c[k] for c in best) for k in ("fp32", "bf16", "fp32_cpu", "bf16_cpu")}}


def task_train(job: dict[str, Any]) -> dict[str, Any]:
    b = job["batch"]
    m, batches = _prepared(job, 2, b)
    try:
        step = m.train_step_fn(batches)
        mem_before = _mem()
        t = _timed(step, job["warmup"], job["steps"])
    except Exception as e:  # noqa: BLE001 - e.g. a mode that does not train scripted
        return {"skipped": f"{type(e).__name__}: {e}".splitlines()[0][:300]}
    t.update(batch=b, images_per_s=b / t["s_median"], mem_before=mem_before,
             mem_peak=_mem(), loss_last=m.last_loss, build_s=m.build_s, library=m.library)
    return t


def task_sample(job: dict[str, Any]) -> dict[str, Any]:
    m, _ = _prepared(job, 1, job.get("init_batch", 16))
    fn = m.sample_fn(job["sample_n"])
    t = _timed(fn, 1, job["repeats"])
    s = m.last
    t.update(n=job["sample_n"], images_per_s=job["sample_n"] / t["s_median"],
             finite=bool(torch.isfinite(s.float()).all()), mem_peak=_mem())
    return t


def task_loglik(job: dict[str, Any]) -> dict[str, Any]:
    m, _ = _prepared(job, 1, job.get("init_batch", 16))
    x = m.batch(job["loglik_batch"], torch.Generator().manual_seed(job["seed"] + 5))
    fn = m.loglik_fn(x)
    t = _timed(fn, 1, job["repeats"])
    t.update(batch=job["loglik_batch"], images_per_s=job["loglik_batch"] / t["s_median"],
             bpd=m.last, mem_peak=_mem())
    return t


TASKS = {"info": task_info, "peak": task_peak, "train": task_train, "sample": task_sample,
         "loglik": task_loglik}


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(job["threads"])
    t0 = time.perf_counter()
    try:
        out = TASKS[job["task"]](job)
    except Exception as e:  # noqa: BLE001 - reported in the JSON, the run goes on
        out = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
    out["process"] = {**_usage(), **_mem(), "threads": torch.get_num_threads(),
                      "worker_s": time.perf_counter() - t0}
    return out
