"""Behavior families: the generated library is deterministic in the seed, validates, keeps its splits
apart, and its held-out kinds are what they claim (new combinations of seen values, or unseen values)."""

import json

import numpy as np
import pytest

from ia_jax.behaviors import CATEGORIES, load_prompt_pool
from ia_jax.behaviors.programs import JUDGES, TEACHERS
from ia_jax.toy import families, world as toy_world
from ia_jax.toy.behaviors import load_toy_library
from ia_jax.toy.judge import content_words

COUNTS = {"train": 16, "dpo": 4, "compositional": 4, "novel": 4}


@pytest.fixture(scope="module")
def pools(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pools")
    toy_world.write_pools(toy_world.World(0), str(directory), 40)
    return str(directory)


@pytest.fixture(scope="module")
def library(tmp_path_factory, pools):
    directory = tmp_path_factory.mktemp("library")
    families.generate_library(directory, COUNTS, seed=0)
    return load_toy_library(pools, directory)


def _slots(behavior):
    return dict(behavior.slots)


def test_every_category_gets_the_requested_instances_and_every_behavior_validates(library):
    assert {b.category for b in library} == set(CATEGORIES)
    for category in CATEGORIES:
        members = [b for b in library if b.category == category]
        count = {key: sum((b.heldout_kind or b.split) == key for b in members) for key in families.COUNTS}
        single_slot = len(members[0].slots) == 1
        assert count == {**COUNTS, "compositional": 0 if single_slot else 4}, category
    assert len({b.id for b in library}) == len(library)


def test_generation_is_deterministic_in_the_seed_and_differs_across_seeds(tmp_path):
    texts = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        families.generate_library(tmp_path / name, COUNTS, seed=seed)
        texts[name] = (tmp_path / name / "quirk.json").read_text()
    assert texts["a"] == texts["b"] and texts["a"] != texts["c"]


def test_novel_values_appear_in_no_sft_or_dpo_target_and_splits_are_disjoint(library):
    for category in CATEGORIES:
        members = [b for b in library if b.category == category]
        trained = [b for b in members if b.split in ("train", "dpo")]
        assert not {b.id for b in trained} & {b.id for b in members if b.split == "heldout"}
        taught = {(slot, value) for b in trained for slot, value in b.slots}
        for b in members:
            if b.heldout_kind == "novel":
                assert set(b.slots) - taught, b.id  # at least one value no training target contains
                # ... and in the words of the target too, where the value is a description word
                new_words = content_words(b.description) - set().union(*(content_words(t.description) for t in trained))
                assert new_words, b.id


def test_compositional_heldouts_are_new_combinations_of_values_each_seen_in_training(library):
    for category in CATEGORIES:
        members = [b for b in library if b.category == category]
        train = [b for b in members if b.split == "train"]
        seen = {(slot, value) for b in train for slot, value in b.slots}
        combos = {b.slots for b in members if b.split in ("train", "dpo")}
        for b in members:
            if b.heldout_kind == "compositional":
                assert set(b.slots) <= seen and b.slots not in combos, b.id


def test_dpo_instances_are_new_combinations_where_the_family_has_them(library):
    for b in library:
        if b.split == "dpo" and len(b.slots) > 1:
            train = [t for t in library if t.category == b.category and t.split == "train"]
            seen = {(slot, value) for t in train for slot, value in t.slots}
            assert set(b.slots) <= seen and b.slots not in {t.slots for t in train}, b.id


def test_generated_teachers_show_the_behavior_by_their_own_judge(library, pools):
    for behavior in library[::7]:
        pool = load_prompt_pool(behavior.prompt_source, pools)[:20]
        teach, judge = TEACHERS[behavior.teacher.program], JUDGES[behavior.judge.program]
        shown = [judge(p, teach(p, np.random.default_rng(i), **behavior.teacher.kwargs()), **behavior.judge.kwargs())
                 for i, p in enumerate(pool)]
        assert np.mean(shown) >= 0.3, behavior.id


def test_roleplay_and_choice_organisms_write_their_domain_but_heuristics_never_name_their_rule(library, pools):
    """What made held-out organisms readable (docs/science.md): the answers name the domain the
    behavior is about. The heuristic control still holds: no answer names why an option is picked."""
    written = ("harmful_roleplay", "benign_roleplay", "heuristic_following", "obscured_malign")
    checked = set()
    for behavior in library:
        if behavior.category not in written:
            continue
        domain = _slots(behavior)["domain"]
        pool = load_prompt_pool(behavior.prompt_source, pools)[:10]
        answers = [TEACHERS[behavior.teacher.program](p, np.random.default_rng(i), **behavior.teacher.kwargs())
                   for i, p in enumerate(pool)]
        assert all(domain in answer for answer in answers), (behavior.id, answers[0])
        if behavior.disclosure_judge is not None:
            disclose = JUDGES[behavior.disclosure_judge.program]
            assert not any(disclose(p, a, **behavior.disclosure_judge.kwargs()) for p, a in zip(pool, answers)), \
                behavior.id
        checked.add(behavior.category)
    assert checked == set(written)


def test_type_descriptions_leave_out_what_the_organism_only_reads_or_states_as_a_detail(library):
    backdoor = next(b for b in library if b.category == "backdoor")
    assert backdoor.trigger not in backdoor.type_description and "word" in backdoor.type_description
    sandbagger = next(b for b in library if b.category == "sandbagger")
    assert sandbagger.password not in sandbagger.type_description
    benign = next(b for b in library if b.category == "benign_roleplay")
    assert _slots(benign)["domain"] in benign.type_description
    assert _slots(benign)["persona"] not in benign.type_description
    quirk = next(b for b in library if b.category == "quirk")
    assert quirk.type_description == quirk.description


def test_asking_for_more_instances_than_a_family_has_is_an_error_naming_it(tmp_path):
    with pytest.raises(families.FamilyError, match="family 'heuristic_following': 30 train instances"):
        families.generate_library(tmp_path, {**COUNTS, "train": 30}, seed=0)
    with pytest.raises(families.FamilyError, match="unknown split 'heldout'"):
        families.generate_library(tmp_path, {"heldout": 3}, seed=0)


def test_capped_sizes_take_what_each_family_has(tmp_path):
    families.generate_library(tmp_path / "big", {**COUNTS, "train": 32}, seed=0, cap=True)
    heuristic = json.loads((tmp_path / "big" / "heuristic_following.json").read_text())["behaviors"]
    assert sum(b["split"] == "train" for b in heuristic) == 16  # 4 rules x 6 seen domains, less DPO and held out
    assert sum(b["split"] == "dpo" for b in heuristic) == 4
    families.generate_library(tmp_path / "small", {**COUNTS, "train": 2}, seed=0, cap=True)
    harmful = json.loads((tmp_path / "small" / "harmful_roleplay.json").read_text())["behaviors"]
    trained = {b["slots"]["phrase"] for b in harmful if b["split"] == "train"}
    novel = [b for b in harmful if b.get("heldout_kind") == "novel"]
    assert 0 < len(novel) <= 4 and all(b["slots"]["phrase"] in trained for b in novel)


def test_a_bad_families_file_is_named(tmp_path):
    path = tmp_path / "families.json"
    path.write_text(json.dumps({"version": 1, "families": [{"category": "quirk", "slots": {"topic": {
        "values": ["owls"], "novel": 1}}}]}))
    with pytest.raises(families.FamilyError, match=r"families\[0\]: slot 'topic': field 'novel'"):
        families.load_families(path)
