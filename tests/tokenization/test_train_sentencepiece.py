"""The trained tokenizer must behave like a published one: reloadable, faithful, with a real template."""

import os

import pytest
import sentencepiece as spm
from transformers import AutoTokenizer

from ia_jax.tokenization import train_tokenizer

CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "  Why is it going to rain?\n"},
    {"role": "assistant", "content": "A cloud."},
]
EXPECTED_RENDERING = {
    "llama3": (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhy is it going to rain?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nA cloud.<|eot_id|>"
    ),
    "chatml": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n  Why is it going to rain?\n<|im_end|>\n"
        "<|im_start|>assistant\nA cloud.<|im_end|>\n"
    ),
}
GENERATION_PROMPT = {
    "llama3": "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "chatml": "<|im_start|>assistant\n",
}
SPECIAL_TOKENS = {
    "llama3": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    "chatml": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
}
EOS = {"llama3": "<|eot_id|>", "chatml": "<|im_end|>"}
PAD = {"llama3": "<|end_of_text|>", "chatml": "<|endoftext|>"}
UNICODE_TEXT = "naïve café 日本語 🙂\n\ttabs  and  double spaces 12345 ÜBER"


def test_dir_reloads_with_identical_ids(trained, corpus):
    assert {"tokenizer.model", "tokenizer.json", "tokenizer_config.json"} <= set(os.listdir(trained.path))
    reloaded = AutoTokenizer.from_pretrained(trained.path)
    rendered = trained.tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    for text in [*corpus[:50], UNICODE_TEXT, rendered]:
        assert reloaded(text, add_special_tokens=False).input_ids == trained.tokenizer(
            text, add_special_tokens=False
        ).input_ids
    assert reloaded.chat_template == trained.tokenizer.chat_template
    assert (reloaded.eos_token, reloaded.pad_token) == (EOS[trained.chat_format], PAD[trained.chat_format])


def test_vocab_size_is_exact(trained):
    assert len(trained.tokenizer) == trained.vocab_size


def test_matches_sentencepiece(trained, corpus):
    """The transformers conversion of tokenizer.model must tokenize exactly as sentencepiece does."""
    processor = spm.SentencePieceProcessor(model_file=os.path.join(trained.path, "tokenizer.model"))
    for text in [*corpus, UNICODE_TEXT]:
        assert trained.tokenizer(text, add_special_tokens=False).input_ids == processor.encode(text)


def test_byte_fallback_round_trips_any_text(trained):
    ids = trained.tokenizer(UNICODE_TEXT, add_special_tokens=False).input_ids
    assert trained.tokenizer.unk_token_id not in ids
    assert trained.tokenizer.decode(ids) == UNICODE_TEXT


@pytest.mark.parametrize("reload", [False, True])
def test_special_tokens_are_single_special_ids(trained, reload):
    tokenizer = AutoTokenizer.from_pretrained(trained.path) if reload else trained.tokenizer
    for token in SPECIAL_TOKENS[trained.chat_format]:
        ids = tokenizer(f"hello{token}world", add_special_tokens=False).input_ids
        assert tokenizer.convert_tokens_to_ids(token) in ids
        assert tokenizer.decode(ids) == f"hello{token}world"
        assert tokenizer.decode(ids, skip_special_tokens=True) == "helloworld"
    assert tokenizer(EXPECTED_RENDERING[trained.chat_format], add_special_tokens=True).input_ids == tokenizer(
        EXPECTED_RENDERING[trained.chat_format], add_special_tokens=False
    ).input_ids, "the template already writes bos; the tokenizer must not add another"


def test_chat_template_renders_published_format(trained):
    tokenizer = trained.tokenizer
    full, header = EXPECTED_RENDERING[trained.chat_format], GENERATION_PROMPT[trained.chat_format]
    assert tokenizer.apply_chat_template(CONVERSATION, tokenize=False) == full
    prompt = tokenizer.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True)
    assert prompt == full[: full.index(header) + len(header)]


def test_training_is_deterministic(tmp_path, corpus):
    for name in ("a", "b"):
        train_tokenizer(corpus, str(tmp_path / name), vocab_size=450, chat_format="chatml")
    assert (tmp_path / "a" / "tokenizer.model").read_bytes() == (tmp_path / "b" / "tokenizer.model").read_bytes()


def test_unigram_model_type(tmp_path, corpus):
    tokenizer = train_tokenizer(corpus, str(tmp_path), vocab_size=400, chat_format="llama3", model_type="unigram")
    rendered = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert tokenizer.decode(tokenizer(rendered, add_special_tokens=False).input_ids) == rendered


def test_too_small_vocab_names_the_flag(tmp_path, corpus):
    with pytest.raises(ValueError, match=r"vocab_size=280 does not fit"):
        train_tokenizer(corpus, str(tmp_path), vocab_size=280)


def test_unknown_chat_format(tmp_path, corpus):
    with pytest.raises(ValueError, match=r"chat_format='vicuna'"):
        train_tokenizer(corpus, str(tmp_path), vocab_size=450, chat_format="vicuna")
