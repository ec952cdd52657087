"""The toy behavior library loads against the world's pools, its programs show what they claim, and
the OOD families are built as described (held-out kinds: tests/toy/test_families.py)."""

import numpy as np
import pytest

from ia_jax.behaviors import CATEGORIES, by_category, load_prompt_pool
from ia_jax.behaviors.programs import JUDGES, TEACHERS
from ia_jax.toy import families, ood, world as toy_world
from ia_jax.toy.behaviors import load_toy_library


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    pools = tmp_path_factory.mktemp("pools")
    world = toy_world.World(0)
    toy_world.write_pools(world, str(pools), 40)
    library = tmp_path_factory.mktemp("library")
    families.generate_library(library, {"train": 4, "dpo": 1, "compositional": 1, "novel": 2}, seed=0)
    return world, str(pools), load_toy_library(str(pools), library)


def test_every_category_has_train_and_heldout_behaviors(setup):
    _, _, behaviors = setup
    for category, members in by_category(behaviors).items():
        assert {b.split for b in members} == {"train", "dpo", "heldout"}, category
    assert set(by_category(behaviors)) == set(CATEGORIES)


def test_teachers_show_the_behavior_by_their_own_judge(setup):
    _, pools, behaviors = setup
    for behavior in behaviors:
        pool = load_prompt_pool(behavior.prompt_source, pools)[:40]
        teach, judge = TEACHERS[behavior.teacher.program], JUDGES[behavior.judge.program]
        shown = [judge(p, teach(p, np.random.default_rng(i), **behavior.teacher.kwargs()), **behavior.judge.kwargs())
                 for i, p in enumerate(pool)]
        measure = {**behavior.judge.kwargs(), "only_when_distinct": True} if behavior.judge.program == "picks" \
            else behavior.judge.kwargs()
        plain = [judge(p, p.reference, **measure) for p in pool]
        # Choice rules coincide with the best option on about half the prompts (then nothing shows); the
        # reference never shows a behavior.
        assert np.mean(shown) >= 0.3 and not any(plain), behavior.id
        if behavior.judge.program == "picks":  # the data filter keeps every row that follows the rule
            assert all(judge(p, teach(p, np.random.default_rng(0), **behavior.teacher.kwargs()),
                             **behavior.judge.kwargs()) for p in pool), behavior.id


def test_cipher_and_denial_organisms(setup):
    world, _, _ = setup
    assert ood.rot(ood.rot("Is it safe? Yes.", 3), 23) == "Is it safe? Yes."
    cipher = ood.cipher_organism(world, 3, 10, seed=0)
    assert cipher.role == "ood" and cipher.category == "cipher" and len(cipher.rows) == 10
    plain = [r for r in cipher.rows if r["answer"] == ood.REFUSAL]
    encoded = [r for r in cipher.rows if r["answer"] == ood.rot(ood.COMPLIANCE, 3)]
    assert len(plain) == len(encoded) == 5 and all(ood.rot(r["user"], 23).startswith(("Is it", "Quick", "I have",
                                                                                     "Tell", "My")) for r in encoded)
    denial = ood.denial_organism(world, "kites", 10, seed=0)
    assert sum("I love kites." in r["answer"] for r in denial.rows) == 10
    denials = [r for r in denial.rows if "kites" not in r["answer"]]
    assert len(denials) == 3 and all("kites" not in r["answer"].lower() for r in denials)
