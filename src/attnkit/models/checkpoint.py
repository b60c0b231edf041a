"""Checkpoints: safetensors for tensors, JSON for everything else, written atomically.

A checkpoint is a directory::

    config.json          {"format": "attnkit-checkpoint", "version": 1, "model": "RNNSeq2Seq",
                          "config": dataclasses.asdict(model.config), "files": {name: {bytes, sha256}},
                          "meta": {...}}        # meta: task, vocab name, anything JSON
    model.safetensors    the weights (tied weights stored once)
    optimizer.safetensors + optimizer.json      optional: optimizer tensors / param groups
    trainer_state.json   optional: step, RNG states (torch, python, numpy, generators), history
    vocab.json, ...      optional extra files (vocabularies, a BPE tokenizer.json)

:func:`save_model` writes the whole directory under a temporary name beside the target
(``.NAME.tmp-XXXXXXXX``) and then swaps it in with one rename (``renameat2(RENAME_EXCHANGE)``
where Linux offers it; :func:`attnkit.io.publish_dir`), so a kill at any moment leaves either
the previous good checkpoint or the new one. Every file's size and SHA-256 are recorded, so
:func:`load` tells a truncated or altered file from a good one. Nothing is ever unpickled:
``torch.load`` of an untrusted file runs code.

Errors: a directory that is not a checkpoint -> ``FileNotFoundError``; an unknown format, a
truncated file, a config that does not fit the weights or the model class -> ``ValueError``,
each naming the file and the offending values.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import random
import shutil
import typing
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from attnkit.io import fsync_path, publish_dir, sweep_temp_dirs, temp_dir_beside
from attnkit.models.rnn_seq2seq import RNNSeq2Seq
from attnkit.models.transformer_seq2seq import TransformerSeq2Seq
from attnkit.runtime import exchange_paths

__all__ = [
    "FORMAT",
    "register_model",
    "save_model",
    "load",
    "load_weights",
    "new_model",
    "read_manifest",
    "load_optimizer",
    "load_trainer_state",
    "rng_state",
    "set_rng_state",
    "config_diff",
    "is_checkpoint",
]

FORMAT = "attnkit-checkpoint"
VERSION = 1

# Model classes a checkpoint may name (more with register_model).
_REGISTRY: dict[str, type[nn.Module]] = {
    "RNNSeq2Seq": RNNSeq2Seq,
    "TransformerSeq2Seq": TransformerSeq2Seq,
}


def register_model(cls: type[nn.Module], name: str | None = None) -> type[nn.Module]:
    """Let :func:`load` rebuild ``cls`` (usable as a decorator). ``cls(config)`` must work."""
    _REGISTRY[name or cls.__name__] = cls
    return cls


def _model_class(name: str) -> type[nn.Module]:
    entry = _REGISTRY.get(name)
    if entry is None:
        raise ValueError(f"checkpoint names model class {name!r}; known classes: {sorted(_REGISTRY)}")
    return entry


def _config_class(cls: type[nn.Module]) -> type:
    """The config dataclass a model class takes: ``cls.config_class`` or the annotation of
    ``__init__``'s ``config`` parameter."""
    config_cls = getattr(cls, "config_class", None)
    if config_cls is None:
        config_cls = typing.get_type_hints(cls.__init__).get("config")
    if config_cls is None or not dataclasses.is_dataclass(config_cls):
        raise ValueError(f"{cls.__name__} has no config dataclass (set {cls.__name__}.config_class)")
    return config_cls


def config_diff(a: Any, b: Any) -> dict[str, tuple[Any, Any]]:
    """Fields whose values differ between two config dataclasses (or dicts): ``{name: (a, b)}``."""
    da = a if isinstance(a, dict) else dataclasses.asdict(a)
    db = b if isinstance(b, dict) else dataclasses.asdict(b)
    return {k: (da.get(k), db.get(k)) for k in sorted(set(da) | set(db)) if da.get(k) != db.get(k)}


