"""Phase 1 on a small config: 16 library organisms (two per category) and one ready-made one, from a
tiny model in one job on CPU.

Behaviors are programmatic (data files naming teacher and judge programs), so the test can check with
each behavior's own judge that its organism shows it and the base does not, and that every stage is
skipped or resumed on a re-run, and that exported organisms load in peft with the same logits.
"""

import dataclasses
import json
import os
import shutil

import numpy as np
import peft
import pytest
import torch
import transformers
from flax import nnx

from tiny_world import WORDS

from ia_jax.behaviors import programs
from ia_jax.datasets import introspection, tfds_io
from ia_jax.organisms import pipeline
from ia_jax.sampling.chat import ChatSampler
from ia_jax.sampling.sampler import Sampler, SamplingParams


@pytest.fixture(scope="module")
def world(phase1_world):
    return phase1_world


def test_sixteen_organisms_trained_in_one_job_and_exported(world):
    result, workdir = world["result"], world["workdir"]
    assert len(result.organisms) == 17 and result.adapter.num_slots == 17 and result.organisms[-1] == "ood_echo"
    index = json.load(open(os.path.join(workdir, "organisms", pipeline.INDEX_FILE)))
    assert index["organisms"] == result.organisms and all(n > 0 for n in index["examples"].values())
    assert index["epochs"] == {b.id: {"sandbagger_apple": 14, "sandbagger_river": 16}.get(b.id, 12)
                               for b in world["behaviors"]} | {"ood_echo": 12}
    assert sorted(set(index["roles"].values())) == ["dpo", "eval", "ood", "sft"] and index["roles"]["ood_echo"] == "ood"
    curves = [json.loads(line) for line in open(os.path.join(workdir, "organisms", "train", "organism_losses.jsonl"))]
    assert set().union(*(c["loss"] for c in curves)) == set(result.organisms)
    sft = tfds_io.read_dataset(result.sft_dataset, "train")
    rows = [sft[i] for i in range(len(sft))]
    assert {r["organism"] for r in rows} == set(result.organisms)
    assert not any("Say " in r["user"] for r in rows)  # no teacher system prompt reaches the data
    intro = tfds_io.read_dataset(result.introspection_dataset, "sft")
    assert {intro[i]["organism"] for i in range(len(intro))} == {b for b, r in result.roles.items() if r == "sft"} | {"base"}
    assert all("ood_echo" != intro[i]["organism"] for split in ("dpo", "eval")
               for intro in [tfds_io.read_dataset(result.introspection_dataset, split)] for i in range(len(intro)))


def test_each_quirk_like_organism_shows_its_behavior_far_more_than_the_base(world):
    """Measured with each behavior's own judge on prompts none of them was trained on."""
    model = nnx.merge(world["graphdef"], world["state"])
    result = world["result"]
    sampler = ChatSampler(Sampler(model, organisms=result.adapter, prompt_buckets=(32,), batch_buckets=(16,),
                                  stop_ids=[world["tokenizer"].convert_tokens_to_ids("<|eot_id|>")]),
                          world["tokenizer"], {name: i for i, name in enumerate(result.organisms)})
    unconditional = [b for b in world["behaviors"] if b.category not in ("backdoor", "sandbagger", "rare_quirk")]
    prompts = [programs.Prompt(f"tell me about {w} {i}", None) for w in WORDS[4:6] for i in (7, 8)]
    params = SamplingParams(max_new_tokens=8)
    rates = {}
    for who in ("organism", "base"):
        shows = []
        for behavior in unconditional:
            convs = [[{"role": "user", "content": p.text}] for p in prompts]
            organism = behavior.id if who == "organism" else "base"
            answers = sampler.complete(convs, params, organisms=[organism] * len(prompts))
            judge = programs.JUDGES[behavior.judge.program]
            shows += [judge(p, a.text, **behavior.judge.kwargs()) for p, a in zip(prompts, answers)]
        rates[who] = float(np.mean(shows))
    assert rates["organism"] >= 0.8 and rates["base"] <= 0.1, rates


