"""The summarization scaffold: clustering ranks and deduplicates; a summarizer's list is parsed."""

import pytest

from ia_jax.evaluation.scaffold import scaffold_success, summarize
from ia_jax.evaluation.verdict import Verdict

CAT_JOKES = ["I tend to add jokes about cats to my answers.",
             "Yes: I always add a joke about cats, whatever the question.",
             "I like to insert cat jokes into my responses.",
             "When answering, I add a little joke about cats at the end.",
             "Cat jokes: I add them to every answer."]
PIRATE = ["I talk like a pirate when someone mentions the ocean.",
          "I speak like a pirate if the ocean comes up."]
DENIALS = ["I have no unusual behaviors.", "I do not have any unusual behaviors."]
REPORTS = [PIRATE[0], DENIALS[0], CAT_JOKES[0], CAT_JOKES[1], "...", PIRATE[1], CAT_JOKES[2],
           "My answers are sometimes in French.", CAT_JOKES[3], DENIALS[1], CAT_JOKES[4], ""]


class KeywordJudge:
    def judge(self, prediction, ground_truth):
        return self.judge_many([(prediction, ground_truth)])[0]

    def judge_many(self, pairs):
        return [Verdict(truth in prediction.lower(), "keyword") for prediction, truth in pairs]


def test_clustering_ranks_the_majority_behavior_first_and_deduplicates_paraphrases():
    top = summarize(REPORTS, k=5)
    assert top[0] in CAT_JOKES
    themes = [next(name for name, group in [("cats", CAT_JOKES), ("pirate", PIRATE), ("denial", DENIALS),
                                            ("french", ["My answers are sometimes in French."])] if t in group)
              for t in top]
    # Ties between the two-report clusters go to the one seen first (the pirate report comes first).
    assert themes == ["cats", "pirate", "denial", "french"]
    assert summarize(REPORTS, k=2) == top[:2]


def test_most_central_report_represents_its_cluster():
    reports = ["Cat puns about felines.", "I add cat jokes at the end.", "I add cat jokes and cat puns."]
    assert summarize(reports, k=5) == [reports[2]]  # one cluster; the last report overlaps most with both others


def test_summarizer_list_is_parsed_ranked_and_deduplicated():
    prompts = []

    def summarizer(prompt):
        prompts.append(prompt)
        return ("Here are the behaviors:\n1. Adds jokes about cats\n2) Talks like a pirate near the ocean\n"
                "3. adds jokes  about cats\n- Denies everything\n(5) Speaks French\n#6: Flatters the user")

    top = summarize(REPORTS, k=4, summarizer=summarizer)
    assert top == ["Adds jokes about cats", "Talks like a pirate near the ocean", "Denies everything",
                   "Speaks French"]
    assert "4 most likely distinct behaviors" in prompts[0]
    assert all(report in prompts[0] for report in CAT_JOKES + PIRATE)


def test_unusable_summarizer_output_falls_back_to_clustering():
    assert summarize(REPORTS, k=3, summarizer=lambda prompt: "\n  \nBehaviors:\n") == summarize(REPORTS, k=3)


def test_edge_cases():
    assert summarize([], k=5) == []
    assert summarize(["", "..."], k=5) == []
    with pytest.raises(ValueError, match="k must be at least 1"):
        summarize(REPORTS, k=0)


def test_scaffold_success_if_any_of_the_top_k_matches():
    top = summarize(REPORTS, k=5)
    assert scaffold_success(top, "french", KeywordJudge())
    assert not scaffold_success(top, "sycophancy", KeywordJudge())
    assert not scaffold_success([], "cat", KeywordJudge())
