"""Checkpoints: safetensors + JSON round trips (RNN, Transformer, tied weights, optimizer, RNG),
atomic replacement, and loud failures on truncated, altered or foreign files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

import attnkit as ak
from attnkit.models import checkpoint as ckpt
from attnkit.rnn import RNNConfig

V = 23


def small(**kw) -> ak.RNNSeq2Seq:
    return ak.RNNSeq2Seq(RNNConfig(V, **{"embed_dim": 8, "hidden_dim": 12, **kw}))


def batch() -> tuple[torch.Tensor, None, torch.Tensor]:
    """Source (4, 9) and target inputs (4, 6) of random non-special ids."""
    g = torch.Generator().manual_seed(0)
    return torch.randint(3, V, (4, 9), generator=g), None, torch.randint(3, V, (4, 6), generator=g)


def _same_outputs(a: nn.Module, b: nn.Module) -> None:
    src, _, tgt = batch()
    assert torch.equal(a.eval()(src, tgt), b.eval()(src, tgt))


@pytest.mark.parametrize("kw", [{}, {"cell": "lstm", "attention": "general", "num_layers": 2},
                                {"tie_embeddings": True, "embed_dim": 12}])
def test_checkpoint_round_trip(tmp_path, kw):
    model = small(**kw)
    ak.save_model(model, tmp_path / "ck")
    loaded = ak.load(tmp_path / "ck")
    assert type(loaded) is ak.RNNSeq2Seq and loaded.config == model.config
    _same_outputs(model, loaded)
    if kw.get("tie_embeddings"):
        assert loaded.decoder.out.weight is loaded.decoder.embed.weight
    assert not [p for p in tmp_path.iterdir() if p.name != "ck"]  # no temp dirs left behind


def test_checkpoint_transformer_round_trip(tmp_path):
    cfg = ak.TransformerConfig(V, embed_dim=16, num_heads=2, num_encoder_layers=1, num_decoder_layers=1, ff_dim=32)
    model = ak.TransformerSeq2Seq(cfg)
    ak.save_model(model, tmp_path / "t")
    loaded = ak.load(tmp_path / "t")
    assert type(loaded) is ak.TransformerSeq2Seq
    _same_outputs(model, loaded)


def test_checkpoint_replaces_previous_atomically(tmp_path):
    d = tmp_path / "ck"
    first, second = small(), small(hidden_dim=16)
    ak.save_model(first, d)
    ak.save_model(second, d)
    assert ak.load(d).config.hidden_dim == 16


def test_failed_write_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    d = tmp_path / "ck"
    good = small()
    ak.save_model(good, d)
    before = {p.name: p.read_bytes() for p in d.iterdir()}

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "fsync_path", boom)  # fail after the weights were written
    with pytest.raises(OSError, match="disk full"):
        ak.save_model(small(hidden_dim=16), d)
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]
    _same_outputs(good, ak.load(d))


def test_temp_folders_a_killed_save_left_are_swept(tmp_path):
    """The next save removes the temp folders of a save killed midway, when the checkpoint
    beside them is whole; without one, a ``.old`` folder (the last checkpoint, if the fallback
    swap was killed between its renames) stays."""
    d = tmp_path / "ck"
    ak.save_model(small(), d)
    for name in (".ck.tmp-abc123", ".ck.tmp-def456.old"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"partial")
    (tmp_path / ".other.tmp-x").mkdir()  # another checkpoint's: not ours to remove
    ak.save_model(small(hidden_dim=16), d)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-x", "ck"]
    lone = tmp_path / "lone"
    (tmp_path / ".lone.tmp-ghi789.old").mkdir()
    ak.save_model(small(), lone)
    assert (tmp_path / ".lone.tmp-ghi789.old").is_dir()


@pytest.mark.parametrize("files", [[1, 2], {"model.safetensors": {"sha256": "0"}}, {"model.safetensors": 5}])
def test_a_malformed_files_entry_is_one_clear_error(tmp_path, files):
    d = tmp_path / "ck"
    ak.save_model(small(), d)
    manifest = json.loads((d / "config.json").read_text())
    manifest["files"] = files
    (d / "config.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="'files' must map"):
        ak.load(d)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ak.load(tmp_path / "nope")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("hi")
    with pytest.raises(FileNotFoundError, match="not an attnkit checkpoint"):
        ak.load(tmp_path / "plain")
    with pytest.raises(ValueError, match="refusing to overwrite"):
        ak.save_model(small(), tmp_path / "plain")
    assert (tmp_path / "plain" / "notes.txt").read_text() == "hi"

    d = tmp_path / "ck"
    ak.save_model(small(), d)
    weights = d / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(ValueError, match="truncated"):
        ak.load(d)
    weights.write_bytes(data[:-4] + b"\0\0\0\0")  # same size, altered
    with pytest.raises(ValueError, match="corrupt"):
        ak.load(d)
    weights.write_bytes(data)
    ak.load(d)

    manifest = json.loads((d / "config.json").read_text())
    manifest["config"]["hidden_dim"] = 16  # config no longer fits the weights
    (d / "config.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="do not match its config"):
        ak.load(d)
    manifest["config"]["hidden_dim"] = 12
    manifest["config"]["flux"] = 1
    (d / "config.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="flux"):
        ak.load(d)
    manifest["config"].pop("flux")
    manifest["model"] = "Mystery"
    (d / "config.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="Mystery"):
        ak.load(d)
    (d / "config.json").write_text('{"format": "attnkit-checkpoint", "vers')
    with pytest.raises(ValueError, match="not valid JSON"):
        ak.load(d)


def test_optimizer_and_rng_round_trip(tmp_path):
    import random

    model = small()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.98))
    src, _, tgt = batch()
    for _ in range(2):
        model(src, tgt).sum().backward()
        opt.step()
    torch.manual_seed(5)
    random.seed(5)
    state = ckpt.rng_state()
    ak.save_model(model, tmp_path / "ck", optimizer=opt, trainer_state={"rng": state})
    expected = (torch.rand(3), random.random())
    opt2 = torch.optim.AdamW(model.parameters(), lr=1.0)
    ckpt.load_optimizer(tmp_path / "ck", opt2)
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for k in a["state"]:
        for name, value in a["state"][k].items():
            assert torch.equal(value, b["state"][k][name])
    ckpt.set_rng_state(ckpt.load_trainer_state(tmp_path / "ck")["rng"])
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1]
    assert os.listdir(tmp_path) == ["ck"]
    assert Path(tmp_path / "ck" / "optimizer.safetensors").is_file()
