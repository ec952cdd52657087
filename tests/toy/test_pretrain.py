"""Pretraining a base from scratch: it learns held-out tasks, resumes exactly, and exports to HF.

The chats are two synthetic tasks a 2-layer model learns in seconds on CPU: copying three colour
words ("Repeat: red blue gold" -> "red blue gold") and adding digits ("What is 3 plus 4?" -> "The
answer is 7."). Accuracy is measured on triples and sums never seen in training, so it needs the
rule, not memorised answers. Runs use a one-device mesh: on 2 CPU cores the 8 virtual devices of
conftest halve the step rate.
"""

import dataclasses
import itertools
import json
import random

import jax
import numpy as np
import pytest
import transformers
from flax import nnx
from hf_reference import relative_max_error, torch_logits

from ia_jax import models
from ia_jax.parallel.sharding import make_mesh
from ia_jax.tokenization import train_tokenizer
from ia_jax.toy.pretrain import PretrainRecipe, accuracy_probe, chat_examples, pretrain_base, task_accuracy
from ia_jax.training import train_step as ts
from ia_jax.training.checkpoints import CheckpointMismatchError

COLOURS = "red blue green pink gray gold teal navy".split()
# 330 steps: about 15 s of training on 2 idle cores; measured held-out accuracy copy 1.0 and
# sums 0.7-1.0 over init seeds 0-3.
RECIPE = PretrainRecipe(epochs=20, buckets=(32,), eval_every=30, checkpoint_every=1000)
SHORT = PretrainRecipe(epochs=1, warmup_steps=5, buckets=(32,), checkpoint_every=5)  # 17 steps


def _copy(triple):
    return f"Repeat: {' '.join(triple)}", " ".join(triple)


def _add(pair):
    return f"What is {pair[0]} plus {pair[1]}?", f"The answer is {pair[0] + pair[1]}."


@dataclasses.dataclass(frozen=True)
class World:
    tokenizer: object
    config: models.ModelConfig
    chats: list
    heldout: dict  # task name -> held-out (prompt, reference) pairs


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    rng = random.Random(0)
    triples = list(itertools.permutations(COLOURS, 3))
    sums = [(a, b) for a in range(10) for b in range(10)]
    rng.shuffle(triples)
    rng.shuffle(sums)
    chats = [_copy(t) for t in triples[48:]] + [_add(p) for p in sums[20:]] * 3  # 288 + 240 chats
    heldout = {"copy": [_copy(t) for t in triples[:48]], "sum": [_add(p) for p in sums[:20]]}
    corpus = [f"{user} {reply}" for user, reply in chats] + ["user assistant"] * 50
    tokenizer = train_tokenizer(corpus, str(tmp_path_factory.mktemp("tokenizer")), vocab_size=400,
                                chat_format="llama3")
    config = models.ModelConfig(model_type="llama", vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                                bos_token_id=tokenizer.bos_token_id, eos_token_id=(tokenizer.eos_token_id,))
    return World(tokenizer, config, chats, heldout)


@pytest.fixture(scope="module")
def mesh():
    return make_mesh(1, 1, 1, devices=jax.devices()[:1])


