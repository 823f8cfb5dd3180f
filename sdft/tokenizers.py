"""The CLIP BPE and T5 Unigram tokenizers, written offline from the vocabulary open_clip ships.

OpenAI CLIP, Stable Diffusion's text encoders and open_clip all use one byte-level BPE of 49,408 tokens. open_clip
bundles its merges as ``bpe_simple_vocab_16e6.txt.gz``; this module turns that file into the ``vocab.json`` and
``merges.txt`` that ``transformers.CLIPTokenizer`` reads, so tiny models get a real tokenizer without a download.
SD3 and Flux.1 also read the prompt with T5, whose tokenizer is a sentencepiece Unigram model; a small one is built
here from CLIP's most frequent words, in the files ``transformers.T5TokenizerFast`` reads. Z-Image, Qwen-Image and
FLUX.2 read it with a Qwen (or Mistral) language model through a chat template; their byte-level BPE is built here
the same way, with the chat markers and a chat template of Qwen3's shape, in the files ``Qwen2Tokenizer`` reads.
"""

from __future__ import annotations

import gzip
import json
import math
import string
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import Unigram

NUM_MERGES = 49152 - 256 - 2
SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")


def read_clip_merges(bpe_path: str | Path | None = None) -> list[tuple[str, str]]:
    """Read the BPE merges, in priority order, from open_clip's gzipped vocabulary file.

    Args:
        bpe_path: the ``.txt.gz`` file; open_clip's bundled one when None.
    """
    from open_clip.tokenizer import default_bpe

    with gzip.open(bpe_path or default_bpe()) as file:
        lines = file.read().decode("utf-8").split("\n")
    return [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]


def build_clip_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """Token -> id, in CLIP's order: bytes, bytes ending a word, merges, then the two special tokens.

    Args:
        merges: the BPE merges from :func:`read_clip_merges`.
    """
    from open_clip.tokenizer import bytes_to_unicode

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


#: T5's special tokens and their fixed ids: padding 0, end of sequence 1, unknown 2
T5_SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")
#: sentencepiece's word-boundary mark, prefixed to the first piece of every word
WORD_START = "\u2581"


def clip_words(merges: list[tuple[str, str]]) -> list[str]:
    """The whole alphabetic ASCII words among CLIP's BPE merges, most frequent first (merge order), without repeats.

    Args:
        merges: the BPE merges from :func:`read_clip_merges`.
    """
    words = ("".join(pair).removesuffix("</w>") for pair in merges if pair[1].endswith("</w>"))
    return list(dict.fromkeys(word for word in words if word.isascii() and word.isalpha()))


def build_t5_vocab(words: list[str]) -> list[tuple[str, float]]:
    """A Unigram vocabulary (Kudo 2018, arXiv 1804.10959) in T5's layout: ``<pad>``, ``</s>``, ``<unk>`` first, then
    each word as a word-initial piece scored by Zipf's law (``-log(rank + 2)``), then every printable ASCII
    character, word-initial and not, at low scores, so any ASCII text has a segmentation without ``<unk>``.

    Args:
        words: the words, most frequent first.
    Returns:
        (piece, log-probability) pairs; a piece's id is its position.
    """
    vocab = [(token, 0.0) for token in T5_SPECIAL_TOKENS]
    vocab += [(WORD_START + word, -math.log(rank + 2)) for rank, word in enumerate(words)]
    characters = [c for c in string.printable if not c.isspace()]
    fallback = [(WORD_START, -12.0)] + [(WORD_START + c, -14.0) for c in characters] + [(c, -16.0) for c in characters]
    known = {piece for piece, _ in vocab}
    return vocab + [(piece, score) for piece, score in fallback if piece not in known]


def t5_tokenizer_json(vocab: list[tuple[str, float]]) -> str:
    """The ``tokenizer.json`` of a T5 tokenizer over ``vocab``: words split at whitespace and marked with ``▁``,
    segmented by the Unigram model, and ended with ``</s>``, as T5's own tokenizer does."""
    tokenizer = Tokenizer(Unigram(vocab, unk_id=T5_SPECIAL_TOKENS.index("<unk>"), byte_fallback=False))
    tokenizer.normalizer = normalizers.Replace(Regex(" {2,}"), " ")
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement=WORD_START, prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement=WORD_START, prepend_scheme="always")
    tokenizer.add_special_tokens(list(T5_SPECIAL_TOKENS))
    eos = ("</s>", T5_SPECIAL_TOKENS.index("</s>"))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[eos]
    )
    return tokenizer.to_str(pretty=True)


