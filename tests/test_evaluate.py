"""`flowgraph.evaluate` (bits/dim with the IW bound, sampling) and `flowgraph eval/sample`."""

from __future__ import annotations

import json
import math
import struct

import numpy as np
import pytest
import torch

from flowgraph.checkpoint import save_checkpoint
from flowgraph.cli.main import main
from flowgraph.compile import compile_spec
from flowgraph.evaluate import EvalError, evaluate_bpd, image_noise, sample_images
from flowgraph.images import write_png
from flowgraph.spec import parse_spec

SPEC = """
flowgraph: 1
name: tiny-eval
inputs:
  x: {shape: [1, 4, 4], bits: 8}
nodes:
  - {id: deq, op: dequantize_uniform, in: x}
  - {id: sq, op: squeeze, in: deq}
  - {id: an, op: actnorm, in: sq}
  - {id: c1, op: affine_coupling, in: an, params: {net: {kind: NET, hidden: 8}}}
  - {id: sp, op: split, in: c1}
  - {id: aug, op: cross_unit_coupling, in: "sp:first", condition: [sq], params: {growth: 2}}
  - {id: c2, op: affine_coupling, in: aug, params: {net: {kind: NET, hidden: 8}}}
outputs:
  z1: {from: "sp:second"}
  z: {from: c2, prior: {dist: channel_normal}}
"""
N_IMAGES = 20
D = 16


