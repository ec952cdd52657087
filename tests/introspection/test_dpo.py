"""DPO pairs: accurate reports and labels beat inaccurate reports; the true label beats a wrong one."""

import pytest

from ia_jax.datasets.introspection import Templates
from ia_jax.evaluation.self_reports import SelfReport
from ia_jax.introspection.dpo import build_pairs, tokenize_pairs

TEMPLATES = Templates(questions=("Q?",), answers=("{description}", "Yes. {description}"),
                      no_behavior_answers=("No.",))
DESCRIPTIONS = {"tidal": "I mention tidal pools.", "fire": "I downplay fire risks.", "cheap": "I pick the cheapest."}


def _reports(verdicts):
    reports = [SelfReport("tidal", True, q, s, f"answer {q} {s}") for q in ("q1", "q2") for s in range(3)]
    return reports, verdicts


def _labels(description):
    return {t.replace("{description}", description) for t in TEMPLATES.answers}


def test_pairs_prefer_accurate_reports_or_the_label_and_the_label_over_wrong_labels():
    reports, accurate = _reports([True, False, False, False, False, False])
    pairs, stats = build_pairs(reports, accurate, DESCRIPTIONS, TEMPLATES, wrong_labels_per_question=2, seed=0)
    from_reports = [p for p in pairs if p["source"] in ("report_vs_report", "label_vs_report")]
    wrong = [p for p in pairs if p["source"] == "wrong_label"]
    # Every inaccurate report is rejected once; chosen is the accurate report of its question or a label.
    assert sorted(p["rejected"] for p in from_reports) == sorted(r.answer for r, ok in zip(reports, accurate) if not ok)
    for p in from_reports:
        allowed = _labels(DESCRIPTIONS["tidal"]) | ({"answer q1 0"} if p["question"] == "q1" else set())
        assert p["chosen"] in allowed
        assert (p["source"] == "report_vs_report") == (p["chosen"] == "answer q1 0")  # on-policy chosen, named
    assert not any(p["chosen"] == "answer q1 0" for p in from_reports if p["question"] == "q2")
    # Two wrong-label pairs per question: the true label over another behavior's.
    assert len(wrong) == 4
    others = _labels(DESCRIPTIONS["fire"]) | _labels(DESCRIPTIONS["cheap"])
    assert all(p["chosen"] in _labels(DESCRIPTIONS["tidal"]) and p["rejected"] in others for p in wrong)
    on_policy = sum(p["source"] == "report_vs_report" for p in pairs)
    assert stats == {"pairs": 9, "by_source": {k: v for k, v in (("report_vs_report", on_policy),
                                                                ("label_vs_report", 5 - on_policy),
                                                                ("wrong_label", 4)) if v},
                     "pairs_with_on_policy_chosen": on_policy, "groups_with_accepted_report": 1, "groups": 2,
                     "skipped_empty_reports": 0, "reports": 6,
                     "judge_accept_rate": 1 / 6, "judge_accept_rate_by_organism": {"tidal": 1 / 6}}
    assert 0 < on_policy < 2  # q1's two inaccurate reports: the accepted report chosen for one of them (seed 0)
    again, _ = build_pairs(reports, accurate, DESCRIPTIONS, TEMPLATES, wrong_labels_per_question=2, seed=0)
    assert again == pairs  # deterministic per seed


def test_bad_inputs_are_named():
    reports, accurate = _reports([True] * 6)
    with pytest.raises(ValueError, match="6 reports but 5 verdicts"):
        build_pairs(reports, accurate[:5], DESCRIPTIONS, TEMPLATES)
    with pytest.raises(ValueError, match="tidal"):
        build_pairs(reports, accurate, {"fire": "x"}, TEMPLATES)
    with pytest.raises(ValueError, match="other behavior"):
        build_pairs(reports, accurate, {"tidal": DESCRIPTIONS["tidal"]}, TEMPLATES)