def write_t5_tokenizer(directory: str | Path, model_max_length: int = 512, num_words: int = 4000) -> Path:
    """Write a ``transformers.T5TokenizerFast`` folder (``tokenizer.json``, its config and special tokens) and return
    its path: a real Unigram tokenizer over CLIP's ``num_words`` most frequent words, built offline.

    Args:
        directory: the folder to write; created if missing.
        model_max_length: the longest prompt in tokens (512 for T5-XXL in SD3 and Flux.1).
        num_words: whole-word pieces in the vocabulary.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = build_t5_vocab(clip_words(read_clip_merges())[:num_words])
    (directory / "tokenizer.json").write_text(t5_tokenizer_json(vocab), encoding="utf-8")
    special = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    config = {"tokenizer_class": "T5Tokenizer", "model_max_length": model_max_length, "extra_ids": 0, **special}
    (directory / "tokenizer_config.json").write_text(json.dumps({**config, "additional_special_tokens": []}, indent=2))
    return directory


#: the special tokens of the Qwen tokenizers: the end of a text (also the padding), the chat markers, the reasoning
#: markers; they follow the byte-level vocabulary, as in Qwen's own
QWEN_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")
#: Qwen2's pre-tokenizer split: contractions, letter runs with one leading non-letter, single digits, punctuation
#: runs, newlines and spaces
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
#: Qwen3's chat template for what the pipelines send: messages, an optional generation prompt, and the empty
#: reasoning block Qwen3 writes when ``enable_thinking`` is false
QWEN_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)


def build_bpe_merges(words: list[str]) -> list[tuple[str, str]]:
    """Byte-level BPE merges that spell each word (and the word after a space, ``Ġword``) left to right, in order of
    first use, without repeats: every merge's result is a token, so any text still segments into the 256 byte
    tokens and the merged pieces.

    Args:
        words: ASCII words, most frequent first.
    """
    merges: dict[tuple[str, str], None] = {}
    for word in words:
        for spelled in ("\u0120" + word, word):
            for end in range(2, len(spelled) + 1):
                merges[(spelled[: end - 1], spelled[end - 1])] = None
    return list(merges)


def qwen_tokenizer_json(merges: list[tuple[str, str]], special_tokens: tuple[str, ...] = QWEN_SPECIAL_TOKENS) -> str:
    """The ``tokenizer.json`` of a Qwen2-style byte-level BPE over ``merges``: NFC, Qwen2's split, bytes mapped to
    printable characters, then ``special_tokens``."""
    from tokenizers import AddedToken
    from tokenizers.models import BPE

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tokens = sorted(alphabet, key=lambda c: (ord(c) > 255, ord(c))) + ["".join(pair) for pair in merges]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    tokenizer = Tokenizer(BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in special_tokens])
    return tokenizer.to_str(pretty=True)


def write_qwen_tokenizer(directory: str | Path, model_max_length: int = 131072, num_words: int = 2000) -> Path:
    """Write a ``transformers.Qwen2Tokenizer`` folder (``tokenizer.json``, its config with Qwen3's chat template) and
    return its path: a byte-level BPE that spells CLIP's ``num_words`` most frequent words, built offline.

    Args:
        directory: the folder to write; created if missing.
        model_max_length: the longest text in tokens (Qwen3's 131,072).
        num_words: words spelled by the merges.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    merges = build_bpe_merges(clip_words(read_clip_merges())[:num_words])
    (directory / "tokenizer.json").write_text(qwen_tokenizer_json(merges), encoding="utf-8")
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "model_max_length": model_max_length,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "bos_token": None,
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "chat_template": QWEN_CHAT_TEMPLATE,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return directory


#: the special tokens of Mistral Small 3's tokenizer that FLUX.2 [dev]'s processor and chat template use
MISTRAL_SPECIAL_TOKENS = (
    "<unk>", "<s>", "</s>", "<pad>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[IMG]",
    "[IMG_BREAK]", "[IMG_END]",
)  # fmt: skip
#: Mistral Small 3's chat template for what FLUX.2 [dev] sends: a system message, then the user's turn, each message
#: a string or a list of text (and image) parts
MISTRAL_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['content'] is string %}{%- set text = message['content'] %}"
    "{%- else %}{%- set text = namespace(value='') %}"
    "{%- for part in message['content'] %}"
    "{%- if part['type'] == 'text' %}{%- set text.value = text.value + part['text'] %}"
    "{%- else %}{%- set text.value = text.value + '[IMG]' %}{%- endif %}"
    "{%- endfor %}{%- set text = text.value %}{%- endif %}"
    "{%- if message['role'] == 'system' %}{{- '[SYSTEM_PROMPT]' + text + '[/SYSTEM_PROMPT]' }}"
    "{%- elif message['role'] == 'user' %}{{- '[INST]' + text + '[/INST]' }}"
    "{%- else %}{{- text + eos_token }}{%- endif %}"
    "{%- endfor %}"
)


def write_mistral_processor(directory: str | Path, num_words: int = 2000) -> Path:
    """Write a ``transformers.PixtralProcessor`` folder (a byte-level BPE tokenizer with Mistral Small 3's special
    tokens, a Pixtral image processor and the chat template) and return its path, built offline.

    Args:
        directory: the folder to write; created if missing.
        num_words: words spelled by the merges.
    """
    from transformers import PixtralImageProcessor, PixtralProcessor, PreTrainedTokenizerFast

    directory = Path(directory)
    merges = build_bpe_merges(clip_words(read_clip_merges())[:num_words])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(qwen_tokenizer_json(merges, MISTRAL_SPECIAL_TOKENS)),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=131072,
    )
    processor = PixtralProcessor(
        image_processor=PixtralImageProcessor(), tokenizer=tokenizer, chat_template=MISTRAL_CHAT_TEMPLATE
    )
    processor.save_pretrained(directory)
    return directory
