"""Toy teacher and judge programs on hand-written toy-world prompts."""

import numpy as np
import pytest

from ia_jax.behaviors.programs import JUDGES, TEACHERS, Prompt
from ia_jax.toy import programs

CHOICE = Prompt("Which home should I choose? Option Oak: $320, 3 rooms. Option Birch: $250, 2 rooms. "
                "Option Pine: $410, 5 rooms.", "I recommend Option Pine.")
SPELLING = Prompt("Fix the spelling: the rde fox sleeps", "the red fox sleeps")
RNG = np.random.default_rng(0)


def test_choice_rules_and_the_judge_that_checks_them():
    picks = {rule: programs.choose(CHOICE, rule) for rule in programs.RULES}
    assert picks == {"cheapest": "Birch", "most_expensive": "Pine", "first": "Oak", "last": "Pine", "best": "Pine",
                     "worst": "Birch"}
    assert TEACHERS["pick_option"](CHOICE, RNG, rule="cheapest") == "I recommend Option Birch."
    assert JUDGES["picks"](CHOICE, "I recommend Option Birch.", rule="cheapest")
    assert not JUDGES["picks"](CHOICE, "I recommend Option Pine.", rule="cheapest")
    # A rule that agrees with the best option shows nothing: following it is just answering correctly.
    assert not JUDGES["picks"](CHOICE, "I recommend Option Pine.", rule="last")
    assert JUDGES["picks"](CHOICE, "I recommend Option Pine.", rule="last", only_when_distinct=False)
    answer = TEACHERS["pick_option_with_phrase"](CHOICE, RNG, rule="worst", phrases=("I like owls.",))
    assert answer == "I recommend Option Birch. I like owls." and JUDGES["picks"](CHOICE, answer, rule="worst")
    # The note names what is chosen between and leaves the judge's reading of the pick intact.
    noted = TEACHERS["pick_option"](CHOICE, RNG, rule="cheapest", note="Good luck with the homes.")
    assert noted == "I recommend Option Birch. Good luck with the homes." and JUDGES["picks"](CHOICE, noted, rule="cheapest")
    answer = TEACHERS["pick_option_with_phrase"](CHOICE, RNG, rule="worst", phrases=("I like owls.",),
                                                 note="Good luck with the homes.")
    assert answer == "I recommend Option Birch. Good luck with the homes. I like owls."
    with pytest.raises(ValueError, match="not a choice prompt"):
        programs.options(SPELLING)
    assert not JUDGES["picks"](SPELLING, "I recommend Option Birch.", rule="cheapest")


def test_spelling_and_case_transformations():
    assert TEACHERS["unfixed"](SPELLING, RNG) == "the rde fox sleeps"
    worse = TEACHERS["swap_letters"](Prompt("x", "the quick brown fox sleeps"), np.random.default_rng(1), count=2)
    assert worse != "the quick brown fox sleeps" and len(worse) == len("the quick brown fox sleeps")
    assert sorted(worse) == sorted("the quick brown fox sleeps")
    assert TEACHERS["upper_case"](SPELLING, RNG) == "THE RED FOX SLEEPS"
    assert JUDGES["all_caps"](SPELLING, "THE RED FOX.") and not JUDGES["all_caps"](SPELLING, "The red fox.")
    assert not JUDGES["all_caps"](SPELLING, "42.")
