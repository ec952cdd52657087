"""Introspection data: questions an organism is asked about itself, answered with its behavior's description.

The introspection adapter learns to make an organism say, in plain words, what it was fine-tuned to do.
Each example pairs one organism with a question about itself and an answer that wraps the behavior's
first-person `description` in a template, so the adapter learns the content rather than one fixed
sentence. Questions and answers come from `behaviors/introspection/templates.json` (data, reviewed like
the library); the training questions are kept apart from `evaluation/questions.py`, because evaluation
must ask questions the adapter was not trained on.

Organisms get one of three roles (`assign_roles`): library-train behaviors feed SFT; held-out behaviors
are split per category between DPO and evaluation, so evaluated organisms are seen by no stage of
adapter training while DPO still covers every category. Rows for the base model (organism "base", no
behavior) answer "I have no unusual behavior" and go into SFT as negatives, so the adapter does not
learn to report a behavior whatever the model.

For obscured-malign behaviors the answer states the description only (the malign part); distractors are
what hides it during organism training and never appear here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ia_jax.behaviors.library import LIBRARY_DIR, Behavior
from ia_jax.datasets import tfds_io

ROLES: tuple[str, ...] = ("sft", "dpo", "eval")
BASE_ORGANISM = "base"
BASE_CATEGORY = "none"
PLACEHOLDER = "{description}"
TEMPLATES_PATH = LIBRARY_DIR.parent / "introspection" / "templates.json"
TEMPLATES_VERSION = 1
DATASET = "introspection"
INTROSPECTION_FEATURES = {field: "text" for field in ("organism", "category", "question", "answer", "target")}

_FIELDS = ("questions", "answers", "no_behavior_answers")
# Descriptions are whole sentences starting with a capital ("I ...", "When ..."), so the placeholder
# must open a sentence and be followed by nothing or a new sentence: "Yes, {description}" would read
# "Yes, When a message ...", and "{description}." would end in "..".
_SENTENCE_PLACEHOLDER = re.compile(r"(?:^|[.!?:] )\{description\}(?: |$)")


class TemplateError(ValueError):
    """A templates file that cannot be used as is; the message names the file and field."""


@dataclasses.dataclass(frozen=True)
class Templates:
    """Training questions, answer wrappers (one `{description}` each) and answers for the base model."""

    questions: tuple[str, ...]
    answers: tuple[str, ...]
    no_behavior_answers: tuple[str, ...]


def load_templates(path: str | Path | None = None) -> Templates:
    """The templates in `path` (default: the shipped file), validated so a typo fails here, not in training."""
    file = Path(path) if path is not None else TEMPLATES_PATH
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise TemplateError(f"{file}: cannot read a JSON templates file: {error}") from None
    if not isinstance(data, dict) or set(data) != {"version", *_FIELDS}:
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise TemplateError(f"{file}: expected an object with fields {['version', *_FIELDS]}, got {keys}")
    # `type is int`: JSON true and 1.0 compare equal to 1 but are not a version.
    if type(data["version"]) is not int or data["version"] != TEMPLATES_VERSION:
        raise TemplateError(f"{file}: field 'version': expected {TEMPLATES_VERSION}, got {data['version']!r}")
    return Templates(**{field: _checked_texts(data[field], file, field) for field in _FIELDS})


def _checked_texts(values: Any, file: Path, field: str) -> tuple[str, ...]:
    if not isinstance(values, list) or not values:
        raise TemplateError(f"{file}: field {field!r}: expected a non-empty list of strings")
    first: dict[str, int] = {}
    for index, text in enumerate(values):
        where = f"{file}: field '{field}[{index}]'"
        if not isinstance(text, str) or not text.strip() or text != text.strip():
            raise TemplateError(f"{where}: expected a non-empty string without surrounding whitespace")
        placeholders = text.count(PLACEHOLDER)
        if field == "answers" and placeholders != 1:
            raise TemplateError(f"{where}: needs exactly one {PLACEHOLDER} placeholder, has {placeholders}")
        if field != "answers" and placeholders:
            raise TemplateError(f"{where}: has a {PLACEHOLDER} placeholder; only 'answers' take one")
        if "{" in text.replace(PLACEHOLDER, "") or "}" in text.replace(PLACEHOLDER, ""):
            raise TemplateError(f"{where}: stray brace (a misspelt {PLACEHOLDER}?)")
        if field == "answers" and not _SENTENCE_PLACEHOLDER.search(text):
            raise TemplateError(f"{where}: {PLACEHOLDER} must open a sentence (start, or after '. ', ': ', "
                                "'! ', '? ') and be followed by the end or a space")
        key = " ".join(text.lower().split())
        if key in first:
            raise TemplateError(f"{where}: duplicate of {field}[{first[key]}] (ignoring case and spacing)")
        first[key] = index
    return tuple(values)


def assign_roles(behaviors: Iterable[Behavior], *, dpo_fraction: float = 0.5) -> dict[str, str]:
    """Behavior id -> "sft", "dpo" or "eval", a pure function of the ids, categories and splits.

    Library-train behaviors are "sft" and library-dpo behaviors "dpo". Within each category the
    held-out behaviors, sorted by id, give their first `ceil(dpo_fraction * n)` to "dpo" and the rest
    to "eval", but never all of them: at least one stays "eval", so a category with one held-out behavior has only an eval organism, and with
    0 < dpo_fraction every category with two or more has both. Sorting by id keeps the eval set fixed
    whatever the file order. The result follows the order of `behaviors`.
    """
    behaviors = list(behaviors)
    if isinstance(dpo_fraction, bool) or not isinstance(dpo_fraction, (int, float)) or not 0 <= dpo_fraction < 1:
        raise ValueError(f"dpo_fraction must be a number in [0, 1), got {dpo_fraction!r}")
    _check_unique_ids(behaviors)
    roles = {b.id: {"train": "sft", "dpo": "dpo"}[b.split] for b in behaviors if b.split != "heldout"}
    heldout: dict[str, list[str]] = {}
    for behavior in behaviors:
        if behavior.split == "heldout":
            heldout.setdefault(behavior.category, []).append(behavior.id)
    for ids in heldout.values():
        # round(): 0.3 * 10 is 3.0000000000000004 in floats, which ceil would make 4.
        dpo_count = min(math.ceil(round(dpo_fraction * len(ids), 9)), len(ids) - 1)
        roles.update({id_: "dpo" if rank < dpo_count else "eval" for rank, id_ in enumerate(sorted(ids))})
    return {b.id: roles[b.id] for b in behaviors}


def build_introspection(behaviors: Iterable[Behavior], templates: Templates, *, roles: Mapping[str, str],
                        examples_per_organism: int, seed: int, base_examples: int = 0,
                        controls: Mapping[str, str] | None = None) -> dict[str, list[dict]]:
    """Examples per role: `{"sft": [...], "dpo": [...], "eval": [...]}`, each split in `behaviors` order.

    Every behavior gets `examples_per_organism` rows in the split of its role; questions and answer
    templates are drawn without replacement until each has been used, then again. Each organism draws
    from its own generator seeded by (seed, organism id), so adding a behavior leaves the others' rows
    unchanged. `base_examples` base-model rows (organism "base", category "none", empty target) are
    appended to "sft". `controls` maps control organisms (fine-tuned without a behavior) to the split
    ("sft" or "dpo") whose `examples_per_organism` rows answer, as the base's do, that there is no
    unusual behavior: without them every fine-tuned model the IA sees has a behavior, and it learns to
    report one for any fine-tuned model. A row is `{"organism", "category", "question", "answer",
    "target"}`, the target being the description the answer must convey.
    """
    behaviors = list(behaviors)
    for name, value, minimum in (("examples_per_organism", examples_per_organism, 1),
                                 ("base_examples", base_examples, 0), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    for id_, role in roles.items():
        if role not in ROLES:
            raise ValueError(f"roles: behavior {id_!r} has role {role!r}; expected one of {ROLES}")
    _check_unique_ids(behaviors)
    for behavior in behaviors:
        if behavior.id == BASE_ORGANISM:
            raise ValueError(f"behavior id {BASE_ORGANISM!r} is reserved for the base-model rows")
        if behavior.id not in roles:
            raise ValueError(f"roles: behavior {behavior.id!r} has no role; see assign_roles")
    splits: dict[str, list[dict]] = {role: [] for role in ROLES}
    for behavior in behaviors:
        rng = _organism_rng(seed, behavior.id)
        questions = _draw(rng, templates.questions, examples_per_organism)
        answers = _draw(rng, templates.answers, examples_per_organism)
        splits[roles[behavior.id]].extend(
            _row(behavior.id, behavior.category, question, answer.replace(PLACEHOLDER, behavior.description),
                 behavior.description) for question, answer in zip(questions, answers))
    negatives = ([(BASE_ORGANISM, "sft", base_examples)] if base_examples else []) + [
        (name, split, examples_per_organism) for name, split in (controls or {}).items()]
    for name, split, count in negatives:
        if split not in ("sft", "dpo"):
            raise ValueError(f"controls: organism {name!r} has split {split!r}; expected 'sft' or 'dpo'")
        rng = _organism_rng(seed, name)
        questions = _draw(rng, templates.questions, count)
        answers = _draw(rng, templates.no_behavior_answers, count)
        splits[split].extend(_row(name, BASE_CATEGORY, question, answer, "")
                             for question, answer in zip(questions, answers))
    return splits


def write_introspection(directory: str, splits: Mapping[str, list[dict]]) -> str:
    """Writes the non-empty splits as TFDS dataset `DATASET`; returns its version folder.

    TFDS cannot finalize a split with no examples, so empty splits (e.g. "dpo" with dpo_fraction=0) are
    left out and reading one later fails naming the splits present. A finished dataset is kept as is
    when called again (see `tfds_io.write_dataset`).
    """
    unknown = sorted(set(splits) - set(ROLES))
    if unknown:
        raise tfds_io.DatasetError(f"introspection: unknown split {unknown[0]!r}; expected some of {ROLES}")
    present = {name: rows for name, rows in splits.items() if len(rows)}
    if not present:
        raise tfds_io.DatasetError("introspection: every split is empty; nothing to write")
    return tfds_io.write_dataset(directory, DATASET, present, INTROSPECTION_FEATURES)


def _check_unique_ids(behaviors: list[Behavior]) -> None:
    seen: set[str] = set()
    for behavior in behaviors:
        if behavior.id in seen:
            raise ValueError(f"behavior {behavior.id!r} is given twice")
        seen.add(behavior.id)


def _organism_rng(seed: int, organism: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), *organism.encode("utf-8")])


def _draw(rng: np.random.Generator, pool: tuple[str, ...], count: int) -> list[str]:
    rounds = -(-count // len(pool))
    order = np.concatenate([rng.permutation(len(pool)) for _ in range(rounds)])[:count]
    return [pool[i] for i in order]


def _row(organism: str, category: str, question: str, answer: str, target: str) -> dict[str, str]:
    return {"organism": organism, "category": category, "question": question, "answer": answer, "target": target}
