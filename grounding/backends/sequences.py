"""The text side of a backbone: the token sequence the transformer receives, position by position.

A ``TokenSequence`` says, for every text position, which encoder stream made it, what role it has
(prompt text with its character span, a special token, a chat template's token, padding) and the
id fed to the encoder; ``EncoderInput`` holds the encoder's own input where the pipeline crops or
strips it. The helpers build sequences the way diffusers' pipelines call their tokenizers:
``tokenize_stream`` / ``join_streams`` for plain tokenizers (CLIP, T5), ``template_tokens`` for
chat templates, whose prompt is found in the rendered text by ``locate_prompt`` so that words map
to the positions the transformer actually receives. ``sequence_key`` is what the text cache keys on.
"""

from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np

# Role of each position of the text sequence the transformer receives.
PADDING, SPECIAL, TEMPLATE, TEXT = range(4)
ROLE_NAMES = ("padding", "special", "template", "text")


@dataclass(frozen=True)
class TokenSequence:
    """One prompt's text tokens exactly as the transformer receives them (length ``T``).

    Per position ``t``: ``stream[t]`` indexes ``streams`` (which text encoder made it), ``roles[t]``
    is ``TEXT`` (a token of the prompt, its characters ``spans[t]`` = ``[start, end)`` in
    ``prompt``), ``SPECIAL`` (BOS/EOS), ``TEMPLATE`` (a chat template's or system message's
    token) or ``PADDING``; ``ids[t]`` is the token id fed to that stream's encoder. ``overflow``
    names the streams that cut the prompt short.
    """

    prompt: str
    streams: tuple[str, ...]
    stream: np.ndarray  # int8 [T]
    roles: np.ndarray  # int8 [T]
    spans: np.ndarray  # int32 [T, 2], -1 where roles != TEXT
    ids: np.ndarray  # int64 [T]
    overflow: tuple[str, ...] = ()
    # Where the text encoder's input differs from ``ids`` (a template prefix the pipeline crops
    # off its output, padding it strips): that exact input, and per position ``t`` the encoder
    # output it takes (-1: not from the encoder, e.g. Z-Image's caption padding).
    encoder: EncoderInput | None = None

    def __len__(self) -> int:
        return len(self.roles)

    @property
    def encoder_input(self) -> EncoderInput:
        """``encoder``, for the backends whose pipelines always build one (a clear error otherwise)."""
        if self.encoder is None:
            raise ValueError(f"this sequence of {self.streams} has no separate encoder input")
        return self.encoder


@dataclass(frozen=True)
class EncoderInput:
    """A text encoder's input as the pipeline builds it: ids and attention mask ``[E]``, and
    ``positions`` ``[T]``: the encoder output position behind each sequence position, or -1."""

    ids: np.ndarray  # int64 [E]
    mask: np.ndarray  # bool [E]
    positions: np.ndarray  # int64 [T]


def sequence_key(seq: TokenSequence) -> bytes:
    """What ``encode_prompts`` reads of a sequence: prompt text, ids, roles, encoder input."""
    parts = [seq.prompt.encode("utf-8", "surrogatepass"), seq.ids.tobytes(), seq.roles.tobytes()]
    if seq.encoder is not None:
        parts += [seq.encoder.ids.tobytes(), seq.encoder.mask.tobytes(), seq.encoder.positions.tobytes()]
    return b"\x00".join(hashlib.sha1(p).digest() for p in parts)


# One tokenizer's part of a sequence: ids, roles, spans, stream index (per position) and whether it overflowed.
StreamPart = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, bool]


def tokenize_stream(tokenizer: Any, prompt: str, length: int, stream: int) -> StreamPart:
    """One tokenizer's positions for ``prompt``, padded/truncated to ``length`` as diffusers'
    pipelines call it: (ids, roles, spans, stream index) and whether the prompt overflowed."""
    enc = tokenizer(
        prompt,
        padding="max_length",
        max_length=length,
        truncation=True,
        return_offsets_mapping=True,
        return_attention_mask=True,
    )
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    roles, spans = place_tokens(enc, 0, np.arange(len(prompt)))
    overflow = len(tokenizer(prompt, add_special_tokens=True)["input_ids"]) > length
    return ids, roles, spans, np.full(length, stream, dtype=np.int8), overflow


