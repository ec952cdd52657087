"""Train a small sentencepiece tokenizer with a real chat template, entirely offline.

Tests and toy runs need a tokenizer that behaves like the published ones (special chat tokens that
are single ids, a Jinja chat template, a `transformers` fast tokenizer with offsets) without
downloading one. Byte fallback makes every string encodable, so decode(encode(text)) == text.
Normalization is off (identity, no dummy prefix, whitespace kept) because the chat templates put
newlines and spaces exactly where the model must see them.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from collections.abc import Iterable

import sentencepiece as spm
from tokenizers import AddedToken
from transformers import AutoTokenizer, PreTrainedTokenizerBase

UNK_TOKEN = "<unk>"


@dataclasses.dataclass(frozen=True)
class _ChatFormat:
    special_tokens: tuple[str, ...]
    bos_token: str | None
    eos_token: str
    pad_token: str
    chat_template: str


# Meta's Llama 3 Instruct template, verbatim. eos is <|eot_id|>: that is where a turn stops.
_LLAMA3_TEMPLATE = (
    r"{% set loop_messages = messages %}{% for message in loop_messages %}"
    r"{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    r"+ message['content'] | trim + '<|eot_id|>' %}"
    r"{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    r"{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Qwen2.5's ChatML template without the default system prompt and tool branches.
_CHATML_TEMPLATE = (
    r"{%- for message in messages %}"
    r"{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    r"{%- endfor %}"
    r"{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)

_FORMATS = {
    "llama3": _ChatFormat(
        special_tokens=(
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
        ),
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|end_of_text|>",
        chat_template=_LLAMA3_TEMPLATE,
    ),
    "chatml": _ChatFormat(
        special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=_CHATML_TEMPLATE,
    ),
}
CHAT_FORMATS = tuple(_FORMATS)


def train_tokenizer(
    texts: Iterable[str],
    out_dir: str,
    *,
    vocab_size: int,
    chat_format: str = "llama3",
    model_type: str = "bpe",
    seed: int = 0,
    input_sentence_size: int = 0,
    split_digits: bool = True,
) -> PreTrainedTokenizerBase:
    """Trains on `texts` and writes a loadable tokenizer dir (tokenizer.model and tokenizer.json).

    `vocab_size` counts everything: 256 byte-fallback pieces, <unk>, the chat format's special
    tokens, every distinct character of the corpus, then learned merges. `input_sentence_size` > 0
    trains on that many sentences sampled with `seed` (sentencepiece's seed is process-global).
    """
    if chat_format not in _FORMATS:
        raise ValueError(f"chat_format={chat_format!r}: expected one of {CHAT_FORMATS}")
    fmt = _FORMATS[chat_format]
    spm.set_random_generator_seed(seed)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts),
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            byte_fallback=True,
            character_coverage=1.0,
            split_digits=split_digits,
            user_defined_symbols=list(fmt.special_tokens),
            normalization_rule_name="identity",
            add_dummy_prefix=False,
            remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True,
            input_sentence_size=input_sentence_size,
            shuffle_input_sentence=True,
            unk_id=0,
            unk_piece=UNK_TOKEN,
            bos_id=-1,
            eos_id=-1,
            pad_id=-1,
            minloglevel=2,
        )
    except RuntimeError as e:
        if "Vocabulary size" in str(e):
            raise ValueError(
                f"vocab_size={vocab_size} does not fit this corpus with chat_format={chat_format!r}: it "
                f"counts 256 byte pieces, {len(fmt.special_tokens) + 1} special tokens, every distinct "
                f"character and the learned merges; sentencepiece says: {e}"
            ) from e
        raise

    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "tokenizer.model"), "wb") as f:
        f.write(model.getvalue())
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": fmt.bos_token,
        "eos_token": fmt.eos_token,
        "pad_token": fmt.pad_token,
        "unk_token": UNK_TOKEN,
        "add_bos_token": False,
        "add_eos_token": False,
        "legacy": False,
        "add_prefix_space": False,
        "chat_template": fmt.chat_template,
    }
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    # The conversion marks only bos/eos/pad/unk special; published chat tokenizers mark every chat
    # token special, so that decode(..., skip_special_tokens=True) drops the headers too.
    tokenizer.add_tokens(
        [AddedToken(token, special=True, normalized=False) for token in fmt.special_tokens], special_tokens=True
    )
    tokenizer.save_pretrained(out_dir)
    return tokenizer
