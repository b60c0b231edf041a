"""Helpers for the ``attnkit embed`` tests: a tiny random sentence-transformers folder (fast
enough to kill and resume many times), short-line corpora, and running the CLI as a process."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import torch

WORDS = ("the cat sat on a mat attention weights show which tokens matter dog ran far quick brown fox "
         "jumps over lazy river city night light green old new small").split()


def short_lines(n: int, seed: int = 0, max_words: int = 6) -> list[str]:
    """``n`` lines of 1..``max_words`` words (some empty), deterministic in ``seed``."""
    rng = random.Random(seed)
    return ["" if rng.random() < 0.02 else " ".join(rng.choices(WORDS, k=rng.randint(1, max_words)))
            for _ in range(n)]


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_bytes(("\n".join(lines) + "\n").encode())
    return path


def tiny_model(folder: Path, *, seed: int = 0, hidden: int = 32, layers: int = 1) -> Path:
    """A random BERT (``hidden`` wide, ``layers`` deep) with all-MiniLM-L6-v2's tokenizer,
    pooling and normalisation, saved as a sentence-transformers folder."""
    from safetensors.torch import save_file

    from attnkit.models.bert import BertConfig, BertEncoder, hf_name_map
    from attnkit.models.sentence_encoder import resolve_model_folder

    src = resolve_model_folder("all-MiniLM-L6-v2")
    folder.mkdir(parents=True, exist_ok=True)
    hf = json.loads((src / "config.json").read_text())
    hf.update(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=2 * hidden)
    (folder / "config.json").write_text(json.dumps(hf))
    torch.manual_seed(seed)
    model = BertEncoder(BertConfig.from_hf(hf))
    ours = model.state_dict()
    save_file({h: ours[o].contiguous() for h, o in hf_name_map(model.config).items()}, str(folder / "model.safetensors"))
    for name in ("tokenizer.json", "modules.json", "sentence_bert_config.json"):
        shutil.copy(src / name, folder / name)
    (folder / "1_Pooling").mkdir(exist_ok=True)
    pooling = json.loads((src / "1_Pooling" / "config.json").read_text())
    pooling["word_embedding_dimension"] = hidden
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    return folder


def hf_sentence_folder(family: str, root: Path, *, pooling: str = "mean", normalize: bool = True,
                       pooling_config: dict | None = None) -> str:
    """A tiny random sentence-transformers folder (saved by sentence-transformers itself, so in
    its own format: ``"pooling_mode": "mean"`` since version 6) around a Hugging Face
    ``xlm-roberta``, ``modernbert`` or ``mpnet`` model with a small byte-level BPE tokenizer.
    ``pooling_config`` replaces the saved ``1_Pooling/config.json`` (another format)."""
    import transformers as tf
    from sentence_transformers import SentenceTransformer
    from viz_support import _byte_bpe

    try:
        from sentence_transformers.sentence_transformer.modules import (
            Normalize,
            Pooling,
            Transformer,
        )
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers.models import Normalize, Pooling, Transformer

    torch.manual_seed(0)
    tok = _byte_bpe(["<s>", "<pad>", "</s>", "<unk>", "<mask>"], "<s> $A </s>")
    fast = tf.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                      unk_token="<unk>", mask_token="<mask>", cls_token="<s>", sep_token="</s>")
    small = dict(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=64, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    if family == "xlm-roberta":
        model = tf.XLMRobertaModel(tf.XLMRobertaConfig(max_position_embeddings=66, **small))
    elif family == "modernbert":
        model = tf.ModernBertModel(tf.ModernBertConfig(max_position_embeddings=64, global_attn_every_n_layers=2,
                                                       local_attention=8, cls_token_id=0, sep_token_id=2, **small))
    else:
        model = tf.MPNetModel(tf.MPNetConfig(max_position_embeddings=66, **small))
    hf_folder, folder = root / f"{family}-hf", root / f"{family}-st"
    model.save_pretrained(hf_folder)
    fast.save_pretrained(hf_folder)
    modules = [Transformer(str(hf_folder), max_seq_length=24), Pooling(32, pooling_mode=pooling)]
    if normalize:
        modules.append(Normalize())
    SentenceTransformer(modules=modules, device="cpu").save(str(folder))
    if pooling_config is not None:
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling_config))
    return str(folder)


def attnkit_command() -> list[str]:
    """The ``attnkit`` console script of this interpreter's environment."""
    script = Path(sys.executable).with_name("attnkit")
    return [str(script)] if script.is_file() else [sys.executable, "-c", "from attnkit.cli import main; main()"]


def cli_env(**extra: str) -> dict[str, str]:
    """The environment for a CLI subprocess: this one (PYTHONPATH kept), offline, one thread."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **extra)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join([src, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    return env


def run_cli(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*attnkit_command(), *args], env=cli_env(), capture_output=True, text=True, **kwargs)
