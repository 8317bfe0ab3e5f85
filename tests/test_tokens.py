"""Words ↔ token positions for both backends."""

import pytest

from grounding.backends import load_backend
from grounding.config import MagnetConfig
from grounding.tokens import CONTENT, MAGNET, PAD, PUNCT, SPECIAL, STOP, align, head_noun, split_words, validate_expression


def _clean(piece: str) -> str:
    return piece.replace("▁", "").replace("</w>", "").lower()


@pytest.fixture(scope="module", params=["flux", "sd3"])
def backend(request, tiny_flux_dir, tiny_sd3_dir):
    return load_backend(tiny_flux_dir if request.param == "flux" else tiny_sd3_dir)


def test_every_word_maps_to_its_own_pieces(backend):
    expr = "The DOG's bench, next to Zebra-like trees!"
    streams = backend.streams(48)
    tok = align(expr, streams, MagnetConfig())
    assert tok.prompt.startswith(expr)
    for stream in streams:
        ids = tok.input_ids[stream.name]
        pieces = stream.tokenizer.convert_ids_to_tokens(ids)
        for w, word in enumerate(tok.words):
            pos = [p - stream.offset for p in tok.positions(w) if stream.offset <= p < stream.offset + stream.length]
            assert pos, f"{word.text!r} has no token in {stream.name}"
            assert pos == list(range(pos[0], pos[0] + len(pos))), "a word's tokens are contiguous"
            text = "".join(_clean(pieces[p]) for p in pos)
            assert text == word.text.lower(), (stream.name, word.text, [pieces[p] for p in pos])
    # a word split into several tokens in every stream
    bench = [i for i, w in enumerate(tok.words) if w.text == "bench"][0]
    for stream in streams:
        n = sum(stream.offset <= p < stream.offset + stream.length for p in tok.positions(bench))
        assert n > 1, stream.name


def test_kinds_and_layout(backend):
    streams = backend.streams(32)
    tok = align("the red circle, left of a cat", streams, MagnetConfig())
    kinds = {w.text: w.kind for w in tok.words[:8]}
    assert kinds["the"] == STOP and kinds["red"] == CONTENT and kinds[","] == PUNCT and kinds["of"] == STOP
    assert all(w.kind == MAGNET for w in tok.words[8:]) and len(tok.words) == 8 + 5
    for stream in streams:
        seg = tok.kinds[stream.offset: stream.offset + stream.length]
        assert SPECIAL in seg  # EOS (and BOS for CLIP) known by position
        assert seg[-1] == PAD
        used = (seg != PAD).sum()
        assert (seg[used:] == PAD).all(), "padding only at the end"
    assert tok.words[tok.head_word].text == "circle"


def test_magnets_can_be_switched_off(backend):
    tok = align("red circle", backend.streams(32), MagnetConfig(enabled=False))
    assert tok.prompt == "red circle" and MAGNET not in tok.kinds


def test_head_noun_rule():
    from grounding.tokens import build_prompt

    def head(expr):
        _, words = build_prompt(expr, MagnetConfig(enabled=False))
        i = head_noun(words)
        return words[i].text

    assert head("the dog on the left of the bench") == "dog"
    assert head("big green square") == "square"
    assert head("man in red shirt") == "man"
    assert head("left of the car") == "car"


def test_complement_words():
    from grounding.tokens import build_prompt, complement_words

    def comp(expr):
        _, words = build_prompt(expr, MagnetConfig(enabled=False))
        return [words[i].text for i in complement_words(words)]

    assert comp("the square left of the yellow circle") == ["yellow", "circle"]
    assert comp("the dog on the left of the bench") == ["bench"]
    assert comp("the circle at the top") == []
    assert comp("the big red circle") == []
    assert comp("man holding a red cup") == ["red", "cup"]


def test_complement_weight_scales_only_the_anchor(backend):
    tok = align("the square left of the yellow circle", backend.streams(32), MagnetConfig(complement_weight=0.25))
    w_plain = tok.token_weights(2.0)
    w = tok.token_weights(2.0, 0.25)
    by_word = {tok.words[i].text: float(w[tok.positions(i)[0]]) for i in range(len(tok.words)) if tok.positions(i)}
    assert by_word["square"] == 2.0 and by_word["left"] == 1.0
    assert by_word["yellow"] == 0.25 and by_word["circle"] == 0.25
    assert (w_plain[w == 0.25] == 1.0).all()


@pytest.mark.parametrize("bad", ["", "   \t\n", "the of a", "?!", "the, and."])
def test_nothing_to_ground_is_a_value_error(bad):
    with pytest.raises(ValueError):
        validate_expression(bad)


def test_overlong_expression_is_truncated_with_a_warning(backend):
    long = " ".join(["red circle near the blue square"] * 20)
    with pytest.warns(UserWarning, match="truncated"):
        tok = align(long, backend.streams(32), MagnetConfig())
    assert len(tok.expression) < len(long) and tok.warnings
    assert (tok.kinds == MAGNET).sum() > 0, "magnets survive truncation"


def test_split_words_keeps_punctuation_and_apostrophes():
    assert [w for w, _, _ in split_words("dog's bench, left!")] == ["dog's", "bench", ",", "left", "!"]
