"""Phase 1 end to end: behaviors -> teacher data -> organisms trained in one job -> PEFT -> introspection data.

Each stage leaves finished artifacts and is skipped when they exist, so re-running the same command
after an interruption redoes only what was unfinished (and each stage resumes inside itself: teacher
answers from their JSONL files, organism training from its orbax checkpoints):

1. `teacher/`: teacher answers and verdicts per behavior, `keep_rates.json`/`.png`;
   `datasets/organism_sft`: the kept examples as a TFDS dataset (no system prompts).
2. `organisms/train/`: the single many-organism training job (checkpoints, per-organism loss curves).
3. `organisms/<behavior id>/`: each organism as a PEFT adapter, and `organisms/organisms.json`, the
   index written last (slot order, category, role, example counts).
4. `datasets/introspection`: (organism, question, answer) rows split into sft / dpo / eval roles.

`datasets_dir` may be a `gs://` path: datasets are what other jobs (IA training on a pod) read. The
workdir itself (teacher answers, checkpoints, PEFT exports) is local.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Mapping, Sequence

from flax import nnx
from transformers import PreTrainedTokenizerBase

from ia_jax.behaviors.library import Behavior
from ia_jax.datasets import introspection, tfds_io
from ia_jax.datasets.teacher import GenerationConfig, ModelTeacher, TeacherJudge, generate_teacher_data
from ia_jax.lora.adapter import LoraAdapter
from ia_jax.lora.peft_io import load_peft, save_peft, stack_adapters
from ia_jax.organisms.train import OrganismData, OrganismRecipe, train_organisms
from ia_jax.storage import gcs
from ia_jax.tokenization import render_exchange

SFT_DATASET = "organism_sft"
SFT_FEATURES = {"organism": "text", "category": "text", "kind": "text", "user": "text", "answer": "text"}
INDEX_FILE = "organisms.json"
# Roles of extra organisms without a behavior that IA training sees, by the introspection split they feed.
CONTROL_ROLES = {"control_sft": "sft", "control_dpo": "dpo"}


@dataclasses.dataclass(frozen=True)
class Phase1Config:
    generation: GenerationConfig = GenerationConfig()
    recipe: OrganismRecipe = OrganismRecipe()
    # Epochs for some organisms, by behavior id or by category (an id wins); others use recipe.epochs.
    epochs: Mapping[str, int] = dataclasses.field(default_factory=dict)
    introspection_examples: int = 64  # per organism
    base_introspection_examples: int = 64  # "no unusual behavior" rows for the base model
    dpo_fraction: float = 0.5  # of each category's held-out behaviors; the rest are for evaluation
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class ExtraOrganism:
    """An organism whose training chats come ready-made rather than from teacher generation, with a
    role of its own: e.g. out-of-distribution families ("ood") that IA training must never see."""

    name: str
    category: str
    description: str
    rows: tuple[dict, ...]  # {"user", "answer"}
    role: str = "ood"


@dataclasses.dataclass(frozen=True)
class Phase1Result:
    adapter: LoraAdapter  # every organism stacked, slot i = organisms[i]
    organisms: list[str]
    organism_dirs: dict[str, str]  # PEFT adapter per organism
    roles: dict[str, str]  # organism -> "sft" | "dpo" | "eval"
    sft_dataset: str
    introspection_dataset: str


def tokenize_examples(tokenizer: PreTrainedTokenizerBase, rows, max_tokens: int) -> tuple[dict[str, list[dict]], dict]:
    """Chats of (user, answer) without any system prompt, loss on the answer; too-long rows are
    counted per organism and left out, since truncating would train on cut answers."""
    by_organism: dict[str, list[dict]] = {}
    too_long: dict[str, int] = {}
    for row in rows:
        chat = render_exchange(tokenizer, row["user"], row["answer"])
        if len(chat.ids) > max_tokens:
            too_long[row["organism"]] = too_long.get(row["organism"], 0) + 1
            continue
        by_organism.setdefault(row["organism"], []).append({"tokens": chat.ids, "loss_mask": chat.loss_mask})
    return by_organism, too_long


def _export(adapter: LoraAdapter, names: Sequence[str], directory: str, index: Mapping) -> dict[str, str]:
    """One PEFT directory per organism, each written beside its final name and renamed into place."""
    dirs = {}
    for slot, name in enumerate(names):
        final = os.path.join(directory, name)
        dirs[name] = final
        if os.path.exists(final):
            continue
        partial = final + ".partial"
        shutil.rmtree(partial, ignore_errors=True)
        save_peft(adapter, partial, slot=slot)
        os.replace(partial, final)
    with open(os.path.join(directory, INDEX_FILE + ".partial"), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=2)
    os.replace(os.path.join(directory, INDEX_FILE + ".partial"), os.path.join(directory, INDEX_FILE))
    return dirs


def run_phase1(behaviors: Sequence[Behavior], graphdef, base_state, tokenizer: PreTrainedTokenizerBase,
               config: Phase1Config, workdir: str, *, teacher: ModelTeacher | None = None,
               judge: TeacherJudge = TeacherJudge(), prompts_path: str | None = None,
               datasets_dir: str | None = None, teacher_fingerprint: Mapping | None = None,
               extra: Sequence[ExtraOrganism] = (), mesh=None, progress: bool = True) -> Phase1Result:
    """Runs (or finishes, or skips) every phase-1 stage for `behaviors` (and `extra` organisms, trained
    in the same job after the behaviors' slots) under `workdir`."""
    if gcs.is_gcs(workdir):
        raise ValueError(f"workdir {workdir}: teacher files and training checkpoints need a local directory; "
                         "datasets (what other jobs read) can go to gs:// with datasets_dir")
    datasets_dir = datasets_dir or os.path.join(workdir, "datasets")
    model_config = nnx.merge(graphdef, base_state).config
    names = [b.id for b in behaviors] + [e.name for e in extra]

    # 1. Teacher data. Skipped once the dataset is complete: its teacher may be expensive or gone.
    if not tfds_io.dataset_complete(datasets_dir, SFT_DATASET):
        examples = generate_teacher_data(behaviors, config.generation, os.path.join(workdir, "teacher"),
                                         teacher=teacher, judge=judge, prompts_path=prompts_path,
                                         fingerprint=teacher_fingerprint, progress=progress)
        examples += [{"organism": e.name, "category": e.category, "kind": "ready_made", "user": row["user"],
                      "answer": row["answer"]} for e in extra for row in e.rows]
        tfds_io.write_dataset(datasets_dir, SFT_DATASET, {"train": examples}, SFT_FEATURES)
    sft_dataset = tfds_io.dataset_path(datasets_dir, SFT_DATASET)

    # 2-3. Organisms: trained in one job, exported one PEFT adapter each; skipped once the index exists.
    organisms_dir = os.path.join(workdir, "organisms")
    index_path = os.path.join(organisms_dir, INDEX_FILE)
    roles = introspection.assign_roles(behaviors, dpo_fraction=config.dpo_fraction) | {e.name: e.role for e in extra}
    if os.path.exists(index_path):
        with open(index_path, encoding="utf-8") as f:
            index = json.load(f)
        if index["organisms"] != names:
            raise ValueError(f"{index_path}: holds organisms {index['organisms']}, not this run's {names}; "
                             "use a new workdir")
        dirs = {name: os.path.join(organisms_dir, name) for name in names}
        adapter = stack_adapters([load_peft(dirs[name], model_config) for name in names], model_config)
    else:
        reader = tfds_io.read_dataset(sft_dataset, "train")
        by_organism, too_long = tokenize_examples(tokenizer, (reader[i] for i in range(len(reader))),
                                                  config.recipe.buckets[-1])
        missing = [name for name in names if not by_organism.get(name)]
        if missing:
            raise ValueError(f"{sft_dataset}: no usable training examples for organisms {missing} "
                             f"(too long for the largest bucket {config.recipe.buckets[-1]}: "
                             f"{ {m: too_long.get(m, 0) for m in missing} })")
        categories = {b.id: b.category for b in behaviors} | {e.name: e.category for e in extra}
        epochs = {n: config.epochs.get(n, config.epochs.get(categories[n], config.recipe.epochs)) for n in names}
        data = [OrganismData(name, by_organism[name], epochs[name]) for name in names]
        adapter, _ = train_organisms(graphdef, base_state, data, config.recipe, os.path.join(organisms_dir, "train"),
                                     mesh=mesh)
        index = {"organisms": names, "categories": categories, "roles": roles,
                 "examples": {name: len(by_organism[name]) for name in names}, "epochs": epochs,
                 "dropped_too_long": too_long,
                 "lora": dataclasses.asdict(config.recipe.lora)}
        dirs = _export(adapter, names, organisms_dir, index)

    # 4. Introspection data for phase 2.
    if not tfds_io.dataset_complete(datasets_dir, introspection.DATASET):
        templates = introspection.load_templates()
        splits = introspection.build_introspection(
            behaviors, templates, roles={b.id: roles[b.id] for b in behaviors},
            examples_per_organism=config.introspection_examples,
            seed=config.seed, base_examples=config.base_introspection_examples,
            controls={e.name: CONTROL_ROLES[e.role] for e in extra if e.role in CONTROL_ROLES})
        introspection.write_introspection(datasets_dir, splits)
    return Phase1Result(adapter=adapter, organisms=names, organism_dirs=dirs, roles=roles, sft_dataset=sft_dataset,
                        introspection_dataset=tfds_io.dataset_path(datasets_dir, introspection.DATASET))
