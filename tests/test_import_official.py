"""`flowgraph import official`: the DenseFlow authors' checkpoints -> flowgraph checkpoints.

The fixture `fixtures/denseflow_official_keys.json` lists every state-dict entry (key, shape,
dtype) of the authors' DenseFlow-74-10 at 3×32×32, produced once by running their code. The
tests build random checkpoints in the authors' format from it; no code of theirs is used.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from flowgraph.checkpoint import load_checkpoint
from flowgraph.cli.main import main
from flowgraph.compile import spec_hash
from flowgraph.interop import (
    WeightImportError,
    import_official,
    load_mapping,
    mapping_for_spec,
    plan_import,
    read_official_checkpoint,
)
from flowgraph.spec.io import parse_spec, read_spec

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "specs" / "denseflow-74-10.yaml"
FIXTURE = json.loads((ROOT / "tests" / "fixtures" / "denseflow_official_keys.json").read_text())
CONSTANTS = {"transforms.0.ldj_per_dim": -math.log(256.0),
             "transforms.0.encoder.transforms.10.temperature": 1.0,
             "transforms.1._shift": -0.5, "transforms.1._scale": 1.0,
             "transforms.4.dist.buffer": 0.0, "transforms.6.dist.buffer": 0.0}
DTYPES = {"float32": torch.float32, "int64": torch.int64}
SPEC_ARGS = read_spec(SPEC)[0].args


def _random_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A value per entry of the fixture (distinct per tensor, so a swapped mapping shows), the
    authors' fixed constants where their code has them, ActNorm marked initialised.

    Each tensor is one random number expanded to its shape (stride 0), so the checkpoint file
    stays a few hundred kB while every key and shape is the published model's.
    """
    g = torch.Generator().manual_seed(seed)
    values = torch.randperm(10 * len(FIXTURE["entries"]), generator=g)
    sd = {}
    for i, (key, shape, dtype, _) in enumerate(FIXTURE["entries"]):
        if key in CONSTANTS:
            one = torch.tensor(CONSTANTS[key])
        elif key.endswith("initialized"):
            one = torch.tensor(1.0)
        else:
            one = values[i].to(DTYPES[dtype]) / (1 if dtype == "int64" else 4096)
        sd[key] = one.expand(shape)
    return sd


def _authors_format(sd: dict[str, torch.Tensor], prefix: str = "") -> dict:
    return {"current_epoch": 419, "train_metrics": {"bpd": [3.1]},
            "eval_metrics": {"bpd": [3.0, 2.99]}, "eval_epochs": [409, 419],
            "model": {prefix + k: v for k, v in sd.items()}}


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """The source, its files (plain and DataParallel-prefixed), the flow `import_official`
    built, and the checkpoint it wrote, read back (one import: the model is 130M parameters)."""
    d = tmp_path_factory.mktemp("official")
    sd = _random_state_dict()
    plain, prefixed, out = d / "checkpoint.pt", d / "checkpoint-dp.pt", d / "imported.pt"
    torch.save(_authors_format(sd), plain)
    torch.save(_authors_format(sd, "module."), prefixed)
    flow, report = import_official(plain, SPEC, out, dataset="cifar10")
    assert report.copied == 3719 and report.constants_checked == 6 and report.out == out
    return {"source": sd, "plain": plain, "prefixed": prefixed, "flow": flow,
            "state": load_checkpoint(out)}


def _check_equal(flow, source):
    mapping = load_mapping(mapping_for_spec(SPEC))
    target = flow.state_dict()
    plan = plan_import(source, target, mapping, SPEC_ARGS)
    for m in plan:
        got, src = target[m.target], source[m.source]
        if m.convert == "flag":
            assert bool(got) == bool(src.item() != 0), m
        else:
            assert torch.equal(got, src.reshape(got.shape).to(got.dtype)), m
    return plan


