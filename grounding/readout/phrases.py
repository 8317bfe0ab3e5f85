"""What an expression asks for, read from its words alone: how many instances ("the two circles"
→ 2) and which concept ("the dog on the left of the bench" → "dog"). A concept segmenter (SAM 3)
understands a short noun phrase and ignores places, relations and counts, so the sentence's map
decides *which* of its instances are meant; these helpers say what to ask it for and how many
instances to keep. Pure functions over ``tokens.split_words`` and the word kinds."""

from __future__ import annotations

from .tokens import CONTENT, COPULAS, PHRASE_BREAKS, RELATIVE, SPATIAL, Word, head_noun, split_words, word_kind

_NUMBERS = {
    "one": 1,
    "single": 1,
    "two": 2,
    "both": 2,
    "pair": 2,
    "couple": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
}
_ALL = frozenset("all every each any".split())
_IRREGULAR = {
    "people": "person",
    "men": "man",
    "women": "woman",
    "children": "child",
    "mice": "mouse",
    "geese": "goose",
    "feet": "foot",
    "teeth": "tooth",
    "police": "police",
    "cattle": "cattle",
    "knives": "knife",
    "leaves": "leaf",
    "wolves": "wolf",
    "shelves": "shelf",
    "halves": "half",
    "loaves": "loaf",
    "calves": "calf",
    "wives": "wife",
}
# Words that choose among instances instead of naming what they are ("the largest dog", "the
# second car", "the front bus"): SAM 3 cannot read them (sam3 #461), the map does.
_CHOOSERS = frozenset(
    """first second third fourth fifth last other another next previous
    largest smallest biggest tallest shortest longest widest closest nearest farthest furthest
    highest lowest
    larger smaller bigger taller shorter longer wider closer nearer farther further higher lower
    front rear far near""".split()
)


def words_of(expression: str) -> list[Word]:
    """The expression's words with their kinds (``tokens.word_kind``), as ``head_noun`` reads them."""
    return [Word(w, s, e, word_kind(w)) for w, s, e in split_words(expression)]


def requested_count(expression: str) -> int | None:
    """The number of instances an expression asks for: "the two circles" → 2, "both squares" → 2,
    "3 dogs" → 3, "the red circle" → 1 (a singular head noun); "all red objects", "the circles"
    (a plural head noun), "the cat and the dog" (joined phrases) → None (as many as the map shows)."""
    parsed = words_of(expression)
    for word in (w.text.lower() for w in parsed):
        if word.isdigit():
            return max(1, min(int(word), 100))
        if word in _NUMBERS and word != "one":
            return _NUMBERS[word]
        if word in _ALL:
            return None
    head = head_noun(parsed)
    if head is None or is_plural(parsed[head].text) or joined(parsed):
        return None
    return 1


def is_plural(noun: str) -> bool:
    """English plural by form: "circles", "boxes", "people"; not "glass", "bus", "iris"."""
    n = noun.lower()
    if n in _IRREGULAR:
        return True
    return len(n) > 3 and n.endswith("s") and not n.endswith(("ss", "us", "is"))


def singular(noun: str) -> str:
    """A plural noun's singular by form ("cups" → "cup", "boxes" → "box", "berries" → "berry",
    "people" → "person", "knives" → "knife"); any other word unchanged."""
    n = noun.lower()
    if n in _IRREGULAR:
        return _IRREGULAR[n]
    if not is_plural(n):
        return n
    if n.endswith("ies") and len(n) > 4:
        return n[:-3] + "y"
    if n.endswith(("ses", "xes", "zes", "ches", "shes")):
        return n[:-2]
    return n[:-1]


def joined(words: list[Word]) -> bool:
    """Whether "and" / "or" joins two phrases with content words ("the cat and the dog", "man on
    the left and woman on the right": two referents, each singular) — not a "between" anchor pair."""
    for i, w in enumerate(words):
        t = w.text.lower()
        if t == "between":
            return False
        if (
            t in ("and", "or")
            and any(v.kind == CONTENT for v in words[:i])
            and any(v.kind == CONTENT for v in words[i + 1 :])
        ):
            return True
    return False


def head_phrase(expression: str) -> str | None:
    """The noun phrase a concept segmenter is asked for: the head noun (``tokens.head_noun``) in
    the singular with the content words right before it, leaving out words that place or choose
    an instance (left, top, largest, second) — "the dog on the left of the bench" → "dog",
    "both red cups" → "red cup", "the leftmost large green triangle" → "large green triangle",
    "man in a red shirt" → "man"; a relative clause with a copula describes the noun too: "the
    circle that is red" → "red circle". None when the expression has no content word."""
    words = words_of(expression)
    head = head_noun(words)
    if head is None:
        return None
    # "zebra farthest right": a chooser where the noun should be — the noun is the word before it
    while head > 0 and words[head].text.lower() in _CHOOSERS | SPATIAL and words[head - 1].kind == CONTENT:
        head -= 1
    before: list[str] = []
    for w in reversed(words[:head]):
        if w.kind != CONTENT:
            break
        before.insert(0, w.text.lower())
    text = [w.text.lower() for w in words]
    after: list[str] = []
    if head + 2 < len(words) and text[head + 1] in RELATIVE and text[head + 2] in COPULAS:
        for w, t in zip(words[head + 3 :], text[head + 3 :]):
            if w.kind != CONTENT or t in PHRASE_BREAKS:
                break
            after.append(t)
    kept = [t for t in after + before if t not in SPATIAL and t not in _CHOOSERS]
    return " ".join(kept + [singular(words[head].text)])
