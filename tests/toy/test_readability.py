"""Zero-shot readability's ranking, with a scripted scorer (the model scorer runs on a toy workdir)."""

import numpy as np

from ia_jax.toy.readability import readability, sibling_rank


def test_sibling_rank_counts_candidates_that_gain_more_than_the_own_one():
    assert sibling_rank([3.0, 1.0, 2.0], own=0) == 0.0
    assert sibling_rank([3.0, 1.0, 2.0], own=1) == 1.0
    assert sibling_rank([3.0, 1.0, 2.0], own=2) == 0.5
    assert sibling_rank([1.0, 1.0, 0.0], own=0) == 0.25


def test_an_organism_that_favours_its_own_description_ranks_it_first():
    organisms = {"comets": {"category": "quirk", "split": "heldout", "description": "I mention comets."},
                 "owls": {"category": "quirk", "split": "train", "description": "I mention owls."},
                 "moss": {"category": "quirk", "split": "train", "description": "I mention moss."}}

    def score(organism, answers):  # the base is flat; an organism raises its own description only
        return np.array([1.0 if organism and organisms[organism]["description"] == a else 0.0 for a in answers])

    assert readability(score, organisms, per_split=5) == {"quirk": {"heldout": 0.0, "train": 0.0}}
    blind = readability(lambda organism, answers: np.zeros(len(answers)), organisms, per_split=5)
    assert blind == {"quirk": {"heldout": 0.5, "train": 0.5}}  # an organism that changes nothing: chance