def test_fixture_matches_the_published_model():
    assert FIXTURE["entries_count"] == len(FIXTURE["entries"]) == 3725
    params = [e for e in FIXTURE["entries"] if e[3] == "parameter"]
    assert len(params) == FIXTURE["parameter_tensors"] == 3423
    assert sum(math.prod(e[1]) for e in params) == FIXTURE["parameters"] == 130_647_294


def test_import_maps_every_tensor_and_copies_the_values(imported):
    flow, source = imported["flow"], imported["source"]
    plan = _check_equal(flow, source)
    # every source entry is used once, except the six constants, which are checked
    assert len(plan) == 3719
    assert {m.source for m in plan} == set(source) - set(CONSTANTS)
    # every flowgraph parameter is filled from the source; the only other buffers are the
    # swap permutations, which the spec fixes
    targets = {m.target for m in plan}
    names = [n for n, _ in flow.named_parameters()]
    assert len(names) == 3423 and set(names) <= targets
    rest = set(flow.state_dict()) - targets
    assert rest and all(k.endswith(("swap.perm", "swap.inv_perm")) for k in rest)
    assert sum(p.numel() for p in flow.parameters()) == 130_647_294
    assert flow.is_initialized()


@pytest.mark.parametrize(("target", "source", "reshape"), [
    ("deq.base_mean", "transforms.0.encoder.base_dist.loc", True),
    ("deq.context.down.weight", "transforms.0.encoder.context_init.2.weight", False),
    ("deq.steps.2.conv.weight", "transforms.0.encoder.transforms.4.weight", False),
    ("deq.steps.2.coupling.net.1.block.layers.3.conv1.bias",
     "transforms.0.encoder.transforms.5.coupling_net.0.transform.1.dense.3.nn.0.bias", False),
    ("deq.final.weight", "transforms.0.encoder.transforms.8.weight", False),
    ("block2.u1.m3.coupling.net.branches.0.qkv.weight",
     ("transforms.5.blocks.1.transforms.3.transforms.2.coupling_net.0.dn.transform.1.mha.qkv"
     ".weight"), False),
    ("block3.u0.m19.coupling.net.branches.1.out.conv.bias",
     ("transforms.7.blocks.0.transforms.19.transforms.2.coupling_net.0.dn.transform.1.dense.7"
     ".conv.bias"), False),
    ("block1.u5.m4.coupling.net.norm.running_var",
     ("transforms.3.blocks.5.transforms.4.transforms.2.coupling_net.0.dn.transform.1.mix_conv.0"
     ".running_var"), False),
    ("block1.u3.aug.g.2.weight", "transforms.3.noise_params.2.transformation.2.weight", False),
    ("block2.u2.m5.actnorm.log_scale", "transforms.5.blocks.2.transforms.5.transforms.0.log_scale",
     False),
    ("z.log_std", "base_dist.log_scale", False),
])
def test_spot_checks_written_by_hand(imported, target, source, reshape):
    got = imported["flow"].state_dict()[target]
    want = imported["source"][source]
    assert torch.equal(got, want.reshape(got.shape) if reshape else want)


def test_the_written_checkpoint_holds_the_weights_and_its_spec(imported):
    state, flow = imported["state"], imported["flow"]
    assert state["spec_hash"] == flow.spec_hash == spec_hash(parse_spec(state["spec_text"])[0])
    assert state["spec_text"] == flow.spec_text
    written, expected = state["model"], flow.state_dict()
    assert list(written) == list(expected)
    for k, v in expected.items():  # shapes and dtypes of all, leading values (130M in total)
        w = written[k]
        assert w.shape == v.shape and w.dtype == v.dtype, k
        assert torch.equal(w.reshape(-1)[:64], v.reshape(-1)[:64]), k


def test_imported_checkpoint_carries_provenance_and_a_training_state(imported):
    state = imported["state"]
    assert state["imported"]["epoch"] == 419
    assert state["imported"]["eval_metrics_last"] == {"bpd": 2.99}
    assert len(state["imported"]["sha256"]) == 64
    assert state["config"]["dataset"] == "cifar10"
    assert state["step"] == 0 and state["optimizer"]["state"] == {}