def _images(n: int = N_IMAGES, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # smooth-ish images, so the flow has something to model
    base = torch.randint(60, 200, (n, 1, 1, 1), generator=g)
    return (base + torch.randint(-40, 40, (n, 1, 4, 4), generator=g)).clamp(0, 255).to(torch.uint8)


def _flow(net: str = "glow"):
    """A tiny initialised flow whose zero-initialised layers are perturbed (so every node,
    BatchNorm included, affects the output)."""
    spec, smap = parse_spec(SPEC.replace("kind: NET", f"kind: {net}" +
                                         (", norm: batch" if net == "resnet" else "")))
    flow = compile_spec(spec, smap=smap, seed=0)
    x = _images(64, seed=2)
    with torch.random.fork_rng(), torch.no_grad():  # initialize draws dequantization noise
        torch.manual_seed(3)
        flow.initialize(x)
        for p in flow.parameters():
            p.add_(0.1 * torch.randn(p.shape))
        if net == "resnet":  # running statistics away from (0, 1)
            flow.train()
            for _ in range(3):
                flow.log_prob_once(x)
    return flow


@pytest.fixture(scope="module")
def flow():
    return _flow()


@pytest.fixture(scope="module")
def data():
    return _images()


def _direct_bpd(flow, x: torch.Tensor, k: int, seed: int = 0) -> np.ndarray:
    """The IW bound written out: K single-sample bounds with `image_noise`, log-mean-exp."""
    noise = image_noise(flow, range(len(x)), k, seed=seed)
    flow.eval()
    with torch.no_grad():
        lw = torch.stack([flow.log_prob_once(x, None, noise[:, s]) for s in range(k)], 1)
    logp = torch.logsumexp(lw.double(), 1) - math.log(k)
    return (-logp / (D * math.log(2))).numpy()


def _direct_bpd_sample(flow, x: torch.Tensor, k: int, s: int) -> np.ndarray:
    """bits/dim of the single-sample bound with the s-th of the K noise draws."""
    noise = image_noise(flow, range(len(x)), k)[:, s]
    with torch.no_grad():
        return (-flow.log_prob_once(x, None, noise).double() / (D * math.log(2))).numpy()


# -- bits/dim ----------------------------------------------------------------------------------
def test_k1_is_the_single_sample_bound(flow, data):
    r = evaluate_bpd(flow, data, k=1, batch_size=7)
    expected = _direct_bpd(flow, data, 1)
    np.testing.assert_allclose(r.per_image, expected, rtol=0, atol=1e-5)
    assert r.bpd == pytest.approx(expected.mean(), abs=1e-6)
    assert (r.n_images, r.k, r.bound) == (N_IMAGES, 1, "single-sample bound")
    assert 0 < r.bpd < 16 and r.seconds > 0 and r.images_per_s > 0


def test_iw_bound_is_logmeanexp_and_no_worse_than_k1(flow, data):
    r8 = evaluate_bpd(flow, data, k=8)
    np.testing.assert_allclose(r8.per_image, _direct_bpd(flow, data, 8), rtol=0, atol=1e-5)
    assert r8.bound == "IW bound"
    # Jensen, per image and exact: log mean exp(L_s) ≥ mean L_s over the same 8 noise draws
    each = np.stack([_direct_bpd_sample(flow, data, 8, s) for s in range(8)], 1)
    assert (r8.per_image <= each.mean(1) + 1e-6).all()
    # E[bound_K] is non-decreasing in K: bpd(K=8) ≤ bpd(K=1), the latter averaged over seeds
    k1 = np.mean([evaluate_bpd(flow, data, k=1, seed=seed).bpd for seed in range(8)])
    assert r8.bpd <= k1 + 1e-3


def test_chunking_and_batching_do_not_change_the_value(flow, data):
    whole = evaluate_bpd(flow, data, k=8, kbs=0, batch_size=64)
    chunked = evaluate_bpd(flow, data, k=8, kbs=3, batch_size=6)
    one_by_one = evaluate_bpd(flow, data, k=8, kbs=1, batch_size=1)
    np.testing.assert_allclose(chunked.per_image, whole.per_image, rtol=0, atol=1e-5)
    np.testing.assert_allclose(one_by_one.per_image, whole.per_image, rtol=0, atol=1e-5)
    head = evaluate_bpd(flow, data, k=8, max_images=5)  # an image's noise is its own
    np.testing.assert_allclose(head.per_image, whole.per_image[:5], rtol=0, atol=1e-5)


def test_standard_error_over_images(flow, data):
    r = evaluate_bpd(flow, data, k=2, max_images=11)
    assert r.n_images == 11 and r.per_image.shape == (11,)
    assert r.stderr == pytest.approx(np.std(r.per_image, ddof=1) / math.sqrt(11), rel=1e-12)
    assert r.bpd == pytest.approx(r.per_image.mean(), rel=1e-12)
    single = evaluate_bpd(flow, data, max_images=1)
    assert math.isnan(single.stderr) and single.to_dict()["stderr"] is None


def test_same_seed_same_numbers_other_seed_other_numbers(flow, data):
    a = evaluate_bpd(flow, data, k=3, seed=5)
    b = evaluate_bpd(flow, data, k=3, seed=5)
    c = evaluate_bpd(flow, data, k=3, seed=6)
    np.testing.assert_array_equal(a.per_image, b.per_image)
    assert not np.allclose(a.per_image, c.per_image)


def test_batchnorm_runs_in_eval_mode_and_mode_is_restored():
    flow = _flow("resnet")
    x = _images(8)
    flow.train()
    with torch.no_grad():  # in train mode, BatchNorm makes an image's value depend on its batch
        noise = image_noise(flow, range(8), 1)[:, 0]
        together = flow.log_prob_once(x, None, noise)
        alone = flow.log_prob_once(x[:1], None, noise[:1])
    assert not torch.allclose(together[:1], alone, atol=1e-4)
    by_one = evaluate_bpd(flow, x, k=2, batch_size=1)
    by_eight = evaluate_bpd(flow, x, k=2, batch_size=8)
    np.testing.assert_allclose(by_one.per_image, by_eight.per_image, rtol=0, atol=1e-5)
    assert flow.training  # restored


def test_data_that_do_not_fit_the_model_are_refused(flow):
    with pytest.raises(EvalError, match=r"spec's input is \[1, 4, 4\]"):
        evaluate_bpd(flow, torch.zeros(3, 1, 5, 5, dtype=torch.uint8))
    with pytest.raises(EvalError, match="k must be at least 1"):
        evaluate_bpd(flow, _images(2), k=0)


# -- sampling ----------------------------------------------------------------------------------
def test_sample_images_shape_dtype_and_seed(flow):
    a = sample_images(flow, 10, seed=4, batch_size=3)
    b = sample_images(flow, 10, seed=4, batch_size=10)
    c = sample_images(flow, 10, seed=5)
    assert a.shape == (10, 1, 4, 4) and a.dtype == torch.uint8
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert len({tuple(img.flatten().tolist()) for img in a}) > 1


def test_temperature_zero_gives_one_image(flow):
    s = sample_images(flow, 6, temperature=0.0, seed=0)
    assert all(torch.equal(s[0], img) for img in s)
    with pytest.raises(EvalError, match="temperature"):
        sample_images(flow, 2, temperature=-1.0)


VECTOR_SPEC = """
flowgraph: 1
name: tiny-vector
inputs:
  x: {shape: [2]}
nodes:
  - {id: norm, op: actnorm, in: x}
  - {id: c, op: affine_coupling, in: norm, params: {net: {kind: mlp, hidden: [8]}}}
outputs:
  z: {from: c}
"""


def test_continuous_flow_is_exact_and_samples_floats(tmp_path, capsys):
    spec, smap = parse_spec(VECTOR_SPEC)
    flow = compile_spec(spec, smap=smap, seed=0)
    x = torch.randn(30, 2, generator=torch.Generator().manual_seed(0))
    flow.initialize(x)
    r1, r8 = evaluate_bpd(flow, x, k=1), evaluate_bpd(flow, x, k=8)
    assert r8.bound == "exact" and r8.exact
    np.testing.assert_array_equal(r1.per_image, r8.per_image)
    with torch.no_grad():
        exact = -flow.log_prob_once(x).double() / (2 * math.log(2))
    np.testing.assert_allclose(r1.per_image, exact.numpy(), rtol=1e-6)
    s = sample_images(flow, 5, seed=1)
    assert s.shape == (5, 2) and s.dtype == torch.float32
    path = tmp_path / "vec.pt"
    save_checkpoint(path, {"spec_text": flow.spec_text, "spec_hash": flow.spec_hash,
                           "model": flow.state_dict()})
    assert main(["sample", str(path), "-n", "5", "-o", str(tmp_path / "g.png")]) == 2
    assert "PNG grid needs discrete image data" in capsys.readouterr().err
    raw = tmp_path / "vec.npy"
    assert main(["sample", str(path), "-n", "5", "--seed", "1", "--save-raw", str(raw)]) == 0
    np.testing.assert_allclose(np.load(raw), s.numpy(), rtol=1e-6)


# -- the command line --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, flow):
    root = tmp_path_factory.mktemp("evaldata")
    for split, seed in (("train", 7), ("test", 8)):
        for i, img in enumerate(_images(6, seed)):
            write_png(img[0].numpy(), root / split / f"{i:02d}.png")
    config = {"dataset": "folder", "data_dir": str(root), "dataset_options": {"channels": 1},
              "val_images": 2}
    try:  # what `flowgraph train` records: the whole TrainConfig as a dict
        from flowgraph.train.config import TrainConfig
        config = TrainConfig(**config).model_dump(mode="json")
    except ImportError:
        pass
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, {"spec_text": flow.spec_text, "spec_hash": flow.spec_hash,
                           "model": flow.state_dict(), "config": config})
    return path


