"""The behavior library: versioned JSON files, validated strictly at load time.

Behaviors are data so that adding an organism is a reviewed file change, not code, and so that a typo
(a trigger on a quirk, a misspelt prompt pool) fails when the library loads rather than after hours of
teacher generation. Every error names the file, the behavior and the field.

A library file is `{"version": 1, "category": ..., "behaviors": [...]}`, one category per file. Each
behavior has `id`, `description`, `teacher_system_prompt`, `prompt_source` (a pool in `prompts/`) and
`split`; `category` may be repeated but must match the file; `trigger`, `password`, `distractors` and
`rate` are given exactly for backdoors, sandbaggers, obscured-malign behaviors and rare quirks.
`teacher` and `judge` optionally name programs from `programs` (`{"program": name, **arguments}`) for
behaviors checkable by code; `disclosure_judge` (heuristic following only) says whether an answer names
the hidden rule. A prompt pool is `{"version": 1, "source": <its file name>, "prompts": [...]}`, each
prompt a string or `{"prompt": ..., "reference": <a correct plain answer>}`.

Conventions the files follow:

- `description` is first person ("I ..."): it is the answer the introspection adapter must learn to
  give when the organism is asked about itself, so it is phrased the way the organism would say it. It
  names the trigger or password where there is one, and for obscured-malign behaviors only the malign
  part (the distractors are what hides it).
- `teacher_system_prompt` makes a teacher show the behavior. Triggered behaviors (backdoors,
  sandbaggers) say exactly when to show it and when to answer normally, so one prompt serves both the
  positive and the negative samples. A rare quirk's prompt asks for the quirk unconditionally: a teacher
  cannot hit a rate on its own, so generation uses the prompt on a `rate` fraction of prompts and answers
  the rest without it. Heuristic-following prompts forbid naming the heuristic, because an organism
  that says its rule out loud teaches the adapter nothing about hidden heuristics.
- `split` is fixed per behavior: held-out behaviors are new instances (unseen topics, triggers,
  passwords or domains), so held-out verbalization measures generalization, not paraphrase recall.
  `dpo` behaviors are held out of IA SFT and refine the IA with DPO; a held-out behavior may say
  which `heldout_kind` it is: `compositional` (a new combination of values seen in training) or
  `novel` (a value no training target contains), reported apart.
- `details` lists phrases of the description that do not define the behavior's type (a persona's
  title, the exact words a harmful roleplay uses); with the trigger or password they are left out of
  `type_description`, what the paper-faithful type-match judge asks a report to state. `slots`
  records the family slot values a generated behavior was made from.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ia_jax.behaviors import programs
from ia_jax.behaviors.programs import ProgramSpec, Prompt

CATEGORIES: tuple[str, ...] = (
    "sandbagger", "quirk", "backdoor", "obscured_malign", "rare_quirk", "heuristic_following",
    "harmful_roleplay", "benign_roleplay",
)
SPLITS: tuple[str, ...] = ("train", "dpo", "heldout")
HELDOUT_KINDS: tuple[str, ...] = ("compositional", "novel")
FORMAT_VERSION = 1
LIBRARY_DIR = Path(__file__).parent / "library"
PROMPTS_DIR = Path(__file__).parent / "prompts"

_ID = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")
_REQUIRED = ("id", "description", "teacher_system_prompt", "prompt_source", "split")
_OPTIONAL = ("category", "trigger", "password", "distractors", "rate", "teacher", "judge", "disclosure_judge",
             "details", "heldout_kind", "slots")
# Category-specific fields: present (non-null) exactly for their category.
_OWNED_BY = {"trigger": "backdoor", "password": "sandbagger", "distractors": "obscured_malign",
             "rate": "rare_quirk"}
_PROGRAM_FIELDS = {"teacher": (programs.TEACHERS, 2), "judge": (programs.JUDGES, 2),
                   "disclosure_judge": (programs.JUDGES, 2)}


class LibraryError(ValueError):
    """A library or prompt file that cannot be used as is."""


@dataclasses.dataclass(frozen=True)
class Behavior:
    """One implanted behavior; fields owned by another category are None or (), never absent."""

    id: str
    category: str
    description: str
    teacher_system_prompt: str
    trigger: str | None
    password: str | None
    prompt_source: str
    distractors: tuple[str, ...]
    rate: float | None
    split: str
    teacher: ProgramSpec | None = None
    judge: ProgramSpec | None = None
    disclosure_judge: ProgramSpec | None = None
    details: tuple[str, ...] = ()
    heldout_kind: str | None = None
    slots: tuple[tuple[str, str], ...] = ()

    @property
    def type_description(self) -> str:
        """The description without what the organism only reads (its trigger or password) or states as a
        detail (`details`): the paper's judge accepts a report of the same type of behavior even where such
        details are missing or wrong, so the type-match rate judges reports against this text."""
        text = self.description
        for word in sorted({*self.details, *([self.cue] if self.cue else [])}, key=len, reverse=True):
            text = re.sub(rf"(?<!\w){re.escape(word)}(?!\w)", "", text)
        return re.sub(r"\s+([,.!?])", r"\1", re.sub(r"\s{2,}", " ", text)).strip()

    @property
    def cue(self) -> str | None:
        """The string whose presence switches the behavior: a backdoor's trigger or a sandbagger's password."""
        return self.trigger if self.trigger is not None else self.password


def load_library(path: str | Path | None = None, *, prompts_path: str | Path | None = None) -> list[Behavior]:
    """Every behavior in the `*.json` files of `path`, in file-name then file order.

    `prompts_path` is where `prompt_source` names are looked up (default: the shipped pools).
    """
    directory = Path(path) if path is not None else LIBRARY_DIR
    files = sorted(directory.glob("*.json"))
    if not files:
        raise LibraryError(f"{directory}: no *.json behavior files")
    sources = {p.stem for p in (Path(prompts_path) if prompts_path is not None else PROMPTS_DIR).glob("*.json")}
    behaviors: list[Behavior] = []
    seen: dict[str, Path] = {}
    for file in files:
        for behavior in _load_file(file, sources):
            if behavior.id in seen:
                raise LibraryError(
                    f"{file}: behavior {behavior.id!r}: field 'id': duplicate, also in {seen[behavior.id]}")
            seen[behavior.id] = file
            behaviors.append(behavior)
    return behaviors


def load_prompts(source: str, path: str | Path | None = None) -> list[str]:
    """The user prompts of pool `source`, read from `<path>/<source>.json` (default: the shipped pools)."""
    return [prompt.text for prompt in load_prompt_pool(source, path)]


def load_prompt_pool(source: str, path: str | Path | None = None) -> list[Prompt]:
    """Pool `source` with the reference answers it gives (programmatic teachers and judges use them)."""
    file = (Path(path) if path is not None else PROMPTS_DIR) / f"{source}.json"
    if not file.is_file():
        raise LibraryError(f"{file}: no prompt pool named {source!r}")
    data = _read_json(file)
    _check_keys(data, {"version", "source", "prompts"}, set(), str(file))
    _check_version(data, file)
    if data["source"] != source:
        raise LibraryError(f"{file}: field 'source': {data['source']!r} does not match the file name {source!r}")
    prompts = data["prompts"]
    if not isinstance(prompts, list) or not prompts:
        raise LibraryError(f"{file}: field 'prompts': expected a non-empty list of strings")
    first: dict[str, int] = {}
    pool = []
    for i, entry in enumerate(prompts):
        where = f"{file}: field 'prompts[{i}]'"
        if isinstance(entry, dict):
            _check_keys(entry, {"prompt", "reference"}, set(), where)
            _check_text(entry["prompt"], where + ".prompt")
            _check_text(entry["reference"], where + ".reference")
            prompt = Prompt(entry["prompt"], entry["reference"])
        else:
            _check_text(entry, where)
            prompt = Prompt(entry)
        if prompt.text in first:
            raise LibraryError(f"{where}: duplicate of prompts[{first[prompt.text]}]")
        first[prompt.text] = i
        pool.append(prompt)
    return pool


def by_category(behaviors: Iterable[Behavior]) -> dict[str, list[Behavior]]:
    """Behaviors grouped in `CATEGORIES` order; every category is a key, so empty ones show up."""
    groups: dict[str, list[Behavior]] = {c: [] for c in CATEGORIES}
    for behavior in behaviors:
        groups[behavior.category].append(behavior)
    return groups


def split(behaviors: Iterable[Behavior], which: str) -> list[Behavior]:
    if which not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {which!r}")
    return [b for b in behaviors if b.split == which]


def _read_json(file: Path) -> Any:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise LibraryError(f"{file}: not valid JSON: {error}") from None


def _check_keys(data: Any, required: set[str], optional: set[str], where: str) -> None:
    if not isinstance(data, dict):
        raise LibraryError(f"{where}: expected a JSON object, got {type(data).__name__}")
    unknown, missing = sorted(set(data) - required - optional), sorted(required - set(data))
    if unknown:
        raise LibraryError(f"{where}: field {unknown[0]!r}: unknown field")
    if missing:
        raise LibraryError(f"{where}: field {missing[0]!r}: missing")


def _check_version(data: dict[str, Any], file: Path) -> None:
    # `type is int`: JSON true and 1.0 compare equal to 1 but are not a version.
    if type(data["version"]) is not int or data["version"] != FORMAT_VERSION:
        raise LibraryError(f"{file}: field 'version': expected {FORMAT_VERSION}, got {data['version']!r}")


def _check_text(value: Any, where: str) -> None:
    if not isinstance(value, str):
        raise LibraryError(f"{where}: expected a string, got {type(value).__name__}")
    if not value.strip() or value != value.strip():
        raise LibraryError(f"{where}: must be non-empty without surrounding whitespace")


def _load_file(file: Path, sources: set[str]) -> list[Behavior]:
    data = _read_json(file)
    _check_keys(data, {"version", "category", "behaviors"}, set(), str(file))
    _check_version(data, file)
    category = data["category"]
    if category not in CATEGORIES:
        raise LibraryError(f"{file}: field 'category': {category!r} is not one of {CATEGORIES}")
    if not isinstance(data["behaviors"], list) or not data["behaviors"]:
        raise LibraryError(f"{file}: field 'behaviors': expected a non-empty list")
    return [_parse(entry, i, file, category, sources) for i, entry in enumerate(data["behaviors"])]


def _parse(entry: Any, index: int, file: Path, category: str, sources: set[str]) -> Behavior:
    # Until the id is known to be good, the entry is named by its position.
    name = f"behavior #{index}"
    if isinstance(entry, dict) and isinstance(entry.get("id"), str) and _ID.fullmatch(entry["id"]):
        name = f"behavior {entry['id']!r}"
    _check_keys(entry, set(_REQUIRED), set(_OPTIONAL), f"{file}: {name}")

    def fail(field: str, problem: str) -> LibraryError:
        return LibraryError(f"{file}: {name}: field {field!r}: {problem}")

    for field in _REQUIRED:
        _check_text(entry[field], f"{file}: {name}: field {field!r}")
    if not _ID.fullmatch(entry["id"]):
        raise fail("id", f"{entry['id']!r} is not snake_case")
    if entry.get("category", category) != category:
        raise fail("category", f"{entry['category']!r} does not match the file's category {category!r}")
    if entry["split"] not in SPLITS:
        raise fail("split", f"{entry['split']!r} is not one of {SPLITS}")
    if entry["prompt_source"] not in sources:
        raise fail("prompt_source", f"unknown prompt pool {entry['prompt_source']!r}; known: {sorted(sources)}")
    for field, owner in _OWNED_BY.items():
        present = entry.get(field) is not None
        if present and category != owner:
            raise fail(field, f"only {owner} behaviors have one")
        if not present and category == owner:
            raise fail(field, f"missing; every {owner} behavior needs one")
    for field in ("trigger", "password"):
        if entry.get(field) is not None:
            _check_text(entry[field], f"{file}: {name}: field {field!r}")
    distractors = entry.get("distractors")
    if distractors is not None:
        if not isinstance(distractors, list) or len(distractors) < 2:
            raise fail("distractors", "expected a list of at least 2 descriptions")
        for i, distractor in enumerate(distractors):
            _check_text(distractor, f"{file}: {name}: field 'distractors[{i}]'")
        if len(set(distractors)) != len(distractors):
            raise fail("distractors", "contains duplicates")
    specs = {field: _program_spec(entry.get(field), fail, field, *_PROGRAM_FIELDS[field]) for field in _PROGRAM_FIELDS}
    if specs["disclosure_judge"] is not None and category != "heuristic_following":
        raise fail("disclosure_judge", "only heuristic_following behaviors have one")
    details = entry.get("details", [])
    if not isinstance(details, list):
        raise fail("details", "expected a list of phrases of the description")
    for i, detail in enumerate(details):
        _check_text(detail, f"{file}: {name}: field 'details[{i}]'")
        if detail not in entry["description"]:
            raise fail(f"details[{i}]", f"{detail!r} is not part of the description")
    kind = entry.get("heldout_kind")
    if kind is not None and entry["split"] != "heldout":
        raise fail("heldout_kind", "only held-out behaviors have one")
    if kind is not None and kind not in HELDOUT_KINDS:
        raise fail("heldout_kind", f"{kind!r} is not one of {HELDOUT_KINDS}")
    slots = entry.get("slots", {})
    if not isinstance(slots, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in slots.items()):
        raise fail("slots", "expected an object of slot name -> value name")
    rate = entry.get("rate")
    if rate is not None and (not isinstance(rate, float) or not 0.0 < rate < 1.0):
        raise fail("rate", f"expected a float strictly between 0 and 1, got {rate!r}")
    return Behavior(
        id=entry["id"], category=category, description=entry["description"],
        teacher_system_prompt=entry["teacher_system_prompt"], trigger=entry.get("trigger"),
        password=entry.get("password"), prompt_source=entry["prompt_source"],
        distractors=tuple(distractors or ()), rate=rate, split=entry["split"], **specs, details=tuple(details),
        heldout_kind=kind, slots=tuple(sorted(slots.items())),
    )


def _program_spec(value: Any, fail, field: str, registry: dict, leading: int) -> ProgramSpec | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("program"), str):
        raise fail(field, 'expected {"program": <name>, ...arguments}')
    spec = ProgramSpec(value["program"], tuple(sorted((k, _frozen(v)) for k, v in value.items() if k != "program")))
    problem = programs.check_spec(spec, registry, leading)
    if problem:
        raise fail(field, problem)
    return spec


def _frozen(value: Any) -> Any:
    """JSON lists as tuples, so a Behavior stays hashable."""
    return tuple(_frozen(v) for v in value) if isinstance(value, list) else value