def test_dataparallel_prefix_is_stripped(imported):
    sd, meta = read_official_checkpoint(imported["prefixed"])
    assert meta["data_parallel_prefix"] is True and meta["epoch"] == 419
    assert set(sd) == set(imported["source"])
    first = {k: v[(0,) * v.dim()] for k, v in imported["source"].items()}
    assert all(v[(0,) * v.dim()] == first[k] for k, v in sd.items())
    mapping = load_mapping(mapping_for_spec(SPEC))
    plan = plan_import(sd, imported["flow"].state_dict(), mapping, SPEC_ARGS)
    assert len(plan) == 3719


def test_missing_extra_and_misshapen_keys_are_reported_together(imported):
    source = {k: tuple(v.shape) for k, v in imported["source"].items()}
    gone = "transforms.5.blocks.2.transforms.1.transforms.1.weight"
    bent = "transforms.3.noise_params.0.transformation.0.weight"
    del source[gone]
    source["transforms.9.extra.weight"] = (3, 3)
    source[bent] = (48, 12, 1, 1)
    mapping = load_mapping(mapping_for_spec(SPEC))
    with pytest.raises(WeightImportError) as e:
        plan_import(source, imported["flow"].state_dict(), mapping, SPEC_ARGS)
    msg = str(e.value)
    assert gone in msg and "block2.u2.m1.conv.weight" in msg
    assert "transforms.9.extra.weight" in msg
    assert f"{bent}: [48, 12, 1, 1], expected [48, 12, 3, 3]" in msg


def test_a_changed_constant_is_reported(imported):
    source = dict(imported["source"])
    source["transforms.1._shift"] = torch.tensor(0.25)
    mapping = load_mapping(mapping_for_spec(SPEC))
    with pytest.raises(WeightImportError, match=r"transforms\.1\._shift is 0\.25, expected -0\.5"):
        plan_import(source, imported["flow"].state_dict(), mapping, SPEC_ARGS)