def place_tokens(enc: Any, start: int, char_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Roles and prompt spans of one tokenizer call's positions from their character offsets: the
    prompt's text begins at ``start`` of the tokenized text and ``char_map`` maps each of its
    characters to the prompt (-1: dropped). Masked → ``PADDING``; no characters (BOS/EOS) →
    ``SPECIAL``; characters of the prompt → ``TEXT`` with their span; other characters →
    ``TEMPLATE``."""
    mask = np.asarray(enc["attention_mask"], dtype=bool)
    offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    roles = np.full(len(mask), PADDING, dtype=np.int8)
    spans = np.full((len(mask), 2), -1, dtype=np.int32)
    for i in np.flatnonzero(mask):
        s, e = int(offsets[i, 0]), int(offsets[i, 1])
        if e <= s:
            roles[i] = SPECIAL
            continue
        inside = char_map[max(s - start, 0) : max(min(e - start, len(char_map)), 0)]
        inside = inside[inside >= 0]
        if len(inside):
            roles[i] = TEXT
            spans[i] = (inside.min(), inside.max() + 1)
        else:
            roles[i] = TEMPLATE
    return roles, spans


def join_streams(prompt: str, names: tuple[str, ...], parts: list[StreamPart]) -> TokenSequence:
    """A ``TokenSequence`` from per-stream ``tokenize_stream`` parts, concatenated in order."""
    ids, roles, spans, stream = (np.concatenate([p[i] for p in parts]) for i in range(4))
    return TokenSequence(prompt, names, stream, roles, spans, ids, tuple(n for n, p in zip(names, parts) if p[4]))


def pad_sequence(seq: TokenSequence, length: int, pad_id: int) -> TokenSequence:
    """``seq`` with ``PADDING`` positions appended up to ``length``."""
    n = length - len(seq)
    if n < 0:
        raise ValueError(f"sequence of {len(seq)} positions is longer than {length}")
    if n == 0:
        return seq
    enc = seq.encoder
    if enc is not None:
        enc = replace(enc, positions=np.concatenate([enc.positions, np.full(n, -1, np.int64)]))
    return replace(
        seq,
        stream=np.concatenate([seq.stream, np.full(n, seq.stream[-1] if len(seq) else 0, np.int8)]),
        roles=np.concatenate([seq.roles, np.full(n, PADDING, np.int8)]),
        spans=np.concatenate([seq.spans, np.full((n, 2), -1, np.int32)]),
        ids=np.concatenate([seq.ids, np.full(n, pad_id, np.int64)]),
        encoder=enc,
    )


# --- chat templates ------------------------------------------------------------------------------
_SENTINEL = "\ue000PROMPT\ue001"


def locate_prompt(render: Callable[[str], str], prompt: str) -> tuple[str, int, np.ndarray]:
    """Where a chat template put the prompt: (rendered text, offset of the prompt's text in it,
    ``char_map`` — for each character of that inserted text, its index in ``prompt`` or -1).

    The template is rendered once around a sentinel to learn its prefix and suffix; a template
    that edits the prompt (FLUX.2 drops ``[IMG]``, some trim whitespace) is followed character by
    character. Raises ``ValueError`` when the prompt's place cannot be told.
    """
    probe = render(_SENTINEL)
    if probe.count(_SENTINEL) != 1:
        raise ValueError("the chat template does not insert the prompt exactly once; cannot align its tokens")
    prefix, suffix = probe.split(_SENTINEL)
    text = render(prompt)
    if not (text.startswith(prefix) and text.endswith(suffix) and len(text) >= len(prefix) + len(suffix)):
        raise ValueError("the chat template's text around the prompt depends on the prompt; cannot align its tokens")
    inner = text[len(prefix) : len(text) - len(suffix)]
    char_map = np.full(len(inner), -1, dtype=np.int64)
    if inner == prompt:
        char_map[:] = np.arange(len(inner))
    else:
        for a, b, n in difflib.SequenceMatcher(None, inner, prompt, autojunk=False).get_matching_blocks():
            char_map[a : a + n] = np.arange(b, b + n)
    return text, len(prefix), char_map


@dataclass(frozen=True)
class TemplateTokens:
    """One tokenizer call over a rendered chat template, per position: ``ids``, attention
    ``mask``, ``roles`` (``TEXT`` for tokens with characters of the prompt, their ``spans`` in the
    prompt; ``TEMPLATE`` for other tokens with characters — system message, role markers,
    ``[INST]``; ``SPECIAL`` for tokens with none; ``PADDING`` where masked) and ``full_length``,
    the untruncated token count."""

    ids: np.ndarray  # int64 [E]
    mask: np.ndarray  # bool [E]
    roles: np.ndarray  # int8 [E]
    spans: np.ndarray  # int32 [E, 2]
    full_length: int

    def sequence(
        self,
        prompt: str,
        stream_names: tuple[str, ...],
        select: np.ndarray | None = None,
        tail_padding: int = 0,
        pad_id: int = 0,
        overflow: bool = False,
        encoder: bool = False,
    ) -> TokenSequence:
        """The positions ``select`` (default all) as a ``TokenSequence`` of stream 0, with
        ``tail_padding`` ``PADDING`` positions appended; ``encoder``: record that the text
        encoder reads this whole call and the sequence takes its outputs at ``select``."""
        sel = np.arange(len(self.ids)) if select is None else np.asarray(select, dtype=np.int64)
        seq = TokenSequence(
            prompt,
            stream_names,
            np.zeros(len(sel), np.int8),
            self.roles[sel],
            self.spans[sel],
            self.ids[sel],
            stream_names[:1] if overflow else (),
            EncoderInput(self.ids, self.mask, sel) if encoder else None,
        )
        return pad_sequence(seq, len(sel) + tail_padding, pad_id)


def template_tokens(
    tokenizer: Any, render: Callable[[str], str], prompt: str, add_special_tokens: bool | None = None, **call: Any
) -> TemplateTokens:
    """Tokenize ``render(prompt)`` as a pipeline does (``call``: its padding / truncation /
    max_length), each position placed by its character offsets (see ``locate_prompt``).
    ``add_special_tokens=None``: as a processor's ``apply_chat_template`` decides (off when the
    rendered text already starts with the BOS token)."""
    text, start, char_map = locate_prompt(render, prompt)
    if add_special_tokens is None:
        bos = getattr(tokenizer, "bos_token", None)
        add_special_tokens = not (bos and text.startswith(bos))
    enc = tokenizer(
        text, add_special_tokens=add_special_tokens, return_offsets_mapping=True, return_attention_mask=True, **call
    )
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    mask = np.asarray(enc["attention_mask"], dtype=bool)
    roles, spans = place_tokens(enc, start, char_map)
    full = len(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])
    return TemplateTokens(ids, mask, roles, spans, full)
