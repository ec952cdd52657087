"""Tokenizers and chat rendering for training on assistant turns only.

    from ia_jax import tokenization
    tokenizer = tokenization.load_tokenizer("path/to/hf_dir")
    chat = tokenization.render_chat(tokenizer, messages)  # chat.ids, chat.loss_mask

`train_tokenizer` builds a small sentencepiece tokenizer with a Llama 3 or ChatML template offline.
"""

from ia_jax.tokenization.chat import (
    ROLES,
    ChatError,
    ChatTokens,
    load_tokenizer,
    render_chat,
    render_exchange,
    save_tokenizer,
    stop_token_ids,
)
from ia_jax.tokenization.train_sentencepiece import CHAT_FORMATS, train_tokenizer

__all__ = [
    "CHAT_FORMATS",
    "ROLES",
    "ChatError",
    "ChatTokens",
    "load_tokenizer",
    "render_chat",
    "render_exchange",
    "save_tokenizer",
    "stop_token_ids",
    "train_tokenizer",
]
