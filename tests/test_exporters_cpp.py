"""exporters/cpp: build flowgraph-run with CMake against the torch wheel's libtorch and run it
on an exported Fashion-MNIST DenseFlow (specs/denseflow-fmnist.yaml, random init).

The build is cached in build/exporters-cpp (git-ignored; ninja makes a rebuild a no-op) and done
once per session. Skipped when cmake, ninja or a C++ compiler is missing (`make setup`
installs the cmake and ninja wheels with the `export` extra).
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT

from flowgraph import testing as ft
from flowgraph.compile import compile_spec
from flowgraph.evaluate import sample_images
from flowgraph.export import export_flow, prepare_for_export, quantize

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.usefixtures("one_thread")]
BUILD = ROOT / "build" / "exporters-cpp"



def _tool(name: str) -> str | None:
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


@pytest.fixture(scope="session")
def flowgraph_run() -> Path:
    cmake, ninja = _tool("cmake"), _tool("ninja")
    if cmake is None or ninja is None or shutil.which("c++") is None:
        pytest.skip("needs cmake, ninja and a C++ compiler (pip install 'flowgraph[export]')")
    subprocess.run([cmake, "-S", str(ROOT / "exporters" / "cpp"), "-B", str(BUILD), "-G", "Ninja",
                    f"-DCMAKE_MAKE_PROGRAM={ninja}", "-DCMAKE_BUILD_TYPE=Release",
                    f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}"],
                   check=True, capture_output=True)
    subprocess.run([cmake, "--build", str(BUILD)], check=True, capture_output=True)
    return BUILD / "flowgraph-run"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    flow = compile_spec(ROOT / "specs" / "denseflow-fmnist.yaml", seed=0)
    g = torch.Generator().manual_seed(0)
    flow.initialize(torch.randint(0, 256, (8, *flow.data_shape), generator=g).float())
    ft.perturb_(flow, scale=0.02)
    out = tmp_path_factory.mktemp("cpp") / "fmnist.pt"
    export_flow(flow, out, "torchscript", fresh_process=False)
    return prepare_for_export(flow), out


def _run(exe: Path, *args) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(exe), *map(str, args)], check=True, capture_output=True,
                          text=True, env=env).stdout


def test_bits_per_dim_of_64_images_matches_python(flowgraph_run, exported):
    flow, model = exported
    work = model.parent
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (64, *flow.data_shape), generator=g, dtype=torch.uint8)
    noise = torch.randn(64, flow.noise_dim, generator=g)
    x.numpy().tofile(work / "images.bin")
    noise.numpy().tofile(work / "noise.bin")
    scale = flow.data_dims * math.log(2.0)
    with torch.no_grad():
        want = (-flow.log_prob_once(x.float(), None, noise) / scale).numpy()
    out = _run(flowgraph_run, model, "bpd", work / "images.bin", "--noise", work / "noise.bin",
               "--out", work / "bpd.bin")
    got = np.fromfile(work / "bpd.bin", np.float32)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert "over 64 images" in out
    # noise drawn inside from a seed: torch.Generator().manual_seed(5), randn [N, noise_dim]
    _run(flowgraph_run, model, "bpd", work / "images.bin", "--seed", 5, "--out",
         work / "bpd5.bin")
    seeded = torch.randn(64, flow.noise_dim, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = (-flow.log_prob_once(x.float(), None, seeded) / scale).numpy()
    np.testing.assert_allclose(np.fromfile(work / "bpd5.bin", np.float32), want, rtol=1e-5)


def test_samples_from_a_noise_file_match_exactly_after_quantization(flowgraph_run, exported):
    flow, model = exported
    work = model.parent
    eps = torch.randn(16, flow.latent_dim, generator=torch.Generator().manual_seed(2))
    eps.numpy().tofile(work / "eps.bin")
    _run(flowgraph_run, model, "sample", "--noise", work / "eps.bin", "-t", 0.8,
         "--raw", work / "s.bin", "-o", work / "grid.ppm")
    with torch.no_grad():
        want = quantize(flow.sample_from_noise(eps * 0.8, None), 8)
    got = np.fromfile(work / "s.bin", np.uint8).reshape(want.shape)
    assert np.array_equal(got, want.numpy())
    header = (work / "grid.ppm").read_bytes()[:16].split(b"\n")
    assert header[0] == b"P6" and header[1] == b"122 122"  # 4×4 grid of 28 px, 2 px padding


def test_seeded_samples_equal_flowgraph_sample(flowgraph_run, exported):
    flow, model = exported
    _run(flowgraph_run, model, "sample", "-n", 4, "-t", 0.8, "--seed", 0, "--raw",
         model.parent / "seeded.bin")
    want = sample_images(flow, 4, temperature=0.8, seed=0)
    got = np.fromfile(model.parent / "seeded.bin", np.uint8).reshape(want.shape)
    assert np.array_equal(got, want.numpy())
    info = _run(flowgraph_run, model, "info")
    assert f"spec_hash {flow.spec_hash}" in info and "data_shape 1 28 28" in info
