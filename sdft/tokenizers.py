"""The CLIP BPE tokenizer, written offline from the vocabulary open_clip ships.

OpenAI CLIP, Stable Diffusion's text encoders and open_clip all use one byte-level BPE of 49,408 tokens. open_clip
bundles its merges as ``bpe_simple_vocab_16e6.txt.gz``; this module turns that file into the ``vocab.json`` and
``merges.txt`` that ``transformers.CLIPTokenizer`` reads, so tiny models get a real tokenizer without a download.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from open_clip.tokenizer import bytes_to_unicode, default_bpe

NUM_MERGES = 49152 - 256 - 2
SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")


def read_clip_merges(bpe_path: str | Path | None = None) -> list[tuple[str, str]]:
    """Read the BPE merges, in priority order, from open_clip's gzipped vocabulary file.

    Args:
        bpe_path: the ``.txt.gz`` file; open_clip's bundled one when None.
    """
    with gzip.open(bpe_path or default_bpe()) as file:
        lines = file.read().decode("utf-8").split("\n")
    return [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]


def build_clip_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """Token -> id, in CLIP's order: bytes, bytes ending a word, merges, then the two special tokens.

    Args:
        merges: the BPE merges from :func:`read_clip_merges`.
    """
    byte_tokens = list(bytes_to_unicode().values())
    tokens = byte_tokens + [token + "</w>" for token in byte_tokens] + ["".join(pair) for pair in merges]
    tokens += list(SPECIAL_TOKENS)
    return {token: index for index, token in enumerate(tokens)}


def write_clip_tokenizer(directory: str | Path, model_max_length: int = 77) -> Path:
    """Write a ``transformers.CLIPTokenizer`` folder (vocab, merges, configs) and return its path.

    Args:
        directory: the folder to write; created if missing.
        model_max_length: the prompt length in tokens, 77 for every CLIP text encoder of the SD families.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    merges = read_clip_merges()
    (directory / "vocab.json").write_text(json.dumps(build_clip_vocab(merges), ensure_ascii=False), encoding="utf-8")
    merge_lines = ["#version: 0.2"] + [" ".join(pair) for pair in merges]
    (directory / "merges.txt").write_text("\n".join(merge_lines) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": model_max_length,
        "bos_token": SPECIAL_TOKENS[0],
        "eos_token": SPECIAL_TOKENS[1],
        "unk_token": SPECIAL_TOKENS[1],
        "pad_token": SPECIAL_TOKENS[1],
        "do_lower_case": True,
        "errors": "replace",
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return directory
