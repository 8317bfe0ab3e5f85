"""Words of an expression ↔ token positions in every text stream of the transformer."""

from __future__ import annotations

import dataclasses
import re
import unicodedata
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..backends.sequences import PADDING, TEXT, TokenSequence
from ..backends.sequences import TEMPLATE as TEMPLATE_ROLE
from ..config import STOP_WORDS, MagnetConfig

_WORD_RE = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]", re.UNICODE)

# Words after which a noun phrase ends; the head noun is the last content word before them.
PHRASE_BREAKS = frozenset(
    """on in at to for from by with without of near next beside behind under over above below
    between left right top bottom front back that which who whose where while holding wearing
    sitting standing""".split()
)

# "that is", "who are", ...: a relative clause that describes the referent, not a phrase break.
RELATIVE = frozenset("that which who".split())
COPULAS = frozenset("is are was were".split())

# Words that place the referent itself ("at the top", "on the left of ..."): never part of a complement.
SPATIAL = frozenset("left right top bottom middle center centre upper lower leftmost rightmost topmost".split())

# A word's last piece that only inflects it ("circle" + "s" when a vocabulary lacks the plural):
# it marks number, not the object, so it is read as a stop word (its attention is not the referent's).
_INFLECTIONS = frozenset(("s", "es", "'s", "’s"))

# Kinds of text position, in the order used by `PromptTokens.kinds`. ``TEMPLATE``: a chat
# template's or system message's token — attended to, never content or a magnet.
PAD, SPECIAL, PUNCT, STOP, MAGNET, CONTENT, TEMPLATE = range(7)
KIND_NAMES = ("pad", "special", "punct", "stop", "magnet", "content", "template")


@dataclass
class Word:
    text: str
    start: int  # character span in the prompt
    end: int
    kind: int  # PUNCT | STOP | MAGNET | CONTENT


@dataclass
class PromptTokens:
    """Token layout of one prompt (expression + magnets) as the transformer receives it.

    ``kinds[t]`` and ``word_index[t]`` describe text position ``t`` of the backend's
    ``TokenSequence`` (all streams, template and padding included, length ``T``; longer after
    ``padded``);
    ``word_index`` is -1 for positions of no word.
    """

    expression: str
    prompt: str
    words: list[Word]
    kinds: np.ndarray  # int8 [T]
    word_index: np.ndarray  # int32 [T]
    head_word: int | None
    sequence: TokenSequence  # what the transformer receives (ids, streams, roles)
    warnings: list[str] = field(default_factory=list)

    def padded(self, length: int) -> "PromptTokens":
        """``kinds`` and ``word_index`` read in a batch of ``length`` text positions: the extra
        positions are ``PAD`` (masked batch padding of backbones that feed each prompt at its own
        length). ``sequence`` stays what the backend feeds for this prompt alone."""
        n = length - len(self.kinds)
        if n <= 0:
            return self
        return dataclasses.replace(
            self,
            kinds=np.concatenate([self.kinds, np.full(n, PAD, np.int8)]),
            word_index=np.concatenate([self.word_index, np.full(n, -1, np.int32)]),
        )

    def positions(self, word: int) -> list[int]:
        """Text positions of word ``word`` in every stream."""
        return np.flatnonzero(self.word_index == word).tolist()

    def token_weights(self, head_noun_weight: float, complement_weight: float = 1.0) -> np.ndarray:
        """float32 [T]: 1 for content tokens, ``head_noun_weight`` for the head noun,
        ``complement_weight`` for content words of the complement (see ``complement_words``),
        else 0."""
        w = (self.kinds == CONTENT).astype(np.float32)
        if self.head_word is not None:
            w[self.word_index == self.head_word] *= head_noun_weight
        if complement_weight != 1.0:
            for i in complement_words(self.words):
                w[self.word_index == i] *= complement_weight
        return np.asarray(w)


def split_words(text: str) -> list[tuple[str, int, int]]:
    """Words and punctuation marks with their character spans."""
    return [(m.group(0), m.start(), m.end()) for m in _WORD_RE.finditer(text)]


def word_kind(word: str) -> int:
    """PUNCT, STOP (stop words, numbers) or CONTENT."""
    if not any(ch.isalnum() for ch in word):
        return PUNCT
    return STOP if word.lower() in STOP_WORDS or word.isdigit() else CONTENT


def head_noun(words: list[Word]) -> int | None:
    """Index of the head noun: the last content word before the first phrase break
    ("on", "left", "which", ...) that has one before it; else the last content word.
    Spatial words ("left", "top") are never the head unless nothing else is there."""
    content = [i for i, w in enumerate(words) if w.kind == CONTENT]
    if not content:
        return None
    cands = [i for i in content if words[i].text.lower() not in PHRASE_BREAKS] or content
    for i, w in enumerate(words):
        if w.text.lower() in PHRASE_BREAKS:
            before = [j for j in cands if j < i]
            if before:
                return before[-1]
    return cands[-1]


def complement_words(words: list[Word]) -> list[int]:
    """Indices of content words after the first phrase break ("of", "on", "holding", ...) that
    do not place the referent itself: in "the square left of the yellow circle" → yellow,
    circle (the anchor object); in "the circle at the top" → none ("top" places the referent);
    in "the circle that is red" → none (a relative clause with a copula describes the referent;
    "the man who is holding a cup" → cup, at the break after it)."""
    text = [w.text.lower() for w in words]
    first = next(
        (
            i
            for i, t in enumerate(text)
            if t in PHRASE_BREAKS
            and t not in SPATIAL
            # "the circle that is red": a relative pronoun and a copula describe the referent itself
            and not (t in RELATIVE and i + 1 < len(text) and text[i + 1] in COPULAS)
        ),
        None,
    )
    if first is None:
        return []
    return [
        i for i in range(first + 1, len(words)) if words[i].kind == CONTENT and words[i].text.lower() not in SPATIAL
    ]