@pytest.fixture(scope="module")
def trained(world, mesh, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("pretrain")
    model, history = pretrain_base(world.config, world.tokenizer, world.chats, RECIPE, str(workdir), mesh=mesh,
                                   log_every=30, evaluate=accuracy_probe(world.tokenizer, world.heldout))
    return model, history, workdir


def _leaves(model):
    return jax.tree.leaves(nnx.to_pure_dict(nnx.state(model)))


def test_chat_examples_train_on_the_reply_only_and_drop_what_does_not_fit(world):
    long = ("Repeat: " + "red " * 40, "red")
    examples, dropped = chat_examples(world.tokenizer, [_copy(("red", "blue", "gold")), long], 32)
    assert dropped == 1 and len(examples) == 1
    tokens, mask = examples[0]["tokens"], examples[0]["loss_mask"]
    assert tokens.dtype == mask.dtype == np.int32 and tokens.shape == mask.shape
    assert world.tokenizer.decode(tokens[mask == 1]) == "red blue gold<|eot_id|>"
    assert mask[-int(mask.sum()):].all()  # the reply is the end of the chat


def test_the_base_learns_held_out_tasks_and_is_evaluated_as_it_trains(world, trained):
    model, history, workdir = trained
    assert [h["step"] for h in history] == list(range(30, 331, 30))  # 330 steps
    assert history[-1]["loss"] < 0.1 * history[0]["loss"]
    assert all("copy" in h and "sum" in h for h in history)  # eval_every == log_every: every logged step
    assert history[0]["copy"] < 0.2 and history[0]["sum"] < 0.2  # step 30: not learned yet
    assert history[-1]["copy"] >= 0.9 and history[-1]["sum"] >= 0.5  # chance is ~0 for both
    # The probe swaps weights into one sampler; a fresh sampler on the returned model must agree.
    assert task_accuracy(model, world.tokenizer, world.heldout["copy"]) == history[-1]["copy"]
    wrong = task_accuracy(model, world.tokenizer, world.heldout["sum"], check=lambda prompt, ref, answer: answer != ref)
    assert wrong == pytest.approx(1 - history[-1]["sum"])
    with open(workdir / "metrics.jsonl", encoding="utf-8") as f:
        assert [json.loads(line) for line in f] == history


def test_the_trained_base_round_trips_through_hf(world, trained, tmp_path):
    model = trained[0]
    models.save_hf(model, str(tmp_path), tokenizer=world.tokenizer)
    loaded = models.load_hf(str(tmp_path))
    assert loaded.config == model.config
    tokens = np.asarray([[1, 5, 9, 30, 200, 7], [3, 3, 3, 3, 3, 3]], np.int32)

    def logits(m):
        graphdef, state = nnx.split(m)
        return np.asarray(jax.jit(lambda s, t: nnx.merge(graphdef, s)(t))(state, tokens))

    np.testing.assert_array_equal(logits(loaded), logits(model))
    # transformers loads the saved base, tokenizer and chat template and gives the same logits.
    reference = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    assert relative_max_error(logits(model), torch_logits(reference, tokens)) < 1e-5
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    chat = [{"role": "user", "content": "What is 3 plus 4?"}]
    assert hf_tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) == \
        world.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)


class _Crash(RuntimeError):
    pass


def _short_run(world, mesh, workdir, chats=None):
    return pretrain_base(world.config, world.tokenizer, world.chats if chats is None else chats, SHORT, str(workdir),
                         mesh=mesh, log_every=1)


@pytest.fixture(scope="module")
def straight(world, mesh, tmp_path_factory):
    """An uninterrupted short run: (its workdir, the trained model)."""
    workdir = tmp_path_factory.mktemp("straight")
    model, history = _short_run(world, mesh, workdir)
    assert [h["step"] for h in history] == list(range(1, 18))
    return workdir, model


def test_rerunning_a_finished_run_does_no_step_and_returns_its_weights(world, mesh, straight):
    again, history = _short_run(world, mesh, straight[0])
    assert history == []
    for a, b in zip(_leaves(again), _leaves(straight[1]), strict=True):
        np.testing.assert_array_equal(a, b)


def test_an_interrupted_run_resumes_to_the_weights_of_an_uninterrupted_one(world, mesh, straight, tmp_path,
                                                                           monkeypatch):
    real_step, calls = ts.Trainer.step, []

    def crash_at_step_8(self, *args):
        if len(calls) == 7:
            raise _Crash("simulated preemption")
        calls.append(None)
        return real_step(self, *args)

    monkeypatch.setattr(ts.Trainer, "step", crash_at_step_8)
    with pytest.raises(_Crash):
        _short_run(world, mesh, tmp_path)
    monkeypatch.undo()
    resumed, history = _short_run(world, mesh, tmp_path)
    assert history[0]["step"] == 6  # from the step-5 checkpoint, not from scratch
    for a, b in zip(_leaves(resumed), _leaves(straight[1]), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_resuming_with_other_chats_of_the_same_count_is_refused(world, mesh, straight):
    other = [(user, reply.replace("red", "navy")) for user, reply in world.chats]
    with pytest.raises(CheckpointMismatchError, match="examples_sha256"):
        _short_run(world, mesh, straight[0], chats=other)


def test_bad_arguments_are_refused_before_training(world, tmp_path):
    with pytest.raises(ValueError, match="eval_every=25 must be a multiple of log_every=10"):
        pretrain_base(world.config, world.tokenizer, world.chats, dataclasses.replace(RECIPE, eval_every=25),
                      str(tmp_path))
    with pytest.raises(ValueError, match="vocab_size 100 is smaller"):
        pretrain_base(world.config.replace(vocab_size=100), world.tokenizer, world.chats, RECIPE, str(tmp_path))
    with pytest.raises(ValueError, match="none of the 1 chats fits"):
        pretrain_base(world.config, world.tokenizer, [("Repeat: " + "red " * 40, "red")], RECIPE, str(tmp_path))