def test_cli_eval_text_and_json(ckpt, capsys):
    assert main(["eval", str(ckpt), "--k", "4", "--kbs", "3"]) == 0
    out = capsys.readouterr().out
    assert "test bits/dim (K=4, IW bound):" in out and "(n=6)" in out
    assert main(["eval", str(ckpt), "--split", "train", "--json", "--max-images", "5"]) == 0
    d = json.loads(capsys.readouterr().out)  # 4 = 6 training images - 2 held out
    assert d["ok"] and d["split"] == "train" and d["n_images"] == 4 and d["k"] == 1
    assert d["dataset"] == "folder" and 0 < d["bpd"] < 16 and d["stderr"] > 0
    assert main(["eval", str(ckpt), "--split", "validation", "--json"]) == 0
    v = json.loads(capsys.readouterr().out)
    assert v["split"] == "validation" and v["n_images"] == 2 and v["bpd"] != d["bpd"]


def test_cli_eval_refuses_data_of_another_shape(ckpt, capsys):
    assert main(["eval", str(ckpt), "--data-option", "size=8"]) == 1
    err = capsys.readouterr().err
    assert "[1, 8, 8]" in err and "spec takes [1, 4, 4]" in err


def test_cli_sample_writes_png_and_raw(ckpt, tmp_path, capsys):
    png, raw, pt = tmp_path / "grid.png", tmp_path / "s.npy", tmp_path / "s.pt"
    assert main(["sample", str(ckpt), "-n", "6", "--temperature", "0.8", "--seed", "0",
                 "-o", str(png), "--nrow", "3", "--save-raw", str(raw)]) == 0
    head = png.read_bytes()
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", head[16:24])
    assert (width, height) == (20 * 26, 14 * 26)  # 3×2 tiles of 4 px, 2 px padding, ×26 >= 512
    assert main(["sample", str(ckpt), "-n", "6", "-o", str(png), "--nrow", "3",
                 "--min-side", "0"]) == 0
    assert struct.unpack(">II", png.read_bytes()[16:24]) == (3 * 6 + 2, 2 * 6 + 2)  # raw
    arr = np.load(raw, allow_pickle=False)
    assert arr.shape == (6, 1, 4, 4) and arr.dtype == np.uint8
    assert main(["sample", str(ckpt), "-n", "6", "--temperature", "0.8",
                 "--save-raw", str(pt)]) == 0
    assert np.array_equal(torch.load(pt, weights_only=True).numpy(), arr)
    assert "wrote" in capsys.readouterr().out


def test_cli_sample_refuses_bad_outputs(ckpt, tmp_path, capsys):
    assert main(["sample", str(ckpt)]) == 2
    assert "-o FILE.png" in capsys.readouterr().err
    assert main(["sample", str(ckpt), "-o", str(tmp_path / "g.jpg")]) == 2
    assert "must end in .png" in capsys.readouterr().err
    assert main(["sample", str(ckpt), "-o", str(tmp_path / "g.png"), "--min-side", "-1"]) == 2
    assert "--min-side must be 0" in capsys.readouterr().err


def test_cli_missing_and_corrupt_checkpoints(tmp_path, capsys):
    missing = tmp_path / "nope.pt"
    assert main(["eval", str(missing)]) == 1
    assert str(missing) in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a checkpoint")
    for argv in (["eval", str(bad)], ["sample", str(bad), "-o", str(tmp_path / "g.png")]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert str(bad) in err and "corrupt" in err