def validate_expression(expression: str) -> str:
    """Strip, collapse whitespace, compose to NFC and check an expression; raise ``ValueError``
    when there is nothing to ground. NFC: a decomposed accent ("cafe" + U+0301) would otherwise
    split a word in two, and the tokenizers compose it anyway (Qwen's and CLIP's normalise to NFC)."""
    if not isinstance(expression, str):
        raise ValueError(f"expression must be a string, got {type(expression).__name__}")
    text = " ".join(unicodedata.normalize("NFC", expression).split())
    if not text:
        raise ValueError("expression is empty")
    kinds = [word_kind(w) for w, _, _ in split_words(text)]
    if CONTENT not in kinds:
        raise ValueError(f"expression {expression!r} has no content words (only stop words or punctuation)")
    return text


def build_prompt(expression: str, magnets: MagnetConfig) -> tuple[str, list[Word]]:
    """Expression + appended magnet words, with the kind of every word."""
    prompt = expression
    extra = list(magnets.words) if magnets.enabled else []
    if magnets.enabled and magnets.colour_word:
        extra.append(magnets.colour_word)
    n_expr = len(split_words(expression))
    if extra:
        prompt = expression + " " + " ".join(extra)
    words = []
    for i, (w, s, e) in enumerate(split_words(prompt)):
        words.append(Word(w, s, e, MAGNET if i >= n_expr else word_kind(w)))
    return prompt, words


Tokenize = Callable[[str], TokenSequence]  # prompt → its sequence (``Backend.tokenize`` for one prompt)


def _fit_expression(expression: str, magnets: MagnetConfig, tokenize: Tokenize) -> tuple[str, TokenSequence, list[str]]:
    """Drop trailing expression words until expression + magnets fit in every text stream."""
    words = split_words(expression)
    seq = tokenize(build_prompt(expression, magnets)[0])
    first = seq.overflow
    while seq.overflow and len(words) > 1:
        words = words[:-1]
        seq = tokenize(build_prompt(expression[: words[-1][2]], magnets)[0])
    if seq.overflow and not (seq.roles == TEXT).any():
        raise ValueError(
            f"the {', '.join(seq.overflow)} text stream has no room for the expression at this "
            f"max_sequence_length ({len(seq)} positions, the chat template takes them all); raise it"
        )
    notes = []
    cut = expression[: words[-1][2]]
    if cut != expression:
        msg = (
            f"expression truncated to {len(words)} words to fit the {', '.join(first)} text stream"
            f"{'s' if len(first) > 1 else ''}: {cut!r}"
        )
        warnings.warn(msg, stacklevel=3)
        notes.append(msg)
    return cut, seq, notes


def align(expression: str, tokenize: Tokenize, magnets: MagnetConfig) -> PromptTokens:
    """Expression + magnets → the backend's token sequence, each position mapped to its word
    through its character span (so template, system-message and special tokens never match a
    word). Expressions too long for a stream are cut at a word boundary, with a warning."""
    expression = validate_expression(expression)
    expression, seq, notes = _fit_expression(expression, magnets, tokenize)
    prompt, words = build_prompt(expression, magnets)
    kinds = np.full(len(seq), PAD, dtype=np.int8)
    word_index = np.full(len(seq), -1, dtype=np.int32)
    for pos, (role, (s, e)) in enumerate(zip(seq.roles, seq.spans)):
        if role == PADDING:
            continue
        w = _word_at(words, int(s), int(e)) if role == TEXT else None
        if w is None:
            kinds[pos] = TEMPLATE if role == TEMPLATE_ROLE else SPECIAL
            continue
        kinds[pos] = STOP if _inflection(prompt, words[w], int(s), int(e)) else words[w].kind
        word_index[pos] = w
    unseen = [
        w.text
        for i, w in enumerate(words)
        if w.kind != PUNCT and w.end <= len(expression) and not (word_index == i).any()
    ]
    if unseen:  # e.g. FLUX.2's pipeline strips "[IMG]" from the text it encodes
        notes.append(
            f"the model never receives {', '.join(map(repr, unseen))}: the pipeline drops "
            f"{'it' if len(unseen) == 1 else 'them'} from the text it encodes"
        )
    return PromptTokens(expression, prompt, words, kinds, word_index, head_noun(words), seq, notes)


def _inflection(prompt: str, word: Word, s: int, e: int) -> bool:
    """Whether the token at ``[s, e)`` is a content word's trailing inflection piece (see ``_INFLECTIONS``)."""
    return word.kind == CONTENT and e == word.end and s - word.start >= 3 and prompt[s:e].lower() in _INFLECTIONS


def _word_at(words: list[Word], s: int, e: int) -> int | None:
    """The word a token's character span [s, e) belongs to: of the words it overlaps, a word
    rather than a punctuation mark, then the one it covers most (the first on a tie). Byte-level
    BPE pre-tokenizers (Qwen, Llama 3, Tekken) glue one punctuation mark to the *next* word —
    "t-shirt" → ``t`` ``-shirt``, "a dog,a cat" → ``,a`` — and such a token is the word's, or the
    word would get no column. A bare space piece → the next word."""
    if e <= s:
        return None
    best, best_key = None, None
    for i, w in enumerate(words):
        overlap = min(e, w.end) - max(s, w.start)
        key = (w.kind != PUNCT, overlap)
        if overlap > 0 and (best_key is None or key > best_key):
            best, best_key = i, key
    if best is not None:
        return best
    for i, w in enumerate(words):
        if w.start >= e:
            return i
    return None
