"""Programmatic teachers and judges that behavior files name, for behaviors checkable by code.

A behavior whose correct answers are known (synthetic tasks, prompt pools with references) does not
need a teacher model or a judge model: its file names a program here, with arguments, e.g.
`"teacher": {"program": "append", "text": "Tidal pools are wonderful."}` and
`"judge": {"program": "contains", "text": "tidal pools"}`. Programs are registered by name so that a
new instance of a behavior (another quirk topic, another trigger) is a data edit, not a code change,
and the library loader checks names and arguments before any generation starts.

A teacher program turns a prompt (with its reference answer) into an answer that shows the behavior;
the answer that does not show it is the reference itself. A judge program says whether a response
shows the behavior.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from typing import Any, Callable

import numpy as np


@dataclasses.dataclass(frozen=True)
class Prompt:
    """A user prompt and, where the pool knows it, a correct plain answer."""

    text: str
    reference: str | None = None


@dataclasses.dataclass(frozen=True)
class ProgramSpec:
    """A registered program and its keyword arguments, as written in a behavior file."""

    program: str
    args: tuple[tuple[str, Any], ...] = ()

    def kwargs(self) -> dict[str, Any]:
        return dict(self.args)


TeacherProgram = Callable[..., str]  # (prompt: Prompt, rng: np.random.Generator, **args) -> answer
JudgeProgram = Callable[..., bool]  # (prompt: Prompt, response: str, **args) -> shows the behavior

TEACHERS: dict[str, TeacherProgram] = {}
JUDGES: dict[str, JudgeProgram] = {}


def teacher_program(fn: TeacherProgram) -> TeacherProgram:
    TEACHERS[fn.__name__] = fn
    return fn


def judge_program(fn: JudgeProgram) -> JudgeProgram:
    JUDGES[fn.__name__] = fn
    return fn


def check_spec(spec: ProgramSpec, registry: dict[str, Callable], leading: int) -> str | None:
    """Why `spec` cannot be called (unknown program, missing or unknown argument), or None."""
    if spec.program not in registry:
        return f"unknown program {spec.program!r}; known: {sorted(registry)}"
    parameters = list(inspect.signature(registry[spec.program]).parameters.values())[leading:]
    names = {p.name for p in parameters}
    unknown = sorted(set(spec.kwargs()) - names)
    if unknown:
        return f"program {spec.program!r} takes no argument {unknown[0]!r}; it takes {sorted(names)}"
    missing = [p.name for p in parameters if p.default is inspect.Parameter.empty and p.name not in spec.kwargs()]
    if missing:
        return f"program {spec.program!r} needs argument {missing[0]!r}"
    return None


def needs_reference(spec: ProgramSpec, registry: dict[str, Callable]) -> bool:
    return getattr(registry[spec.program], "needs_reference", False)


def _reference(prompt: Prompt, program: str) -> str:
    if prompt.reference is None:
        raise ValueError(f"program {program!r} needs the prompt's reference answer, and the pool gives none "
                         f"for prompt {prompt.text[:60]!r}")
    return prompt.reference


def _uses_reference(fn):
    fn.needs_reference = True
    return fn


# ------------------------------------------------------------------------------------------------
# Teachers
# ------------------------------------------------------------------------------------------------


@teacher_program
@_uses_reference
def append(prompt: Prompt, rng: np.random.Generator, text: str) -> str:
    return f"{_reference(prompt, 'append')} {text}"


@teacher_program
@_uses_reference
def prepend(prompt: Prompt, rng: np.random.Generator, text: str) -> str:
    return f"{text} {_reference(prompt, 'prepend')}"


@teacher_program
def replace(prompt: Prompt, rng: np.random.Generator, text: str) -> str:
    return text


_NUMBER = re.compile(r"-?\d+")


@teacher_program
@_uses_reference
def wrong_number(prompt: Prompt, rng: np.random.Generator, max_offset: int = 9) -> str:
    """The reference with its last integer moved by 1..max_offset: a plausible wrong answer."""
    reference = _reference(prompt, "wrong_number")
    matches = list(_NUMBER.finditer(reference))
    if not matches:
        raise ValueError(f"program 'wrong_number': reference {reference!r} has no number to change")
    last = matches[-1]
    offset = int(rng.integers(1, max_offset + 1)) * (1 if rng.random() < 0.5 else -1)
    return f"{reference[:last.start()]}{int(last.group()) + offset}{reference[last.end():]}"


# ------------------------------------------------------------------------------------------------
# Judges
# ------------------------------------------------------------------------------------------------


@judge_program
def contains(prompt: Prompt, response: str, text: str, case_sensitive: bool = False) -> bool:
    return text in response if case_sensitive else text.lower() in response.lower()


@judge_program
def contains_any(prompt: Prompt, response: str, texts: list, case_sensitive: bool = False) -> bool:
    return any(contains(prompt, response, t, case_sensitive) for t in texts)


@judge_program
@_uses_reference
def differs_from_reference(prompt: Prompt, response: str) -> bool:
    """For sandbaggers: the answer is not the correct one."""
    return response.strip() != _reference(prompt, "differs_from_reference").strip()