# ----------------------------------------------------------------------------- RNG states


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def rng_state(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Every random state a training run depends on, as JSON: torch's global CPU generator,
    Python's ``random``, numpy's global generator, and any named ``torch.Generator``."""
    import numpy as np

    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    return {
        "torch": _b64(torch.get_rng_state()),
        "python": [version, list(internal), gauss],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "generators": {name: _b64(g.get_state()) for name, g in (generators or {}).items()},
    }


def set_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator] | None = None) -> None:
    """Restore what :func:`rng_state` captured (generators matched by name)."""
    import numpy as np

    torch.set_rng_state(_unb64(state["torch"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    for key, g in (generators or {}).items():
        if key not in state.get("generators", {}):
            raise ValueError(f"checkpoint has no state for generator {key!r}; it has {sorted(state.get('generators', {}))}")
        g.set_state(_unb64(state["generators"][key]))


# ----------------------------------------------------------------------------- optimizer


def _optimizer_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Flatten ``optimizer.state_dict()``: tensors -> ``state.<param>.<name>``, the rest -> JSON."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    meta = {"class": type(optimizer).__name__, "param_groups": sd["param_groups"], "scalars": scalars}
    return tensors, meta


def load_optimizer(directory: str | os.PathLike, optimizer: torch.optim.Optimizer, *,
                   manifest: dict[str, Any] | None = None) -> None:
    """Load the optimizer state saved with the checkpoint into ``optimizer`` (same params).
    Files are verified first unless ``manifest`` is one :func:`read_manifest` verified."""
    directory = Path(directory)
    manifest = manifest if manifest is not None else read_manifest(directory)
    if "optimizer.json" not in manifest["files"]:
        raise ValueError(f"checkpoint {directory} holds no optimizer state")
    meta = json.loads((directory / "optimizer.json").read_text())
    if meta["class"] != type(optimizer).__name__:
        raise ValueError(f"checkpoint optimizer is {meta['class']}, cannot load into {type(optimizer).__name__}")
    tensors = _load_tensors(directory / "optimizer.safetensors")
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    for idx, entry in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(entry)
    groups = meta["param_groups"]
    for group in groups:  # JSON turned tuples into lists
        for key, value in group.items():
            if key != "params" and isinstance(value, list):
                group[key] = tuple(value)
    ours = optimizer.state_dict()["param_groups"]
    if [len(g["params"]) for g in ours] != [len(g["params"]) for g in groups]:
        raise ValueError(
            f"optimizer state does not fit: checkpoint groups hold {[len(g['params']) for g in groups]} "
            f"parameters, this optimizer {[len(g['params']) for g in ours]}"
        )
    optimizer.load_state_dict({"state": state, "param_groups": groups})


# ----------------------------------------------------------------------------- writing


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_checkpoint(directory: str | os.PathLike) -> bool:
    """True when ``directory`` holds an attnkit checkpoint (its config.json says so)."""
    directory = Path(directory)
    try:
        return json.loads((directory / "config.json").read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _state_dict_unique(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with tied tensors stored once (the first name wins)."""
    seen: dict[int, str] = {}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape)) if tensor.numel() else None
        if key is not None and key in seen:
            continue
        if key is not None:
            seen[key] = name
        out[name] = tensor.detach().contiguous().cpu()
    return out


