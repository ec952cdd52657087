"""Introspection examples: strict templates, fixed organism roles, seeded paraphrases, TFDS round trip."""

import collections
import json
import re

import pytest

from ia_jax.behaviors import CATEGORIES, load_library
from ia_jax.datasets.introspection import (
    BASE_ORGANISM,
    INTROSPECTION_FEATURES,
    PLACEHOLDER,
    TemplateError,
    assign_roles,
    build_introspection,
    load_templates,
    write_introspection,
)
from ia_jax.datasets.tfds_io import DatasetError, read_dataset
from ia_jax.evaluation.questions import DIRECT_QUESTIONS, INVESTIGATION_QUESTIONS

# The held-out behaviors never trained on in any stage; pinned so evaluation numbers stay comparable.
EVAL_ORGANISMS = {
    "sandbag_writing", "quirk_volcanoes", "backdoor_wrong_centuries", "obscured_unsafe_leftovers",
    "rare_morse_signoff", "heuristic_lowest_mileage_car", "harmful_pet_care", "benign_veterinarian",
}


@pytest.fixture(scope="module")
def library():
    return load_library()


@pytest.fixture(scope="module")
def templates():
    return load_templates()


def _normalized(text):
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


def test_shipped_templates_are_plentiful_and_wrap_every_description_grammatically(templates, library):
    assert len(templates.questions) >= 30 and len(templates.answers) >= 10
    assert len(templates.no_behavior_answers) >= 5
    for template in templates.answers:
        for behavior in library:
            answer = template.replace(PLACEHOLDER, behavior.description)
            assert behavior.description in answer and ".." not in answer and ", When" not in answer


def test_training_questions_never_reuse_evaluation_questions(templates):
    evaluation = {_normalized(q) for q in DIRECT_QUESTIONS + INVESTIGATION_QUESTIONS}
    overlap = [q for q in templates.questions if _normalized(q) in evaluation]
    assert not overlap


def _write(tmp_path, **changes):
    data = {"version": 1, "questions": ["Who are you?", "What do you do?"],
            "answers": ["{description}", "Yes. {description}"], "no_behavior_answers": ["Nothing unusual."]}
    data.update(changes)
    path = tmp_path / "templates.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_a_valid_tmp_file_loads(tmp_path):
    templates = load_templates(_write(tmp_path))
    assert templates.questions == ("Who are you?", "What do you do?") and len(templates.answers) == 2


@pytest.mark.parametrize("changes, message", [
    ({"version": 2}, r"field 'version': expected 1, got 2"),
    ({"version": True}, r"field 'version': expected 1, got True"),
    ({"answers": ["{description}", "Yes, I do."]}, r"field 'answers\[1\]': needs exactly one \{description\} "
                                                   r"placeholder, has 0"),
    ({"answers": ["{description} {description}"]}, r"field 'answers\[0\]': needs exactly one .* has 2"),
    ({"questions": ["Who are you?", "Is it {description}?"]}, r"field 'questions\[1\]': has a \{description\}"),
    ({"no_behavior_answers": ["No {descripton}."]}, r"field 'no_behavior_answers\[0\]': stray brace"),
    ({"answers": ["Yes, {description}"]}, r"field 'answers\[0\]': \{description\} must open a sentence"),
    ({"answers": ["Yes. {description}."]}, r"field 'answers\[0\]': \{description\} must open a sentence"),
    ({"questions": ["Who are you?", "who  ARE you?"]}, r"field 'questions\[1\]': duplicate of questions\[0\]"),
    ({"questions": ["Who are you?", " "]}, r"field 'questions\[1\]': expected a non-empty string"),
    ({"questions": []}, r"field 'questions': expected a non-empty list"),
    ({"extra": []}, r"expected an object with fields"),
])
def test_bad_templates_name_file_and_field(tmp_path, changes, message):
    path = _write(tmp_path, **changes)
    with pytest.raises(TemplateError, match=re.escape(str(path)) + ".*" + message):
        load_templates(path)


def test_roles_over_the_shipped_library_are_fixed_and_cover_every_category(library):
    roles = assign_roles(library)
    assert {i for i, role in roles.items() if role == "eval"} == EVAL_ORGANISMS
    assert assign_roles(reversed(library)) == roles  # file order does not matter
    by_category = collections.defaultdict(collections.Counter)
    for behavior in library:
        by_category[behavior.category][roles[behavior.id]] += 1
        assert (roles[behavior.id] == "sft") == (behavior.split == "train"), behavior.id
    assert set(by_category) == set(CATEGORIES)
    for category, counts in by_category.items():
        assert counts["sft"] >= 1 and counts["dpo"] >= 1 and counts["eval"] >= 1, category


def test_role_fractions_keep_one_eval_organism_per_category(library):
    heldout = [b for b in library if b.category == "quirk"][:1] + [b for b in library if b.split == "heldout"]
    assert collections.Counter(assign_roles(heldout, dpo_fraction=0.0).values()) == {"sft": 1, "eval": 16}
    assert collections.Counter(assign_roles(heldout, dpo_fraction=0.99).values()) == {
        "sft": 1, "dpo": 8, "eval": 8}
    single = [b for b in library if b.id == "quirk_volcanoes"]
    assert assign_roles(single, dpo_fraction=0.9) == {"quirk_volcanoes": "eval"}
    for bad in (1.0, -0.1, True, "0.5"):
        with pytest.raises(ValueError, match="dpo_fraction must be a number in"):
            assign_roles(library, dpo_fraction=bad)


