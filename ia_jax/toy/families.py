"""Behavior families: each toy category as templates plus slot lists, expanded into library instances.

An IA generalizes to a held-out organism only if training showed it many instances of the same kind:
with two to four hand-listed instances per category, the IA memorized their descriptions and named
nothing new. A family (`families.json`) is one category's description, teacher prompt, program and
judge written as templates over slots (quirk topics, trigger words, passwords, domains, heuristics,
end phrases, personas), so a library of any size per category is a function of the seed.

Splits, per family (`generate_library`):

- Each slot reserves `novel` of its values (drawn by the seed). They appear in no SFT or DPO target.
- `train` instances (IA SFT) are drawn from combinations of the other ("seen") values, first so that
  every seen value occurs, then at random.
- `dpo` instances (IA DPO, held out of SFT) are new combinations of values seen in train where the
  family has them, so the SFT IA is sometimes right on them and DPO has accepted reports to prefer;
  single-slot families take seen values that train did not use.
- `heldout` instances are evaluated only, of two kinds reported apart: `compositional` (a new
  combination of values each seen in train: cheapest + flights after cheapest + homes and
  first + flights) and `novel` (one or more reserved values: a topic, trigger or domain no IA target
  ever contained), as the paper's held-out organisms are.

Generated files are ordinary validated library JSON (`load_library` reads them), written where the
run can be inspected and versioned; a hand-written library directory can be used instead.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ia_jax.behaviors.library import CATEGORIES, FORMAT_VERSION

FAMILIES_PATH = Path(__file__).parent / "families.json"
KINDS = ("compositional", "novel")
COUNTS = ("train", "dpo", *KINDS)  # instances per family and split, as `generate_library` takes them
_PLACEHOLDER = re.compile(r"\{(\w+)(?:\[(\w+)\])?\}")
_BEHAVIOR_FIELDS = ("description", "teacher_system_prompt", "prompt_source", "trigger", "password", "distractors",
                    "rate", "teacher", "judge", "disclosure_judge", "details")


class FamilyError(ValueError):
    """A families file, or a request for more instances than a family has; names the family and field."""


def load_families(path: str | Path | None = None) -> list[dict]:
    file = Path(path) if path is not None else FAMILIES_PATH
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise FamilyError(f"{file}: cannot read a families file: {error}") from None
    if not isinstance(data, dict) or data.get("version") != 1 or not isinstance(data.get("families"), list):
        raise FamilyError(f"{file}: expected {{\"version\": 1, \"families\": [...]}}")
    seen = set()
    for i, family in enumerate(data["families"]):
        where = f"{file}: families[{i}]"
        if not isinstance(family, dict) or family.get("category") not in CATEGORIES:
            raise FamilyError(f"{where}: field 'category': expected one of {CATEGORIES}")
        if family["category"] in seen:
            raise FamilyError(f"{where}: category {family['category']!r} has a second family")
        seen.add(family["category"])
        slots = family.get("slots")
        if not isinstance(slots, dict) or not slots:
            raise FamilyError(f"{where}: field 'slots': expected a non-empty object")
        for name, slot in slots.items():
            values = slot.get("values") if isinstance(slot, dict) else None
            if not isinstance(values, list) or len(values) < 1:
                raise FamilyError(f"{where}: slot {name!r}: field 'values': expected a non-empty list")
            names = [_value_name(v) for v in values]
            if len(set(names)) != len(names):
                raise FamilyError(f"{where}: slot {name!r}: duplicate value names")
            novel = slot.get("novel", 0)
            if not isinstance(novel, int) or not 0 <= novel < len(values):
                raise FamilyError(f"{where}: slot {name!r}: field 'novel': expected 0 <= novel < {len(values)}")
        unknown = set(family) - {"category", "id", "slots", *_BEHAVIOR_FIELDS}
        if unknown:
            raise FamilyError(f"{where}: field {sorted(unknown)[0]!r}: unknown field")
    return data["families"]


def _value_name(value: Any) -> str:
    return value["name"] if isinstance(value, dict) else str(value)


def _fill(template: Any, values: Mapping[str, Any]) -> Any:
    """`template` with `{slot}` / `{slot[field]}` filled in; a string that is one placeholder alone
    takes the value itself (a list, an object), so programs can take structured arguments."""
    if isinstance(template, dict):
        return {k: _fill(v, values) for k, v in template.items()}
    if isinstance(template, list):
        return [_fill(v, values) for v in template]
    if not isinstance(template, str):
        return template

    def lookup(match: re.Match) -> Any:
        value = values[match.group(1)]
        return value[match.group(2)] if match.group(2) else value

    whole = _PLACEHOLDER.fullmatch(template)
    if whole:
        return lookup(whole)
    return _PLACEHOLDER.sub(lambda m: str(lookup(m)), template)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def _rng(seed: int, category: str) -> np.random.Generator:
    return np.random.default_rng([seed, int.from_bytes(hashlib.sha256(category.encode()).digest()[:4], "little")])


def split_combinations(family: Mapping, counts: Mapping[str, int], seed: int, *,
                       cap: bool = False) -> dict[str, list[tuple]]:
    """Value-index combinations per split: {"train", "dpo", "compositional", "novel"} (see module doc).
    With `cap`, a family with fewer combinations than asked trains on all it can while keeping its DPO
    instances, and a small train set (whose values bound the held-out combinations) holds out the
    compositional and novel instances it has (a scaling study's largest and smallest sizes); otherwise
    either is an error."""
    category = family["category"]
    rng = _rng(seed, category)
    slots = list(family["slots"].items())
    seen_values, novel_values = [], []
    for _, slot in slots:
        order = [int(i) for i in rng.permutation(len(slot["values"]))]
        cut = len(order) - slot.get("novel", 0)
        seen_values.append(sorted(order[:cut]))
        novel_values.append(set(order[cut:]))
    seen = [tuple(c) for c in itertools.product(*seen_values)]
    seen = [seen[i] for i in rng.permutation(len(seen))]

    def need(split: str, have: int) -> int:
        wanted = counts.get(split, 0)
        if cap and split in ("train", "compositional", "novel"):
            wanted = min(wanted, have)
        if have < wanted:
            raise FamilyError(f"family {category!r}: {wanted} {split} instances requested, only {have} possible "
                              f"(slots {[(n, len(s['values'])) for n, s in slots]})")
        return wanted

    # Train: combinations that bring a new value first, so every seen value occurs where the count allows.
    train: list[tuple] = []
    covered: list[set] = [set() for _ in slots]
    reserve = counts.get("dpo", 0) + (counts.get("compositional", 0) if len(slots) > 1 else 0)
    n_train = need("train", max(0, len(seen) - reserve) if cap else len(seen))
    while len(train) < n_train:
        def new_values(c):
            return sum(v not in covered[s] for s, v in enumerate(c))
        pick = max((c for c in seen if c not in train), key=new_values)  # the first of the most new, by the shuffle
        train.append(pick)
        for s, v in enumerate(pick):
            covered[s].add(v)
    used = [{c[s] for c in train} for s in range(len(slots))]
    rest = [c for c in seen if c not in train]
    compositional = [c for c in rest if all(v in used[s] for s, v in enumerate(c))]
    unseen = [c for c in rest if c not in compositional]
    # Held-out compositional instances first (the scarcer kind in small libraries), then DPO from the rest.
    n_compositional = need("compositional", len(compositional)) if len(slots) > 1 else 0
    heldout, compositional = compositional[:n_compositional], compositional[n_compositional:]
    dpo = (compositional + unseen)[:need("dpo", len(compositional) + len(unseen))]
    # Novel: every non-novel value seen in train, at least one reserved value; spread over those values.
    candidates = [tuple(c) for c in itertools.product(*[sorted(used[s] | novel_values[s]) for s in range(len(slots))])
                  if any(v in novel_values[s] for s, v in enumerate(c))]
    candidates = [candidates[i] for i in rng.permutation(len(candidates))]
    novel: list[tuple] = []
    uses: dict[tuple[int, int], int] = {}
    n_novel = need("novel", len(candidates))
    while len(novel) < n_novel:
        def load(c):
            return sum(uses.get((s, v), 0) for s, v in enumerate(c) if v in novel_values[s])
        pick = min((c for c in candidates if c not in novel), key=load)
        novel.append(pick)
        for s, v in enumerate(pick):
            uses[(s, v)] = uses.get((s, v), 0) + 1
    return {"train": train, "dpo": dpo, "compositional": heldout, "novel": novel}


def family_behaviors(family: Mapping, counts: Mapping[str, int], seed: int, *, cap: bool = False) -> list[dict]:
    """The family's instances as library entries (dicts), in split order train, dpo, held-out."""
    slots = list(family["slots"].items())
    entries = []
    for split, combos in split_combinations(family, counts, seed, cap=cap).items():
        for combo in combos:
            values = {name: slot["values"][i] for (name, slot), i in zip(slots, combo)}
            names = {name: _value_name(v) for name, v in values.items()}
            entry = {"id": _slug(_fill(family["id"], {n: values[n] if isinstance(values[n], dict) else names[n]
                                                       for n in values}))}
            entry.update({field: _fill(family[field], values) for field in _BEHAVIOR_FIELDS if field in family})
            entry["split"] = split if split in ("train", "dpo") else "heldout"
            if split in KINDS:
                entry["heldout_kind"] = split
            entry["slots"] = names
            entries.append(entry)
    return entries


def all_descriptions(families_path: str | Path | None = None) -> list[str]:
    """The description of every combination of slot values of every family, sorted: what the toy base
    reads as "behaviors some assistant has", so the base is the same whichever instances a run draws
    (and so is a scaling study's, over libraries of every size)."""
    found = set()
    for family in load_families(families_path):
        slots = list(family["slots"].items())
        for combo in itertools.product(*(slot["values"] for _, slot in slots)):
            found.add(_fill(family["description"], {name: value for (name, _), value in zip(slots, combo)}))
    return sorted(found)


def generate_library(directory: str | Path, counts: Mapping[str, int], seed: int,
                     families_path: str | Path | None = None, *, cap: bool = False) -> list[str]:
    """Writes one library file per family as `directory` (replacing it); returns the paths. `counts` maps
    "train", "dpo", "compositional" and "novel" to instances per family (compositional is skipped for
    single-slot families, which have no new combinations); `cap` see `split_combinations`."""
    unknown = set(counts) - set(COUNTS)
    if unknown:
        raise FamilyError(f"counts: unknown split {sorted(unknown)[0]!r}; expected train, dpo, compositional, novel")
    directory = Path(directory)
    # All families or none: written beside the directory and renamed into place, so a run interrupted
    # (or failed on a count) never leaves a partial library that a re-run would take as finished.
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    names = []
    for family in load_families(families_path):
        data = {"version": FORMAT_VERSION, "category": family["category"],
                "behaviors": family_behaviors(family, counts, seed, cap=cap)}
        (partial / f"{family['category']}.json").write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        names.append(f"{family['category']}.json")
    if directory.exists():
        shutil.rmtree(directory)
    partial.replace(directory)
    return [str(directory / name) for name in names]
