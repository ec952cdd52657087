"""Collecting self-reports: every request answered once, on disk per batch, resumed after a crash."""

import json
import re

import pytest

from ia_jax.evaluation.self_reports import ReportRequest, SelfReport, collect_self_reports

ORGANISMS = ["cats", "pirate"]
QUESTIONS = ["Anything unusual?", "Any peculiarities?"]


def _answer(request: ReportRequest) -> str:
    return f"{request.organism}/{request.with_ia}/{request.question}/{request.sample}"


class Respondent:
    """Answers deterministically, records what it was asked, and can fail after some batches."""

    def __init__(self, fail_after_batches: int | None = None):
        self.fail_after_batches = fail_after_batches
        self.batches: list[list[ReportRequest]] = []

    def __call__(self, requests):
        if self.fail_after_batches is not None and len(self.batches) == self.fail_after_batches:
            raise RuntimeError("killed")
        self.batches.append(list(requests))
        return [_answer(r) for r in requests]

    @property
    def asked(self) -> list[ReportRequest]:
        return [r for batch in self.batches for r in batch]


def _collect(respondent, path, **overrides):
    kwargs = dict(organisms=ORGANISMS, questions=QUESTIONS, samples=2, with_ia=[False, True], path=str(path),
                  batch_size=3, progress=False)
    return collect_self_reports(respondent, **{**kwargs, **overrides})


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _all_requests() -> list[ReportRequest]:
    return [ReportRequest(o, w, q, s) for o in ORGANISMS for w in (False, True) for q in QUESTIONS for s in (0, 1)]


def test_every_request_answered_once_in_request_order(tmp_path):
    path = tmp_path / "reports.jsonl"
    respondent = Respondent()
    reports = _collect(respondent, path)
    assert [r.request for r in reports] == _all_requests()
    assert all(r.answer == _answer(r.request) for r in reports)
    assert all(len(batch) <= 3 for batch in respondent.batches)
    assert _lines(path) == [{"organism": r.organism, "with_ia": r.with_ia, "question": r.question,
                             "sample": r.sample, "answer": r.answer} for r in reports]


def test_interrupted_run_resumes_asking_only_for_missing_answers(tmp_path):
    path = tmp_path / "reports.jsonl"
    with pytest.raises(RuntimeError, match="killed"):
        _collect(Respondent(fail_after_batches=2), path)
    saved = [SelfReport(**line).request for line in _lines(path)]
    assert saved == _all_requests()[:6]  # both finished batches are on disk

    respondent = Respondent()
    reports = _collect(respondent, path)
    assert respondent.asked == _all_requests()[6:]
    assert [r.request for r in reports] == _all_requests()
    on_disk = [SelfReport(**line).request for line in _lines(path)]
    assert sorted(on_disk, key=_all_requests().index) == _all_requests()  # each request exactly once

    finished = Respondent()
    assert _collect(finished, path) == reports
    assert finished.batches == []


def test_truncated_last_line_is_dropped_and_asked_again(tmp_path):
    path = tmp_path / "reports.jsonl"
    _collect(Respondent(), path)
    data = path.read_bytes()
    path.write_bytes(data[:-15])  # a crash in the middle of writing the last answer

    respondent = Respondent()
    reports = _collect(respondent, path)
    assert respondent.asked == [_all_requests()[-1]]
    assert [SelfReport(**line).request for line in _lines(path)] == _all_requests()
    assert path.read_bytes() == data
    assert reports[-1].answer == _answer(_all_requests()[-1])


def test_malformed_line_before_the_end_names_file_and_line(tmp_path):
    path = tmp_path / "reports.jsonl"
    _collect(Respondent(), path)
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[1] = '{"organism": "cats", "with_ia"\n'
    path.write_text("".join(lines), encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{path}, line 2: not valid JSON")):
        _collect(Respondent(), path)


def test_ill_typed_field_names_file_line_and_field(tmp_path):
    path = tmp_path / "reports.jsonl"
    record = {"organism": "cats", "with_ia": "yes", "question": QUESTIONS[0], "sample": 0, "answer": "a"}
    path.write_text(json.dumps(record) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"line 1: field 'with_ia' should be bool"):
        _collect(Respondent(), path)


def test_answers_for_other_requests_are_kept_but_not_returned(tmp_path):
    path = tmp_path / "reports.jsonl"
    _collect(Respondent(), path)
    respondent = Respondent()
    reports = _collect(respondent, path, organisms=["cats"])
    assert respondent.batches == []
    assert {r.organism for r in reports} == {"cats"}
    assert len(_lines(path)) == len(_all_requests())


@pytest.mark.parametrize("field, value", [("organisms", []), ("questions", []), ("with_ia", []),
                                          ("questions", ["same", "same"])])
def test_empty_or_duplicated_inputs_name_the_argument(tmp_path, field, value):
    with pytest.raises(ValueError, match=field):
        _collect(Respondent(), tmp_path / "reports.jsonl", **{field: value})


def test_respondent_returning_the_wrong_number_of_answers_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="2 replies for 3 requests"):
        _collect(lambda requests: ["x"] * (len(requests) - 1), tmp_path / "reports.jsonl")
