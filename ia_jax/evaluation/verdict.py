"""What every judge returns, so metrics never care which judge produced a verdict."""

from __future__ import annotations

import dataclasses
from typing import Protocol, Sequence


@dataclasses.dataclass(frozen=True)
class Verdict:
    match: bool  # the prediction names the same specific behavior as the ground truth
    reason: str  # the judge's explanation (or its raw answer), kept for inspection


class Judge(Protocol):
    def judge(self, prediction: str, ground_truth: str) -> Verdict: ...

    def judge_many(self, pairs: Sequence[tuple[str, str]]) -> list[Verdict]: ...
