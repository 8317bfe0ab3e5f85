"""Words ↔ token positions for both backends."""

import numpy as np
import pytest

from grounding.backends import ROLE_NAMES, load_backend
from grounding.config import MagnetConfig
from grounding.readout.tokens import (
    CONTENT,
    MAGNET,
    PAD,
    PUNCT,
    SPECIAL,
    STOP,
    align,
    head_noun,
    split_words,
    validate_expression,
)
from synthetic import vocabularies


def _clean(piece: str) -> str:
    return piece.replace("▁", "").replace("</w>", "").lower()


@pytest.fixture(scope="module", params=["flux", "sd3"])
def backend(request, tiny_flux_dir, tiny_sd3_dir):
    return load_backend(tiny_flux_dir if request.param == "flux" else tiny_sd3_dir)


def _align(backend, expression, n, magnets=None):
    return align(expression, lambda p: backend.tokenize([p], n)[0], magnets or MagnetConfig())


def _streams(backend, tok):
    """(name, tokenizer, positions in the text sequence) per stream the transformer receives."""
    pipe = backend.pipe
    tokenizers = (
        {"t5": pipe.tokenizer_2} if backend.arch == "flux" else {"clip": pipe.tokenizer, "t5": pipe.tokenizer_3}
    )
    seq = tok.sequence
    return [(name, tokenizers[name], np.flatnonzero(seq.stream == i)) for i, name in enumerate(seq.streams)]


def test_every_word_maps_to_its_own_pieces(backend):
    expr = "The DOG's bench, next to Zebra-like trees!"
    tok = _align(backend, expr, 48)
    assert tok.prompt.startswith(expr)
    streams = _streams(backend, tok)
    for name, tokenizer, where in streams:
        pieces = tokenizer.convert_ids_to_tokens(tok.sequence.ids[where].tolist())
        for w, word in enumerate(tok.words):
            pos = [int(p - where[0]) for p in tok.positions(w) if p in set(where.tolist())]
            assert pos, f"{word.text!r} has no token in {name}"
            assert pos == list(range(pos[0], pos[0] + len(pos))), "a word's tokens are contiguous"
            text = "".join(_clean(pieces[p]) for p in pos)
            assert text == word.text.lower(), (name, word.text, [pieces[p] for p in pos])
    # a word split into several tokens in every stream
    bench = [i for i, w in enumerate(tok.words) if w.text == "bench"][0]
    for name, _, where in streams:
        n = sum(p in set(where.tolist()) for p in tok.positions(bench))
        assert n > 1, name


def test_sequence_is_what_the_pipeline_feeds_the_transformer(backend):
    """The backend's token ids are the pipeline's own tokenisation, and its embeddings of them
    are ``encode_prompt``'s, bit for bit (so words align by construction)."""
    import torch

    prompts = ["the red circle, left of a cat and of with the a", "blue square"]
    seqs = backend.tokenize(prompts, 32)
    ours = backend.encode_prompts(seqs)
    pipe = backend.pipe
    with torch.no_grad():  # as the engine runs it (autograd mode picks other kernels)
        if backend.arch == "flux":
            embeds, pooled, text_ids = pipe.encode_prompt(prompt=prompts, prompt_2=None, max_sequence_length=32)
            assert torch.equal(ours["text_ids"], text_ids)
        else:
            embeds, _, pooled, _ = pipe.encode_prompt(
                prompt=prompts, prompt_2=None, prompt_3=None, do_classifier_free_guidance=False, max_sequence_length=32
            )
    assert torch.equal(ours["embeds"], embeds) and torch.equal(ours["pooled"], pooled)
    assert all(len(s) == embeds.shape[1] for s in seqs)
    assert {ROLE_NAMES[r] for r in seqs[0].roles} >= {"text", "special", "padding"}


def test_kinds_and_layout(backend):
    tok = _align(backend, "the red circle, left of a cat", 32)
    kinds = {w.text: w.kind for w in tok.words[:8]}
    assert kinds["the"] == STOP and kinds["red"] == CONTENT and kinds[","] == PUNCT and kinds["of"] == STOP
    assert all(w.kind == MAGNET for w in tok.words[8:]) and len(tok.words) == 8 + 5
    for name, _, where in _streams(backend, tok):
        seg = tok.kinds[where]
        assert SPECIAL in seg  # EOS (and BOS for CLIP) known by position
        assert seg[-1] == PAD
        used = (seg != PAD).sum()
        assert (seg[used:] == PAD).all(), "padding only at the end"
    assert tok.words[tok.head_word].text == "circle"


