"""Compiled flows pickle and deep-copy (rebuilt from spec text + state dict, like fx's
GraphModule), and their generated source leaves `linecache` when the class is collected."""

from __future__ import annotations

import copy
import gc
import linecache
import os
import pickle
import subprocess
import sys
import weakref

import torch
from conftest import ROOT

from flowgraph import testing as ft
from flowgraph.compile import compile_spec

SPEC = ROOT / "specs" / "denseflow-fmnist.yaml"


def _trained_like(seed: int = 0):
    flow = compile_spec(SPEC, {"units": [2, 1], "modules": [1, 1]}, seed=seed)
    x = torch.randint(0, 256, (4, *flow.data_shape)).float()
    flow.initialize(x)
    ft.perturb_(flow, scale=0.02)
    return flow.eval(), x


def test_pickle_round_trip_in_a_fresh_process(tmp_path):
    flow, x = _trained_like()
    noise = flow.draw_noise(4, torch.Generator().manual_seed(0))
    eps = torch.randn(3, flow.latent_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = {"log_prob": flow.log_prob_once(x, None, noise),
                "sample": flow.sample_from_noise(eps, None)}
    (tmp_path / "flow.pkl").write_bytes(pickle.dumps(flow))
    torch.save({"x": x, "noise": noise, "eps": eps}, tmp_path / "inputs.pt")
    child = (
        "import pickle, sys, torch\n"
        "flow = pickle.loads(open(sys.argv[1] + '/flow.pkl', 'rb').read())\n"
        "i = torch.load(sys.argv[1] + '/inputs.pt')\n"
        "assert not flow.training\n"
        "with torch.no_grad():\n"
        "    out = {'log_prob': flow.log_prob_once(i['x'], None, i['noise']),\n"
        "           'sample': flow.sample_from_noise(i['eps'], None)}\n"
        "torch.save(out, sys.argv[1] + '/out.pt')\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", child, str(tmp_path)], check=True, env=env,
                   cwd=tmp_path)
    got = torch.load(tmp_path / "out.pt")
    assert torch.equal(got["log_prob"], want["log_prob"])
    assert torch.equal(got["sample"], want["sample"])


def test_deepcopy_keeps_dtype_mode_and_freeze():
    flow, x = _trained_like()
    flow = flow.double().freeze().train()
    twin = copy.deepcopy(flow)
    assert type(twin) is not type(flow)  # a new compile, not a shared class
    assert twin.training and twin._ref.dtype == torch.float64
    frozen = [m.frozen for m in twin.modules() if hasattr(m, "frozen")]
    assert frozen and all(frozen)
    twin.eval()
    flow.eval()
    noise = flow.draw_noise(4, torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(twin.log_prob_once(x.double(), None, noise),
                           flow.log_prob_once(x.double(), None, noise))
    # independent parameters
    next(twin.parameters()).data.add_(1.0)
    assert not torch.equal(next(twin.parameters()), next(flow.parameters()))


def test_generated_source_leaves_linecache_when_the_class_is_collected():
    flow = compile_spec(ROOT / "specs" / "realnvp-2d.yaml", seed=0)
    names = [type(flow)._source_file]
    assert all(n in linecache.cache for n in names)
    ref = weakref.ref(type(flow))
    del flow
    gc.collect()
    assert ref() is None
    assert not any(n in linecache.cache for n in names)
