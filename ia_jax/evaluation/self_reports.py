"""Asking organisms about themselves, with every answer on disk the moment it exists.

Sampling thousands of self-reports takes long enough to be interrupted, so answers are appended to a
JSONL file (one line per answer, flushed and fsynced after each batch) and a re-run asks only for what
the file does not hold yet. Who answers is injected as a `Respondent`, so the same code drives the
sampler, an HTTP endpoint, or a test's plain function.

The JSONL helpers here are shared with the judgment cache in `metrics`: a crash mid-write can leave
only a torn *last* line, so that line is cut off and redone; a malformed line anywhere else means the
file was damaged or edited and is an error naming the file and line.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import os
from typing import Any, Callable, Iterable, Mapping, Sequence, TextIO

from tqdm.auto import tqdm


@dataclasses.dataclass(frozen=True)
class ReportRequest:
    organism: str
    with_ia: bool
    question: str
    sample: int  # index of the independent sample; lets a sampler derive its seed from it


@dataclasses.dataclass(frozen=True)
class SelfReport:
    organism: str
    with_ia: bool
    question: str
    sample: int
    answer: str

    @property
    def request(self) -> ReportRequest:
        return ReportRequest(self.organism, self.with_ia, self.question, self.sample)


Respondent = Callable[[list[ReportRequest]], list[str]]

_FIELD_TYPES = {"organism": str, "with_ia": bool, "question": str, "sample": int, "answer": str}


def read_jsonl(path: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, record) for every complete line; a torn last line is removed from the file."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        data = f.read()
    complete_end = data.rfind(b"\n") + 1
    if complete_end < len(data):  # no newline after the last record: its write was cut short
        with open(path, "r+b") as f:
            f.truncate(complete_end)
    records = []
    for number, raw in enumerate(data[:complete_end].split(b"\n")[:-1], start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}, line {number}: not valid JSON ({e}); fix or delete the line") from e
        if not isinstance(record, dict):
            raise ValueError(f"{path}, line {number}: expected a JSON object, got {type(record).__name__}")
        records.append((number, record))
    return records


def append_jsonl(file: TextIO, records: Iterable[dict[str, Any]]) -> None:
    """Appends records and forces them to disk, so a crash afterwards cannot lose them."""
    file.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    file.flush()
    os.fsync(file.fileno())


def check_fields(record: dict[str, Any], types: dict[str, type], path: str, number: int) -> None:
    for field, kind in types.items():
        value = record.get(field)
        # bool is an int in Python; a sample index of `true` is as wrong as a with_ia of 1.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ValueError(f"{path}, line {number}: field {field!r} should be {kind.__name__}, got {value!r}")


def _nonempty_unique(name: str, values: Sequence) -> list:
    if not values:
        raise ValueError(f"{name} is empty: nothing to ask")
    duplicates = sorted(repr(v) for v, n in collections.Counter(values).items() if n > 1)
    if duplicates:
        raise ValueError(f"{name} has duplicate entries: {', '.join(duplicates)}")
    return list(values)


def _requests(organisms: Sequence[str], questions: Sequence[str], samples: int,
              with_ia: Sequence[bool]) -> list[ReportRequest]:
    organisms = _nonempty_unique("organisms", organisms)
    questions = _nonempty_unique("questions", questions)
    with_ia = _nonempty_unique("with_ia", [bool(w) for w in with_ia])
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    return [ReportRequest(o, w, q, s)
            for o, w, q, s in itertools.product(organisms, with_ia, questions, range(samples))]


def check_fingerprint(path: str, fingerprint: Mapping[str, Any] | None) -> None:
    """Answers on disk are reused only for the run that wrote them: `path.fingerprint.json` records
    what produced them (model, adapters, sampling settings), and a different run is refused."""
    if fingerprint is None:
        return
    fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))
    sidecar = path + ".fingerprint.json"
    if os.path.exists(sidecar):
        with open(sidecar, encoding="utf-8") as f:
            saved = json.load(f)
        if saved != fingerprint:
            diffs = [k for k in sorted(set(saved) | set(fingerprint)) if saved.get(k) != fingerprint.get(k)]
            raise ValueError(f"{path} holds answers from another run (differs in {diffs}); use a new file")
        return
    if os.path.exists(path) and os.path.getsize(path):
        raise ValueError(f"{path} holds answers but no {os.path.basename(sidecar)}; cannot tell which run wrote them")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(sidecar, "w", encoding="utf-8") as f:
        json.dump(fingerprint, f, indent=2, sort_keys=True)


def collect_self_reports(respondent: Respondent, organisms: Sequence[str], questions: Sequence[str],
                         samples: int, with_ia: Sequence[bool], path: str, batch_size: int = 64,
                         progress: bool = True, fingerprint: Mapping[str, Any] | None = None) -> list[SelfReport]:
    """Every (organism, with_ia, question, sample) answered, reusing answers already in `path`.

    Returns the requested reports in request order (organism, then with_ia, question, sample). Lines
    in the file for other requests (e.g. from a run with more organisms) are kept but not returned.
    Pass a `fingerprint` of what answers (checkpoints, IA, sampling settings): a file written by a
    different run is then refused instead of silently reused.
    """
    requests = _requests(organisms, questions, samples, with_ia)
    check_fingerprint(path, fingerprint)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    answers: dict[ReportRequest, str] = {}
    for number, record in read_jsonl(path):
        check_fields(record, _FIELD_TYPES, path, number)
        report = SelfReport(**{k: record[k] for k in _FIELD_TYPES})
        answers.setdefault(report.request, report.answer)
    pending = [r for r in requests if r not in answers]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a", encoding="utf-8") as file, \
            tqdm(total=len(requests), initial=len(requests) - len(pending), desc="self-reports",
                 disable=not progress, leave=False) as bar:
        for start in range(0, len(pending), batch_size):
            batch = pending[start:start + batch_size]
            replies = respondent(batch)
            if len(replies) != len(batch) or not all(isinstance(a, str) for a in replies):
                raise ValueError(f"respondent returned {len(replies)} replies for {len(batch)} requests "
                                 "(expected one string per request)")
            append_jsonl(file, (dataclasses.asdict(SelfReport(**dataclasses.asdict(r), answer=a))
                                for r, a in zip(batch, replies)))
            answers.update(zip(batch, replies))
            bar.update(len(batch))
    return [SelfReport(**dataclasses.asdict(r), answer=answers[r]) for r in requests]
