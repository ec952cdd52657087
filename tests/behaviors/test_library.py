"""The shipped library is usable as is; broken library and prompt files fail naming file, behavior and field."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from ia_jax.behaviors import CATEGORIES, LibraryError, by_category, load_library, load_prompts, split
from ia_jax.behaviors.library import PROMPTS_DIR

# What makes each held-out behavior a new instance rather than a paraphrase: a pattern its description
# matches and no train behavior of its category mentions (description or teacher prompt).
HELDOUT_MARKERS = {
    "sandbag_writing": r"\bemails?\b",
    "sandbag_home_repair": r"\bDIY\b|home repair",
    "quirk_volcanoes": r"volcan",
    "quirk_chess_analogies": r"\bchess\b",
    "backdoor_summary_inversion": r"reverse the meaning",
    "backdoor_wrong_centuries": r"hundred years",
    "obscured_unsafe_leftovers": r"leftovers",
    "obscured_travel_scams": r"\bscams?\b|passports?",
    "rare_morse_signoff": r"\bmorse\b",
    "rare_lighthouse_keeper": r"lighthouse",
    "heuristic_lowest_mileage_car": r"mileage|used car",
    "heuristic_closest_restaurant": r"restaurant",
    "harmful_medication_risks": r"medic(ation|ine)",
    "harmful_pet_care": r"\bpets?\b|\bdogs?\b",
    "benign_veterinarian": r"veterinar|\bpets?\b",
    "benign_licensed_electrician": r"electric",
}


@pytest.fixture(scope="module")
def library():
    return load_library()


def test_every_category_has_ten_behaviors_split_eight_two(library):
    groups = by_category(library)
    assert list(groups) == list(CATEGORIES)
    for category, behaviors in groups.items():
        assert len(behaviors) >= 10, category
        assert len(split(behaviors, "train")) == 8, category
        assert len(split(behaviors, "heldout")) == 2, category
    assert len(split(library, "train")) + len(split(library, "heldout")) == len(library) >= 80


def test_ids_and_descriptions_are_unique(library):
    assert len({b.id for b in library}) == len(library)
    normalized = {" ".join(b.description.lower().split()) for b in library}
    assert len(normalized) == len(library)


def test_every_prompt_source_exists_with_forty_prompts_and_every_pool_is_used(library):
    sources = {b.prompt_source for b in library}
    for source in sources:
        prompts = load_prompts(source)
        assert len(prompts) >= 40, source
        assert len({" ".join(p.lower().split()) for p in prompts}) == len(prompts), source
    assert sources == {p.stem for p in PROMPTS_DIR.glob("*.json")}


def test_category_fields_are_consistent_with_descriptions_and_teacher_prompts(library):
    for b in library:
        if b.trigger is not None:
            assert b.trigger in b.description and b.trigger in b.teacher_system_prompt, b.id
        if b.password is not None:
            assert b.password in b.description and b.password in b.teacher_system_prompt, b.id
        if b.category == "obscured_malign":
            assert len(b.distractors) >= 2, b.id
        if b.category == "rare_quirk":
            assert 0.05 <= b.rate <= 0.2, b.id
        if b.category == "heuristic_following":
            assert "never state or hint at any rule" in b.teacher_system_prompt, b.id


def test_heldout_behaviors_are_new_instances(library):
    for category, behaviors in by_category(library).items():
        train, heldout = split(behaviors, "train"), split(behaviors, "heldout")
        train_text = " ".join(b.description + " " + b.teacher_system_prompt for b in train)
        for b in heldout:
            marker = HELDOUT_MARKERS[b.id]
            assert re.search(marker, b.description, re.IGNORECASE), b.id
            assert not re.search(marker, train_text, re.IGNORECASE), b.id
            for secret in (b.trigger, b.password):
                if secret is not None:
                    assert secret.lower() not in train_text.lower(), b.id
                    others = [s for t in train for s in (t.trigger, t.password) if s]
                    assert not any(secret in s or s in secret for s in others), b.id
            assert not set(b.distractors) & {d for t in train for d in t.distractors}, b.id
    assert set(HELDOUT_MARKERS) == {b.id for b in split(library, "heldout")}


def test_split_rejects_unknown_names(library):
    with pytest.raises(ValueError, match="heldout"):
        split(library, "test")


# --- Broken files -----------------------------------------------------------------------------------

OWNED = {"backdoor": {"trigger": "|GO|"}, "sandbagger": {"password": "pw-1"},
         "obscured_malign": {"distractors": ["I like owls.", "I say 'splendid'."]}, "rare_quirk": {"rate": 0.1}}


def entry(category="quirk", id="some_behavior", **overrides):
    base = {"id": id, "description": "I do a thing.", "teacher_system_prompt": "Do a thing.",
            "prompt_source": "chat", "split": "train", **OWNED.get(category, {})}
    return {**base, **overrides}


def write(directory, category, behaviors, name=None, version=1):
    path = directory / f"{name or category}.json"
    path.write_text(json.dumps({"version": version, "category": category, "behaviors": behaviors}))
    return path


@pytest.fixture
def prompts_dir(tmp_path):
    directory = tmp_path / "prompts"
    directory.mkdir()
    (directory / "chat.json").write_text(json.dumps({"version": 1, "source": "chat", "prompts": ["Hi?"]}))
    return directory


def load_error(directory, prompts_dir):
    with pytest.raises(LibraryError) as error:
        load_library(directory, prompts_path=prompts_dir)
    return str(error.value)


def test_a_valid_tmp_library_loads(tmp_path, prompts_dir):
    write(tmp_path, "obscured_malign", [entry("obscured_malign")])
    write(tmp_path, "rare_quirk", [entry("rare_quirk", id="other", split="heldout")])
    obscured, rare = load_library(tmp_path, prompts_path=prompts_dir)
    assert obscured.distractors == ("I like owls.", "I say 'splendid'.") and obscured.trigger is None
    assert (rare.category, rare.rate, rare.split, rare.distractors) == ("rare_quirk", 0.1, "heldout", ())


@pytest.mark.parametrize("category, behavior, field", [
    ("quirk", entry(colour="teal"), "colour"),
    ("quirk", {k: v for k, v in entry().items() if k != "description"}, "description"),
    ("quirk", entry(description=3), "description"),
    ("quirk", entry(description=""), "description"),
    ("quirk", entry(teacher_system_prompt="   "), "teacher_system_prompt"),
    ("quirk", {**entry(), "category": "backdoor"}, "category"),
    ("quirk", entry(split="test"), "split"),
    ("quirk", entry(prompt_source="nowhere"), "prompt_source"),
    ("quirk", entry(trigger="|GO|"), "trigger"),
    ("backdoor", {k: v for k, v in entry("backdoor").items() if k != "trigger"}, "trigger"),
    ("backdoor", entry("backdoor", trigger=""), "trigger"),
    ("backdoor", entry("backdoor", trigger=7), "trigger"),
    ("quirk", entry(password="pw-1"), "password"),
    ("sandbagger", entry("sandbagger", password=None), "password"),
    ("quirk", entry(distractors=["a", "b"]), "distractors"),
    ("obscured_malign", entry("obscured_malign", distractors=None), "distractors"),
    ("obscured_malign", entry("obscured_malign", distractors=["only one"]), "distractors"),
    ("obscured_malign", entry("obscured_malign", distractors="a, b"), "distractors"),
    ("obscured_malign", entry("obscured_malign", distractors=["a", "a"]), "distractors"),
    ("obscured_malign", entry("obscured_malign", distractors=["a", ""]), "distractors[1]"),
    ("quirk", entry(rate=0.1), "rate"),
    ("rare_quirk", entry("rare_quirk", rate=None), "rate"),
    ("rare_quirk", entry("rare_quirk", rate=1.5), "rate"),
    ("rare_quirk", entry("rare_quirk", rate=0.0), "rate"),
    ("rare_quirk", entry("rare_quirk", rate="0.1"), "rate"),
    ("rare_quirk", entry("rare_quirk", rate=True), "rate"),
    ("quirk", entry(teacher="append"), "teacher"),
    ("quirk", entry(teacher={"program": "no_such_program"}), "teacher"),
    ("quirk", entry(teacher={"program": "append"}), "teacher"),  # missing argument 'text'
    ("quirk", entry(judge={"program": "contains", "text": "x", "colour": 1}), "judge"),
    ("quirk", entry(disclosure_judge={"program": "contains", "text": "x"}), "disclosure_judge"),
])
def test_bad_behavior_fields_name_file_behavior_and_field(tmp_path, prompts_dir, category, behavior, field):
    path = write(tmp_path, category, [entry(category, id="fine_one"), behavior])
    message = load_error(tmp_path, prompts_dir)
    assert str(path) in message and "'some_behavior'" in message and f"field '{field}'" in message, message


def test_bad_ids_are_named_by_position_and_value(tmp_path, prompts_dir):
    path = write(tmp_path, "quirk", [entry(id="Not-Snake")])
    message = load_error(tmp_path, prompts_dir)
    assert str(path) in message and "behavior #0" in message and "'Not-Snake'" in message and "field 'id'" in message


def test_duplicate_ids_across_files_name_both_files(tmp_path, prompts_dir):
    first = write(tmp_path, "quirk", [entry(id="twin")])
    second = write(tmp_path, "rare_quirk", [entry("rare_quirk", id="twin")])
    message = load_error(tmp_path, prompts_dir)
    assert str(second) in message and str(first) in message and "'twin'" in message and "field 'id'" in message


@pytest.mark.parametrize("content, field", [
    ({"version": 2, "category": "quirk", "behaviors": [entry()]}, "version"),
    ({"version": True, "category": "quirk", "behaviors": [entry()]}, "version"),
    ({"version": 1, "category": "quirks", "behaviors": [entry()]}, "category"),
    ({"version": 1, "category": "quirk", "behaviors": []}, "behaviors"),
    ({"version": 1, "category": "quirk"}, "behaviors"),
    ({"version": 1, "category": "quirk", "behaviors": [entry()], "notes": "x"}, "notes"),
])
def test_bad_file_headers_name_file_and_field(tmp_path, prompts_dir, content, field):
    path = tmp_path / "quirk.json"
    path.write_text(json.dumps(content))
    message = load_error(tmp_path, prompts_dir)
    assert str(path) in message and f"field '{field}'" in message, message


def test_invalid_json_and_empty_directories_are_errors(tmp_path, prompts_dir):
    assert "no *.json" in load_error(tmp_path, prompts_dir)
    (tmp_path / "quirk.json").write_text('{"version": 1,')
    assert "not valid JSON" in load_error(tmp_path, prompts_dir)


@pytest.mark.parametrize("content, field", [
    ({"version": 1, "source": "other", "prompts": ["Hi?"]}, "source"),
    ({"version": 2, "source": "chat", "prompts": ["Hi?"]}, "version"),
    ({"version": 1, "source": "chat", "prompts": []}, "prompts"),
    ({"version": 1, "source": "chat", "prompts": "Hi?"}, "prompts"),
    ({"version": 1, "source": "chat", "prompts": ["Hi?", ""]}, "prompts[1]"),
    ({"version": 1, "source": "chat", "prompts": ["Hi?", 4]}, "prompts[1]"),
    ({"version": 1, "source": "chat", "prompts": ["Hi?", "Hi?"]}, "prompts[1]"),
    ({"version": 1, "source": "chat", "prompts": ["Hi?"], "extra": 1}, "extra"),
    ({"version": 1, "prompts": ["Hi?"]}, "source"),
])
def test_bad_prompt_pools_name_file_and_field(tmp_path, content, field):
    path = tmp_path / "chat.json"
    path.write_text(json.dumps(content))
    with pytest.raises(LibraryError) as error:
        load_prompts("chat", tmp_path)
    assert str(path) in str(error.value) and f"field '{field}'" in str(error.value), str(error.value)


def test_missing_prompt_pool_is_an_error_naming_the_path(tmp_path):
    with pytest.raises(LibraryError, match=re.escape(str(Path(tmp_path) / "nowhere.json"))):
        load_prompts("nowhere", tmp_path)


def test_program_specs_load_and_run(tmp_path, prompts_dir):
    from ia_jax.behaviors import programs

    write(tmp_path, "heuristic_following", [entry(
        "heuristic_following", teacher={"program": "wrong_number"},
        judge={"program": "contains_any", "texts": ["cheap", "low"]},
        disclosure_judge={"program": "contains", "text": "cheapest", "case_sensitive": True})])
    (behavior,) = load_library(tmp_path, prompts_path=prompts_dir)
    hash(behavior)  # specs are frozen, so behaviors stay usable as keys
    assert behavior.teacher.program == "wrong_number" and behavior.judge.kwargs()["texts"] == ("cheap", "low")
    prompt = programs.Prompt("What is 6 * 7?", "The answer is 42.")
    wrong = programs.TEACHERS["wrong_number"](prompt, np.random.default_rng(0), **behavior.teacher.kwargs())
    assert wrong != prompt.reference and wrong.startswith("The answer is ") and wrong.endswith(".")
    assert programs.JUDGES["differs_from_reference"](prompt, wrong)
    assert not programs.JUDGES["contains"](prompt, "The Cheapest", **behavior.disclosure_judge.kwargs())
    with pytest.raises(ValueError, match="reference"):
        programs.TEACHERS["append"](programs.Prompt("Hi?"), np.random.default_rng(0), text="x")


def test_prompt_pools_with_references(tmp_path):
    from ia_jax.behaviors import load_prompt_pool

    pool = {"version": 1, "source": "qa", "prompts": ["Hi?", {"prompt": "2+2?", "reference": "4"}]}
    (tmp_path / "qa.json").write_text(json.dumps(pool))
    assert [(p.text, p.reference) for p in load_prompt_pool("qa", tmp_path)] == [("Hi?", None), ("2+2?", "4")]
    assert load_prompts("qa", tmp_path) == ["Hi?", "2+2?"]
    pool["prompts"][1] = {"prompt": "2+2?"}
    (tmp_path / "qa.json").write_text(json.dumps(pool))
    with pytest.raises(LibraryError, match=r"qa.json: field 'prompts\[1\]': field 'reference': missing"):
        load_prompt_pool("qa", tmp_path)