def test_magnets_can_be_switched_off(backend):
    tok = _align(backend, "red circle", 32, MagnetConfig(enabled=False))
    assert tok.prompt == "red circle" and MAGNET not in tok.kinds


def test_head_noun_rule():
    from grounding.readout.tokens import build_prompt

    def head(expr):
        _, words = build_prompt(expr, MagnetConfig(enabled=False))
        i = head_noun(words)
        return words[i].text

    assert head("the dog on the left of the bench") == "dog"
    assert head("big green square") == "square"
    assert head("man in red shirt") == "man"
    assert head("left of the car") == "car"


def test_complement_words():
    from grounding.readout.tokens import build_prompt, complement_words

    def comp(expr):
        _, words = build_prompt(expr, MagnetConfig(enabled=False))
        return [words[i].text for i in complement_words(words)]

    assert comp("the square left of the yellow circle") == ["yellow", "circle"]
    assert comp("the dog on the left of the bench") == ["bench"]
    assert comp("the circle at the top") == []
    assert comp("the big red circle") == []
    assert comp("man holding a red cup") == ["red", "cup"]
    assert comp("the circle that is red") == []
    assert comp("the square which is green") == []
    assert comp("the man who is holding a red cup") == ["red", "cup"]
    assert comp("the circle that is left of the red square") == ["red", "square"]
    assert comp("the cup that the man holds") == ["man", "holds"]


def test_complement_weight_scales_only_the_anchor(backend):
    tok = _align(backend, "the square left of the yellow circle", 32, MagnetConfig(complement_weight=0.25))
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
        tok = _align(backend, long, 32)
    assert len(tok.expression) < len(long) and tok.warnings
    assert (tok.kinds == MAGNET).sum() > 0, "magnets survive truncation"


def test_split_words_keeps_punctuation_and_apostrophes():
    assert [w for w, _, _ in split_words("dog's bench, left!")] == ["dog's", "bench", ",", "left", "!"]


GLUED = [
    "guy in t-shirt",
    "black-and-white cat",
    "left-most giraffe",
    "half-eaten sandwich",
    "cat/dog on the sofa",
    "a dog,a cat",
    "e-mail@address.com",
    "über-cool dog",
    "<think> box",
    "the man's hat",
    "3rd car from left",
]


def _byte_bpe_tokenizer(texts: list[str]):
    r"""A byte-level BPE fast tokenizer with the real pre-tokenizer (Llama 3's split regex — Qwen and
    Tekken share its letter rule ``[^\r\n\p{L}\p{N}]?\p{L}+``, which glues one punctuation mark to
    the next word — and the byte level) whose
    vocabulary holds every pre-token of ``texts`` whole — as large real vocabularies hold
    ``-shirt``, ``,a`` or ``/dog`` — so each pre-token is one token."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    pre = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(vocabularies.LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    vocab = {t: i for i, t in enumerate(bytes_to_unicode().values())}
    merges = []
    for text in texts:
        for piece, _ in pre.pre_tokenize_str(text):
            for k in range(2, len(piece) + 1):  # left to right: "-s"+"h" ... up to the whole piece
                if piece[:k] not in vocab:
                    merges.append((piece[: k - 1], piece[k - 1]))
                    vocab[piece[:k]] = len(vocab)
    vocab["<pad>"] = len(vocab)
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    bpe.pre_tokenizer, bpe.decoder = pre, decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", model_max_length=512)


@pytest.mark.parametrize("expression", GLUED)
def test_byte_bpe_glued_punctuation_never_costs_a_word_its_token(expression):
    """Every word gets its tokens, including a token that carries a punctuation mark glued to it
    (``-shirt`` is "shirt"'s); a token is the punctuation's only when it holds nothing else."""
    from grounding.backends.sequences import TEXT, join_streams, tokenize_stream

    magnets = MagnetConfig()
    tok = _byte_bpe_tokenizer([expression + " and of with the a"])
    tokenize = lambda prompt: join_streams(prompt, ("llm",), [tokenize_stream(tok, prompt, 64, 0)])  # noqa: E731
    pt = align(expression, tokenize, magnets)
    seq = pt.sequence
    for w, word in enumerate(pt.words):
        positions = pt.positions(w)
        if word.kind == PUNCT:
            continue
        assert positions, f"{word.text!r} of {expression!r} got no token"
        # every text token overlapping the word's letters is the word's
        for pos in np.flatnonzero(seq.roles == TEXT):
            s, e = seq.spans[pos]
            if min(e, word.end) - max(s, word.start) > 0:
                assert pt.word_index[pos] == w, (expression, word.text, pt.prompt[s:e])