class _Payload:
    """Unpickling this would run code (creates a file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_payload_is_refused_without_running_it(tmp_path, capsys):
    marker = tmp_path / "ran"
    bad = tmp_path / "checkpoint.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "payload": _Payload(marker)}, bad)
    with pytest.raises(WeightImportError, match="cannot be read safely") as e:
        read_official_checkpoint(bad)
    assert "weights_only=False" not in str(e.value) and "(it asks for " in str(e.value)
    assert main(["import", "official", str(bad), "--spec", str(SPEC), "-o",
                 str(tmp_path / "out.pt")]) == 2
    err = capsys.readouterr().err
    assert "cannot be read safely" in err and "weights_only" not in err
    assert not marker.exists() and not (tmp_path / "out.pt").exists()


def test_not_a_checkpoint_is_refused(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a zip file")
    with pytest.raises(WeightImportError, match="cannot be read"):
        read_official_checkpoint(junk)
    torch.save({"format": 1, "spec_text": "x", "spec_hash": "y", "model": {}}, junk)
    with pytest.raises(WeightImportError, match="already a flowgraph checkpoint"):
        read_official_checkpoint(junk)
    torch.save({"epoch": 3}, tmp_path / "nomodel.pt")
    with pytest.raises(WeightImportError, match="no 'model' state dict"):
        read_official_checkpoint(tmp_path / "nomodel.pt")


@pytest.mark.parametrize(("override", "reason"), [
    ("conv=lu", "conv is 'lu' but must be 'plain'"),
    ("g_norm=batch", "g_norm is 'batch' but must be 'none'"),
    ("dequantization=dequantize_uniform", "dequantization is 'dequantize_uniform'"),
])
def test_a_spec_that_differs_from_the_authors_code_is_refused(tmp_path, capsys, override,
                                                              reason):
    # refused before the checkpoint is even read
    rc = main(["import", "official", str(tmp_path / "absent.pt"), "--spec", str(SPEC),
               "--set", override, "-o", str(tmp_path / "out.pt")])
    assert rc == 2
    assert reason in capsys.readouterr().err


def test_paper_attention_switches_are_refused():
    with pytest.raises(WeightImportError) as e:
        import_official("absent.pt", SPEC, None, overrides={
            "coupling_net": {"kind": "dense_attention", "width": 48, "depth": 7, "growth": 64,
                             "attention": {"landmarks": 4, "layout": "pixel",
                                           "softmax": "standard"}}})
    assert "coupling_net.attention.layout is 'pixel'" in str(e.value)
    assert "coupling_net.attention.softmax is 'standard'" in str(e.value)


def test_a_spec_without_a_mapping_is_refused(tmp_path):
    with pytest.raises(Exception, match="no weight mapping"):
        import_official(tmp_path / "absent.pt", ROOT / "specs" / "glow.yaml", None)


def test_cli_reports_what_it_did(monkeypatch, capsys, tmp_path):
    from flowgraph.interop import ImportReport

    seen = {}

    def fake(checkpoint, spec, out, **kw):
        seen.update(kw, checkpoint=checkpoint, spec=spec, out=out)
        return None, ImportReport(Path(out), 3725, 3719, 6, 148, 130_647_294, 3423, "abc",
                                  {"epoch": 419, "eval_metrics_last": {"bpd": 2.99}})

    monkeypatch.setattr("flowgraph.interop.import_official", fake)
    out = tmp_path / "m.pt"
    assert main(["import", "official", "c.pt", "--spec", str(SPEC), "--set", "size=64",
                 "--dequant-clamp", "none", "--dataset", "imagenet64", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "mapped 3719 tensors (3423 parameter tensors, 130,647,294 parameters)" in text
    assert "epoch 419" in text and f"wrote {out}" in text
    assert seen["overrides"] == {"size": 64} and seen["dequant_clamp"] == "none"
    assert seen["dataset"] == "imagenet64" and seen["training_state"] is True
    assert main(["import", "official", "c.pt", "--spec", str(SPEC)]) == 2  # no -o


def test_dequant_clamp_none_is_written_on_the_dequantization_node():
    from flowgraph.interop.official import _with_clamp_none
    from flowgraph.spec.io import dump_spec

    spec = _with_clamp_none(read_spec(SPEC)[0], load_mapping(mapping_for_spec(SPEC)).dequantizer)
    deq = next(n for n in spec.nodes if n.id == "deq")
    assert deq.params == {"clamp": "none"}
    assert "clamp: none" in dump_spec(spec)


def test_clamp_none_leaves_the_dequantization_noise_as_sampled():
    from flowgraph.ops.dequantize_variational import (
        DequantizeVariational,
        DequantizeVariationalParams,
    )

    x = torch.tensor([[[[7.0]]]]).expand(1, 3, 2, 2)
    u = torch.tensor([0.0, 1e-6, 0.5, 1.0 - 1e-6]).repeat(3).view(1, 3, 2, 2)
    y = {}
    for clamp in ("margin", "none"):
        with torch.random.fork_rng():  # leave the global RNG as other test files expect it
            op = DequantizeVariational(3, 2, 2, 8, DequantizeVariationalParams(clamp=clamp))
        y[clamp] = op.place(x, u) * 256 - 7
    assert torch.allclose(y["none"], u, atol=1e-6)
    assert y["margin"].min() >= 2**-10 - 1e-6 and y["margin"].max() <= 1 - 2**-10 + 1e-6


def test_the_documented_commands_parse():
    from flowgraph.cli.main import build_parser

    text = (ROOT / "docs" / "published-weights.md").read_text().replace("\\\n", " ")
    lines = [ln.split("#")[0].split() for ln in text.splitlines()
             if ln.startswith("flowgraph import official")]
    assert len(lines) >= 3
    for tokens in lines:
        args = build_parser().parse_args(tokens[1:])
        assert args.source_format == "official" and args.spec.endswith("denseflow-74-10.yaml")