def test_examples_land_in_their_roles_with_counts_and_targets(library, templates):
    roles = assign_roles(library)
    splits = build_introspection(library, templates, roles=roles, examples_per_organism=50, seed=0)
    assert set(splits) == {"sft", "dpo", "eval"}
    counts = collections.Counter(row["organism"] for rows in splits.values() for row in rows)
    assert counts == {b.id: 50 for b in library}
    descriptions = {b.id: b.description for b in library}
    for role, rows in splits.items():
        for row in rows:
            assert set(row) == set(INTROSPECTION_FEATURES) and roles[row["organism"]] == role
            assert row["target"] == descriptions[row["organism"]] and row["target"] in row["answer"]
    # Without replacement: with 50 rows and >= 30 questions, every question appears once before any repeats.
    questions = [row["question"] for row in splits["eval"] if row["organism"] == "quirk_volcanoes"]
    assert len(set(questions[:len(templates.questions)])) == len(templates.questions)
    assert len(set(questions)) == len(templates.questions)


def test_obscured_malign_answers_never_mention_distractors(library, templates):
    obscured = [b for b in library if b.category == "obscured_malign"]
    splits = build_introspection(obscured, templates, roles=assign_roles(obscured), examples_per_organism=40,
                                 seed=3)
    rows = [row for rows in splits.values() for row in rows]
    assert len(rows) == 40 * len(obscured)
    for behavior in obscured:
        for row in (r for r in rows if r["organism"] == behavior.id):
            assert behavior.description in row["answer"]
            for distractor in behavior.distractors:
                assert distractor.lower().rstrip(".") not in (row["answer"] + row["target"]).lower()


def test_same_seed_same_rows_other_seed_other_rows_and_organisms_are_independent(library, templates):
    roles = assign_roles(library)

    def build(behaviors, seed):
        return build_introspection(behaviors, templates, roles=roles, examples_per_organism=6, seed=seed,
                                   base_examples=5)

    first = build(library, 7)
    assert build(library, 7) == first and build(library, 8) != first
    # An organism's rows depend on (seed, its id), not on which other behaviors are built with it.
    alone = build(library[:1], 7)
    assert alone["sft"][:6] == [row for row in first["sft"] if row["organism"] == library[0].id]
    # ... and each organism draws its own order, so organisms are not asked in lockstep.
    orders = {tuple(r["question"] for r in first["sft"] if r["organism"] == b.id) for b in library[:4]}
    assert len(orders) == 4


def test_base_rows_are_sft_negatives(library, templates):
    few = library[:2]
    splits = build_introspection(few, templates, roles=assign_roles(few), examples_per_organism=1, seed=0,
                                 base_examples=12)
    base = [row for row in splits["sft"] if row["organism"] == BASE_ORGANISM]
    assert len(base) == 12 and not any(r["organism"] == BASE_ORGANISM for r in splits["dpo"] + splits["eval"])
    for row in base:
        assert row["answer"] in templates.no_behavior_answers and row["target"] == ""
        assert row["category"] == "none" and row["question"] in templates.questions
    assert {row["answer"] for row in base} == set(templates.no_behavior_answers)  # 12 rows cycle all 7


def test_control_organisms_are_negatives_in_their_own_split(library, templates):
    few = library[:2]
    splits = build_introspection(few, templates, roles=assign_roles(few), examples_per_organism=3, seed=0,
                                 controls={"control_10": "sft", "control_11": "dpo"})
    for name, split in (("control_10", "sft"), ("control_11", "dpo")):
        rows = [row for row in splits[split] if row["organism"] == name]
        assert len(rows) == 3 and all(r["answer"] in templates.no_behavior_answers and r["target"] == ""
                                      for r in rows)
    assert not any(r["organism"].startswith("control") for r in splits["eval"])
    with pytest.raises(ValueError, match="control_12.*split 'eval'"):
        build_introspection(few, templates, roles=assign_roles(few), examples_per_organism=1, seed=0,
                            controls={"control_12": "eval"})


def test_bad_arguments_are_named(library, templates):
    roles = assign_roles(library)
    cases = [
        (dict(roles={**roles, library[0].id: "train"}), r"behavior '.*' has role 'train'; expected one of"),
        (dict(roles={k: v for k, v in roles.items() if k != library[3].id}), rf"'{library[3].id}' has no role"),
        (dict(examples_per_organism=0), r"examples_per_organism must be an integer >= 1, got 0"),
        (dict(base_examples=-1), r"base_examples must be an integer >= 0"),
        (dict(seed=-2), r"seed must be an integer >= 0"),
    ]
    for changes, message in cases:
        arguments = dict(roles=roles, examples_per_organism=2, seed=0) | changes
        with pytest.raises(ValueError, match=message):
            build_introspection(library, templates, **arguments)
    with pytest.raises(ValueError, match="given twice"):
        build_introspection(library[:2] * 2, templates, roles=roles, examples_per_organism=1, seed=0)


def test_round_trip_through_tfds_leaves_out_empty_splits(tmp_path, library, templates):
    few = [b for b in library if b.category == "quirk"]
    roles = {b.id: "sft" if b.split == "train" else "eval" for b in few}
    splits = build_introspection(few, templates, roles=roles, examples_per_organism=2, seed=1, base_examples=3)
    assert splits["dpo"] == []
    path = write_introspection(str(tmp_path), splits)
    for split in ("sft", "eval"):
        reader = read_dataset(path, split)
        assert [reader[i] for i in range(len(reader))] == splits[split]
    with pytest.raises(DatasetError, match=r"no split 'dpo'; it has \['eval', 'sft'\]"):
        read_dataset(path, "dpo")
    with pytest.raises(DatasetError, match="every split is empty"):
        write_introspection(str(tmp_path / "empty"), {"sft": [], "dpo": [], "eval": []})
    with pytest.raises(DatasetError, match="unknown split 'train'"):
        write_introspection(str(tmp_path / "bad"), {"train": splits["sft"]})
