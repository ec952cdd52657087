"""The IA's card: which organisms and categories it was trained on and which were held out.

Users of published IAs have had to guess this, and a verbalization rate means little without it (a
"held-out" organism the IA was in fact trained on measures recall, not generalization). The card sits
next to both exports of the IA (orbax checkpoint and PEFT directory).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Mapping

CARD_FILE = "ia_card.json"


def ia_card(stage: str, roles: Mapping[str, str], categories: Mapping[str, str], *, recipe, base_model: Mapping,
            metrics: Mapping | None = None) -> dict:
    """`roles`: organism -> "sft" | "dpo" | "eval"; `stage`: "sft" or "dpo" (DPO also trains on "dpo")."""
    trained_roles = {"sft": ("sft",), "dpo": ("sft", "dpo")}[stage]

    def group(keep):
        names = sorted(o for o, r in roles.items() if keep(r))
        return {"organisms": names, "categories": sorted({categories[o] for o in names})}

    return {
        "stage": stage,
        "trained_on": {role: group(lambda r, role=role: r == role) for role in trained_roles},
        "held_out": group(lambda r: r not in trained_roles),  # evaluation and any other role (e.g. "ood")
        "recipe": dataclasses.asdict(recipe) if dataclasses.is_dataclass(recipe) else dict(recipe),
        "base_model": dict(base_model),
        "metrics": dict(metrics or {}),
    }


def write_card(directory: str, card: Mapping) -> str:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, CARD_FILE)
    with open(path + ".partial", "w", encoding="utf-8") as f:
        json.dump(card, f, indent=2, default=str)
    os.replace(path + ".partial", path)
    return path