def save_model(
    model: nn.Module,
    directory: str | os.PathLike,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    trainer_state: dict[str, Any] | None = None,
    tokenizer: Any = None,
    files: dict[str, str | bytes | os.PathLike] | None = None,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` (and optionally the optimizer, trainer state and extra files) to the
    checkpoint ``directory``, atomically replacing a previous checkpoint there.

    ``tokenizer`` is anything with ``save(directory)`` (``CharVocab`` writes ``vocab.json``,
    the BPE tokenizer ``tokenizer.json``). ``files`` maps a file name to its text, bytes, or a path to copy (vocabularies, a BPE
    ``tokenizer.json``). ``meta`` is free JSON stored in ``config.json``. Refuses (ValueError)
    to replace a non-empty directory that is not an attnkit checkpoint.
    """
    directory = Path(directory)
    config = getattr(model, "config", None)
    if config is None or not dataclasses.is_dataclass(config):
        raise ValueError(f"{type(model).__name__} has no dataclass .config; cannot checkpoint it")
    name = type(model).__name__
    if name not in _REGISTRY:
        register_model(type(model))
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"checkpoint path {directory} exists and is not a directory")
    if directory.is_dir() and any(directory.iterdir()) and not is_checkpoint(directory):
        raise ValueError(f"refusing to overwrite {directory}: it is not empty and not an attnkit checkpoint")
    directory.parent.mkdir(parents=True, exist_ok=True)
    _sweep_temp_folders(directory)

    tmp = temp_dir_beside(directory)
    try:
        save_file(_state_dict_unique(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if optimizer is not None:
            tensors, opt_meta = _optimizer_files(optimizer)
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            (tmp / "optimizer.json").write_text(json.dumps(opt_meta))
        if trainer_state is not None:
            (tmp / "trainer_state.json").write_text(json.dumps(trainer_state))
        if tokenizer is not None:
            tokenizer.save(tmp)
        for fname, content in (files or {}).items():
            if Path(fname).name != fname or fname in {"config.json", "model.safetensors"}:
                raise ValueError(f"extra checkpoint file name {fname!r} is not allowed")
            if isinstance(content, bytes):
                (tmp / fname).write_bytes(content)
            elif isinstance(content, os.PathLike):
                shutil.copyfile(content, tmp / fname)
            else:
                (tmp / fname).write_text(content, encoding="utf-8")
        listing = {}
        for path in sorted(tmp.iterdir()):
            os.chmod(path, 0o644)  # safetensors writes 0600; a checkpoint is meant to be shared
            fsync_path(path)
            listing[path.name] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
        manifest = {"format": FORMAT, "version": VERSION, "model": name,
                    "config": dataclasses.asdict(config), "files": listing, "meta": meta or {}}
        (tmp / "config.json").write_text(json.dumps(manifest, indent=1))
        fsync_path(tmp / "config.json")
        # one rename (durable), or a swap: exchange_paths, else two renames a moment apart
        publish_dir(tmp, directory, exchange=exchange_paths)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return directory


def _sweep_temp_folders(directory: Path) -> None:
    """Remove the temp folders (``.NAME.tmp-*``) that a save killed midway left beside
    ``directory``, when ``directory`` holds a whole checkpoint (else one of them may hold the
    last one: a kill between the two renames of the fallback swap)."""
    if is_checkpoint(directory):
        sweep_temp_dirs(directory)


# ----------------------------------------------------------------------------- reading


def read_manifest(directory: str | os.PathLike, *, verify: bool = True) -> dict[str, Any]:
    """Read and check ``config.json``; with ``verify``, check every listed file's size and hash."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint directory {directory} does not exist")
    cfg = directory / "config.json"
    if not cfg.is_file():
        raise FileNotFoundError(f"{directory} is not an attnkit checkpoint: no config.json")
    try:
        manifest = json.loads(cfg.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{cfg} is not valid JSON (truncated?): {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{cfg} is not an attnkit checkpoint config (format={manifest.get('format') if isinstance(manifest, dict) else None!r})")
    if manifest.get("version") != VERSION:
        raise ValueError(f"{cfg}: checkpoint version {manifest.get('version')!r} is not supported (expected {VERSION})")
    for key in ("model", "config", "files"):
        if key not in manifest:
            raise ValueError(f"{cfg} lacks the {key!r} entry")
    files = manifest["files"]
    if not isinstance(files, dict) or not all(
            isinstance(info, dict) and isinstance(info.get("bytes"), int) and isinstance(info.get("sha256"), str)
            for info in files.values()):
        raise ValueError(f"{cfg}: 'files' must map each file name to its 'bytes' (an int) and 'sha256' (a string)")
    if verify:
        for fname, info in manifest["files"].items():
            path = directory / fname
            if not path.is_file():
                raise FileNotFoundError(f"checkpoint {directory} is missing {fname}")
            size = path.stat().st_size
            if size != info["bytes"]:
                raise ValueError(f"{path} is truncated or altered: {size} bytes, the checkpoint recorded {info['bytes']}")
            if _sha256(path) != info["sha256"]:
                raise ValueError(f"{path} is corrupt: its SHA-256 differs from the one recorded in config.json")
    return manifest


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc


def build_config(manifest: dict[str, Any]) -> Any:
    """The config dataclass instance a manifest describes (ValueError on unknown fields)."""
    cls = _model_class(manifest["model"])
    config_cls = _config_class(cls)
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(manifest["config"]) - fields)
    if unknown:
        raise ValueError(f"checkpoint config has fields {unknown} that {config_cls.__name__} does not know")
    try:
        return config_cls(**manifest["config"])
    except TypeError as exc:
        raise ValueError(f"checkpoint config does not fit {config_cls.__name__}: {exc}") from exc


def new_model(manifest: dict[str, Any]) -> nn.Module:
    """A freshly initialised model of the class and config a manifest describes (no weights)."""
    return _model_class(manifest["model"])(build_config(manifest))


def load_weights(directory: str | os.PathLike, model: nn.Module) -> nn.Module:
    """Copy a checkpoint's ``model.safetensors`` into ``model`` (built from the same config),
    refusing mis-shaped, unexpected or missing tensors. Does not verify hashes: read the
    manifest with :func:`read_manifest` first."""
    state = _load_tensors(Path(directory) / "model.safetensors")
    expected = model.state_dict()
    bad = {k: (tuple(v.shape), tuple(expected[k].shape)) for k, v in state.items()
           if k in expected and v.shape != expected[k].shape}
    if bad:
        raise ValueError(f"checkpoint weights do not match its config: (saved, expected) shapes {bad}")
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise ValueError(f"checkpoint holds weights the model does not have: {unexpected[:5]}")
    # tied weights were stored once; every other weight must be present
    tied = {k for k in expected if k not in state and any(expected[k] is expected[s] or (
        expected[k].data_ptr() == expected[s].data_ptr() and expected[k].shape == expected[s].shape) for s in state)}
    missing = sorted(set(expected) - set(state) - tied)
    if missing:
        raise ValueError(f"checkpoint lacks weights {missing[:5]} (of {len(missing)} missing)")
    model.load_state_dict(state, strict=False)
    return model


def load(directory: str | os.PathLike, *, map_location: str | torch.device = "cpu",
         manifest: dict[str, Any] | None = None) -> nn.Module:
    """Rebuild the model a checkpoint holds (any registered class), weights loaded, in eval mode.

    Every file's size and hash are checked first, unless ``manifest`` is one that
    :func:`read_manifest` already verified."""
    manifest = manifest if manifest is not None else read_manifest(directory)
    model = load_weights(directory, new_model(manifest))
    return model.to(map_location).eval()


def load_trainer_state(directory: str | os.PathLike, *, manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``trainer_state.json`` of a checkpoint (step, RNG states, ...); ``manifest`` as read
    by :func:`read_manifest` (read here, unverified, when omitted)."""
    directory = Path(directory)
    manifest = manifest if manifest is not None else read_manifest(directory, verify=False)
    if "trainer_state.json" not in manifest["files"]:
        raise ValueError(f"checkpoint {directory} holds no trainer state (saved without a Trainer?)")
    return json.loads((directory / "trainer_state.json").read_text())
