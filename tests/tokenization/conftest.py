"""Tokenizers trained once per session from a generated corpus, so nothing is downloaded."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

import pytest
from transformers import PreTrainedTokenizerBase

from ia_jax.tokenization import CHAT_FORMATS, train_tokenizer

VOCAB_SIZE = 500
_WORDS = (
    "the quick brown fox jumps over a lazy dog cat sat on mat hello world model learns to stop when it "
    "is done sure thing answer question why how what you are helpful assistant tell me about weather "
    "today rain sun cloud going think step by first then finally yes no maybe one two three"
).split()


@dataclasses.dataclass(frozen=True)
class Trained:
    chat_format: str
    vocab_size: int
    path: str
    tokenizer: PreTrainedTokenizerBase


def _line(rng: random.Random) -> str:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 14))]
    words[0] = words[0].capitalize()
    if rng.random() < 0.2:
        words.insert(rng.randrange(len(words)), str(rng.randint(0, 999)))
    return " ".join(words) + rng.choice(".?!,")


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    rng = random.Random(0)
    return [_line(rng) for _ in range(400)]


@pytest.fixture(scope="session")
def train(tmp_path_factory: pytest.TempPathFactory, corpus: list[str]) -> Callable[[str], Trained]:
    """Trains each chat format at most once per session."""
    cache: dict[str, Trained] = {}

    def get(chat_format: str) -> Trained:
        if chat_format not in cache:
            path = str(tmp_path_factory.mktemp(chat_format))
            tokenizer = train_tokenizer(corpus, path, vocab_size=VOCAB_SIZE, chat_format=chat_format)
            cache[chat_format] = Trained(chat_format, VOCAB_SIZE, path, tokenizer)
        return cache[chat_format]

    return get


@pytest.fixture(params=CHAT_FORMATS)
def trained(request: pytest.FixtureRequest, train: Callable[[str], Trained]) -> Trained:
    return train(request.param)


@pytest.fixture
def llama3(train: Callable[[str], Trained]) -> Trained:
    return train("llama3")


@pytest.fixture
def chatml(train: Callable[[str], Trained]) -> Trained:
    return train("chatml")