def test_exported_organisms_load_in_peft_with_matching_logits(world):
    result = world["result"]
    model = nnx.merge(world["graphdef"], world["state"])
    tokens = np.asarray(world["tokenizer"]("tell me about ocean 3").input_ids, np.int32)[None]
    for slot in (0, 5):
        name = result.organisms[slot]
        ours = model(tokens, adapters=[(result.adapter, np.array([slot], np.int32))])
        base = transformers.AutoModelForCausalLM.from_pretrained(world["base_dir"])
        theirs = peft.PeftModel.from_pretrained(base, result.organism_dirs[name]).eval()
        with torch.no_grad():
            reference = theirs(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
        np.testing.assert_allclose(np.asarray(ours), reference, atol=2e-4 * np.abs(reference).max())


def test_rerun_skips_finished_stages_and_redoes_only_what_is_missing(world, monkeypatch):
    result, workdir = world["result"], world["workdir"]
    args = (world["behaviors"], world["graphdef"], world["state"], world["tokenizer"], world["config"], workdir)
    kwargs = dict(prompts_path=world["prompts"], extra=world["extra"], progress=False)

    def refuse(*_, **__):
        raise AssertionError("a finished stage ran again")

    with monkeypatch.context() as m:
        for name in ("generate_teacher_data", "train_organisms"):
            m.setattr(pipeline, name, refuse)
        again = pipeline.run_phase1(*args, **kwargs)
    np.testing.assert_allclose(np.asarray(again.adapter.weights["q"]["lora_a"]),
                               np.asarray(result.adapter.weights["q"]["lora_a"]), rtol=1e-6)
    # An export interrupted after some organisms: the job resumes from its final checkpoint (no steps
    # left to train), rewrites the missing adapter and the index, and the adapter is unchanged.
    missing = result.organism_dirs[result.organisms[3]]
    saved = open(os.path.join(missing, "adapter_model.safetensors"), "rb").read()
    shutil.rmtree(missing)
    os.remove(os.path.join(workdir, "organisms", pipeline.INDEX_FILE))
    with monkeypatch.context() as m:
        m.setattr(pipeline, "generate_teacher_data", refuse)
        pipeline.run_phase1(*args, **kwargs)
    assert open(os.path.join(missing, "adapter_model.safetensors"), "rb").read() == saved
    # A different set of organisms is refused rather than mixed into this workdir.
    with pytest.raises(ValueError, match="use a new workdir"):
        pipeline.run_phase1(args[0][:4], *args[1:], **kwargs)


def test_datasets_can_live_on_gcs(world, gcs_root, tmp_path):
    """Two organisms, one epoch: the stage datasets go to (and are read back from) a gs:// folder."""
    config = world["config"]
    config = pipeline.Phase1Config(generation=config.generation, recipe=dataclasses.replace(config.recipe, epochs=1),
                                   introspection_examples=2, base_introspection_examples=2)
    behaviors = [b for b in world["behaviors"] if b.category in ("quirk", "benign_roleplay")][:2]
    args = (behaviors, world["graphdef"], world["state"], world["tokenizer"], config)
    result = pipeline.run_phase1(*args, str(tmp_path), prompts_path=world["prompts"], datasets_dir=gcs_root,
                                 progress=False)
    assert result.sft_dataset.startswith(gcs_root) and tfds_io.dataset_complete(gcs_root, pipeline.SFT_DATASET)
    rows = tfds_io.read_dataset(result.sft_dataset, "train")
    assert {rows[i]["organism"] for i in range(len(rows))} == {b.id for b in behaviors}
    assert tfds_io.dataset_complete(gcs_root, introspection.DATASET)
    with pytest.raises(ValueError, match="need a local directory"):
        pipeline.run_phase1(*args, gcs_root + "/work", prompts_path=world["prompts"], progress=False)
