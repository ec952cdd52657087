"""Chat conversations to token ids plus a loss mask that is 1 exactly on what the assistant says.

Each conversation is rendered once with the model's own chat template, tokenized once (separately
tokenized segments can merge differently at their boundaries), and each message's content is then
found in the rendered text to mark the tokens that carry it. The obvious shortcuts are wrong for
published templates: they are not prefix-stable (Qwen3 drops `<think>` blocks from assistant turns
before the last user query, so rendering turn by turn differs from rendering the whole chat), and
they have no `{% generation %}` markers, so `return_assistant_tokens_mask` cannot be used.

The end-of-turn token after an assistant reply is also trained on: the model must learn to stop.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from ia_jax.storage import gcs

ROLES = ("system", "user", "assistant")
# Turn terminators of the supported families, stop tokens even where eos is something else.
_TURN_END_TOKENS = ("<|eot_id|>", "<|im_end|>")
# What `load_tokenizer` never downloads from a gs:// checkpoint folder: weights and training state.
_NOT_TOKENIZER_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx",
                           ".npy", ".npz", ".index.json")


class ChatError(ValueError):
    """A tokenizer or conversation that cannot be rendered; the message names the path or message."""


@dataclasses.dataclass(frozen=True)
class ChatTokens:
    ids: np.ndarray  # [T] int32
    loss_mask: np.ndarray  # [T] int32, 1 on assistant content and the stop token ending its turn


def _is_tokenizer_file(relative_name: str) -> bool:
    top_level = "/" not in relative_name or relative_name.startswith("additional_chat_templates/")
    return top_level and not relative_name.endswith(_NOT_TOKENIZER_SUFFIXES)


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """Loads a tokenizer folder, local or `gs://`; chat training and sampling both need its chat template.

    From `gs://`, the folder's small files (tokenizer.json, tokenizer_config.json, chat template, config.json
    and the like; never weights) are copied to the local cache (`gcs.cache_path`) and loaded from there.
    """
    source = path
    if gcs.is_gcs(path):
        source = gcs.cache_path(path)
        try:
            gcs.download_dir(path, source, include=_is_tokenizer_file)
        except FileNotFoundError as e:
            raise ChatError(f"{path}: no tokenizer files there ({e})") from e
    elif not os.path.isdir(path):
        raise ChatError(f"{path}: not a directory")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise ChatError(f"{path}: no loadable tokenizer there ({e})") from e
    if not tokenizer.chat_template:
        raise ChatError(f"{path}: the tokenizer has no chat template")
    return tokenizer


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, path: str) -> None:
    """Writes the tokenizer's files into folder `path`; to `gs://` through a temporary local folder (they are
    small), uploaded file by file."""
    if not gcs.is_gcs(path):
        tokenizer.save_pretrained(path)
        return
    with tempfile.TemporaryDirectory(prefix="ia_jax_tokenizer_") as local:
        tokenizer.save_pretrained(local)
        gcs.upload_dir(local, path)


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Ids that end an assistant turn: eos plus the family turn terminators the vocab has."""
    ids = set() if tokenizer.eos_token_id is None else {tokenizer.eos_token_id}
    for token in _TURN_END_TOKENS:
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is not None and token_id != tokenizer.unk_token_id:
            ids.add(token_id)
    return sorted(ids)


def render_chat(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = False,
    **template_kwargs: Any,
) -> ChatTokens:
    """Renders `messages` with the tokenizer's chat template; extra kwargs go to the template.

    With `add_generation_prompt` the result is a prompt to sample from, so the mask is all zeros.
    """
    _validate(messages, add_generation_prompt)
    text = tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=add_generation_prompt, **template_kwargs
    )
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(encoding["input_ids"], np.int32)
    offsets = np.asarray(encoding["offset_mapping"], np.int64).reshape(-1, 2)
    loss_mask = np.zeros_like(ids)
    if not add_generation_prompt:
        stops = stop_token_ids(tokenizer)
        stop_strings = [tokenizer.convert_ids_to_tokens(i) for i in stops]
        for index, start, end in _content_spans(text, messages, stop_strings):
            if messages[index]["role"] == "assistant":
                _mark_turn(loss_mask, ids, offsets, text, start, end, stops, index)
    return ChatTokens(ids=ids, loss_mask=loss_mask)


def render_exchange(tokenizer: PreTrainedTokenizerBase, user: str, answer: str, **template_kwargs: Any) -> ChatTokens:
    """One user turn and its answer, loss on the answer: the shape of every training example here."""
    return render_chat(tokenizer, [{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
                       **template_kwargs)


def _validate(messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool) -> None:
    if not messages:
        raise ChatError("empty conversation")
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ChatError(f"message {i}: expected a dict with role and content, got {type(message).__name__}")
        role = message.get("role")
        if role not in ROLES:
            raise ChatError(f"message {i}: role {role!r} is not one of {ROLES}")
        if "content" not in message:
            raise ChatError(f"message {i} ({role}): no 'content'")
        if not isinstance(message["content"], str):
            raise ChatError(f"message {i} ({role}): content must be a str, got {type(message['content']).__name__}")
        if role == "assistant" and not message["content"].strip():
            raise ChatError(f"message {i} (assistant): empty content")
    if add_generation_prompt and messages[-1]["role"] == "assistant":
        raise ChatError(
            f"message {len(messages) - 1} (assistant): add_generation_prompt=True prompts for a new "
            "assistant turn, so the conversation must not end with one"
        )


def _content_spans(
    text: str, messages: Sequence[Mapping[str, Any]], stop_strings: list[str]
) -> list[tuple[int, int, int]]:
    """(message index, start, end) of each non-empty message's content in the rendered text, in order."""
    spans = []
    cursor = 0
    for i, message in enumerate(messages):
        needle = message["content"].strip()
        if not needle:
            continue
        start = _find_content(text, needle, cursor, stop_strings)
        if start < 0:
            raise ChatError(
                f"message {i} ({message['role']}): content not found in the text rendered by the chat "
                "template; the template rewrites it (Qwen3 strips inline <think> blocks from assistant "
                "content: pass reasoning as 'reasoning_content' instead)"
            )
        cursor = start + len(needle)
        spans.append((i, start, cursor))
    return spans


def _find_content(text: str, needle: str, cursor: int, stop_strings: list[str]) -> int:
    """First occurrence from `cursor` that ends its turn (only whitespace before a stop token), else
    the first occurrence: a short reply such as "a" also occurs inside the next role header."""
    first = text.find(needle, cursor)
    position = first
    while position >= 0:
        after = position + len(needle)
        while after < len(text) and text[after].isspace():
            after += 1
        if any(text.startswith(stop, after) for stop in stop_strings):
            return position
        position = text.find(needle, position + 1)
    return first


def _mark_turn(
    loss_mask: np.ndarray,
    ids: np.ndarray,
    offsets: np.ndarray,
    text: str,
    start: int,
    end: int,
    stops: list[int],
    index: int,
) -> None:
    """Masks tokens overlapping [start, end), then whitespace and the stop token right after them."""
    content = np.flatnonzero((offsets[:, 0] < end) & (offsets[:, 1] > start))
    if content.size == 0:
        raise ChatError(f"message {index} (assistant): no token offsets cover its content")
    loss_mask[content] = 1
    k = content[-1] + 1
    while k < len(ids) and ids[k] not in stops and text[offsets[k, 0] : offsets[k, 1]].isspace():
        k += 1
    if k < len(ids) and ids[k] in stops:
        loss_mask[content[-1] + 1 : k + 1] = 1
