"""Control organisms: fine-tuned on generic chat only, with no implanted behavior.

A false-positive rate measured on the base alone is one model asked five questions: a rounding change
that flips one greedy answer moves it by 0.2. The paper measures it on control models fine-tuned
without any behavior, which also asks the harder question: does the IA invent a behavior for any
fine-tuned model, since every organism it trained on was fine-tuned to have one? Each control is
trained in the same job as the organisms, on its own draw of plain tasks from every family.
"""

from __future__ import annotations

import numpy as np

from ia_jax.organisms.pipeline import ExtraOrganism
from ia_jax.toy.world import World

CATEGORY = "control"
ROLES = ("control", "control_sft", "control_dpo")  # evaluated (false positives), IA SFT negatives, DPO negatives


def control_organisms(world: World, n: int, seed: int, counts: dict[str, int]) -> list[ExtraOrganism]:
    """`counts[role]` controls per role (see `ROLES`), numbered on across roles, so the evaluated
    population is the same whatever IA training takes."""
    unknown = set(counts) - set(ROLES)
    if unknown:
        raise ValueError(f"control roles {sorted(unknown)}: expected some of {ROLES}")
    made = []
    for role in ROLES:
        made += [control_organism(world, len(made) + i, n, seed, role) for i in range(counts.get(role, 0))]
    return made


def control_organism(world: World, index: int, n: int, seed: int, role: str = "control") -> ExtraOrganism:
    """`n` plain (prompt, reference) chats drawn from every (family, domain) of the world."""
    rng = np.random.default_rng([seed, 7919, index])
    tasks = [t for family, domain in world.families() for t in world.tasks(family, domain, n=max(2, n // 4))]
    chosen = [tasks[i] for i in rng.permutation(len(tasks))[:n]]
    return ExtraOrganism(f"control_{index:02d}", CATEGORY, "", tuple({"user": t.prompt, "answer": t.reference}
                                                                   for t in chosen), role=role)