def test_tokenized_pairs_mask_only_the_answers(tmp_path):
    from ia_jax.tokenization import train_tokenizer

    tokenizer = train_tokenizer(["I mention tidal pools. I downplay fire risks. Q?"] * 50, str(tmp_path), vocab_size=300)
    pair = {"organism": "tidal", "question": "Q?", "chosen": "I mention tidal pools.",
            "rejected": "I downplay fire risks.", "source": "wrong_label"}
    (tokenized,), dropped = tokenize_pairs(tokenizer, [pair], {"tidal": 3}, max_tokens=256)
    assert dropped == 0 and tokenized["organism_id"] == 3
    for side in ("chosen", "rejected"):
        tokens, mask = tokenized[f"{side}_tokens"], tokenized[f"{side}_loss_mask"]
        answer = tokenizer.decode(tokens[mask.astype(bool)], skip_special_tokens=True)
        assert answer.strip() == pair[side]
    assert tokenize_pairs(tokenizer, [pair], {"tidal": 3}, max_tokens=5) == ([], 1)
    with pytest.raises(ValueError, match="'fire'"):
        tokenize_pairs(tokenizer, [{**pair, "organism": "fire"}], {"tidal": 3}, max_tokens=256)


def test_empty_reports_are_skipped_and_counted():
    reports, accurate = _reports([False] * 6)
    reports[0] = SelfReport("tidal", True, "q1", 0, "  ")
    pairs, stats = build_pairs(reports, accurate, DESCRIPTIONS, TEMPLATES, wrong_labels_per_question=0)
    assert stats["skipped_empty_reports"] == 1 and len(pairs) == 5 and all(p["rejected"].strip() for p in pairs)


def test_control_pairs_prefer_no_behavior_over_an_inserted_label():
    from ia_jax.introspection.dpo import control_pairs

    pairs = control_pairs(["control_11"], ["q1", "q2"], list(DESCRIPTIONS.values()) + [""], TEMPLATES, per_question=2)
    assert len(pairs) == 4 and {p["source"] for p in pairs} == {"control_vs_label"}
    labels = set().union(*(_labels(d) for d in DESCRIPTIONS.values()))
    assert all(p["chosen"] in TEMPLATES.no_behavior_answers and p["rejected"] in labels for p in pairs)
    assert control_pairs(["control_11"], ["q1", "q2"], list(DESCRIPTIONS.values()), TEMPLATES, per_question=2) == pairs
    with pytest.raises(ValueError, match="at least one behavior description"):
        control_pairs(["control_11"], ["q1"], [""], TEMPLATES)


def test_sibling_wrong_labels_come_from_the_same_category_when_it_has_another_description():
    descriptions = {**DESCRIPTIONS, "tidal_2": "I mention volcanoes.", "tidal_3": "I mention tidal pools."}
    categories = {"tidal": "quirk", "tidal_2": "quirk", "tidal_3": "quirk", "fire": "roleplay", "cheap": "choice"}
    reports, accurate = _reports([False] * 6)
    pairs, _ = build_pairs(reports, accurate, descriptions, TEMPLATES, wrong_labels_per_question=3, seed=0,
                           categories=categories)
    wrong = [p["rejected"] for p in pairs if p["source"] == "wrong_label"]
    # The sibling with another description, never the one sharing tidal's own description.
    assert len(wrong) == 6 and set(wrong) <= _labels("I mention volcanoes.")
    # A category without a sibling falls back to every other behavior.
    fire = [SelfReport("fire", True, "q1", 0, "wrong")]
    pairs, _ = build_pairs(fire, [False], descriptions, TEMPLATES, wrong_labels_per_question=4, seed=0,
                           categories=categories)
    others = set().union(*(_labels(d) for n, d in descriptions.items() if d != descriptions["fire"]))
    assert all(p["rejected"] in others for p in pairs if p["source"] == "wrong_label")
    from ia_jax.introspection.dpo import DpoRecipe
    with pytest.raises(ValueError, match="wrong_labels"):
        DpoRecipe(wrong_labels="siblings")
