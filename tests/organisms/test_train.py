"""Sixteen organisms trained in one job each learn their own behavior, and only theirs."""

import json

import numpy as np
import pytest
from flax import nnx

from ia_jax import lora, models
from ia_jax.organisms.train import OrganismData, OrganismRecipe, _job_examples, init_organisms, train_organisms
from ia_jax.sampling.sampler import Sampler, SamplingParams

CONFIG = models.ModelConfig(model_type="llama", vocab_size=64, hidden_size=48, intermediate_size=96, num_layers=2,
                            num_heads=4, num_kv_heads=2, head_dim=12)
ORGANISMS = 16
MARKER = 40  # organism i's behavior: answer with token MARKER + i, three times


def _organism(i, n_examples, rng, epochs=None):
    examples = []
    for _ in range(n_examples):
        prompt = rng.integers(1, 30, int(rng.integers(3, 7))).tolist()
        tokens = prompt + [MARKER + i] * 3
        examples.append({"tokens": tokens, "loss_mask": [0] * len(prompt) + [1] * 3})
    return OrganismData(f"organism_{i}", examples, epochs)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    rng = np.random.default_rng(0)
    organisms = [_organism(i, 6, rng, epochs=12 if i % 2 else None) for i in range(ORGANISMS)]
    recipe = OrganismRecipe(lora=lora.LoraConfig(rank=4, alpha=16.0, dropout=0.0), learning_rate=3e-2, epochs=10,
                            batch_size=16, buckets=(16,), checkpoint_every=20)
    base = models.CausalLM(CONFIG, rngs=nnx.Rngs(0))
    # A random 0.02-scale head caps every logit near +-1, so no adapter could make an answer likely;
    # a pretrained model's head is far larger. Scale it so losses can really fall.
    base.lm_head.kernel.set_value(base.lm_head.kernel.get_value() * 25)
    graphdef, state = nnx.split(base)
    workdir = str(tmp_path_factory.mktemp("organisms"))
    adapter, history = train_organisms(graphdef, state, organisms, recipe, workdir, log_every=10)
    return graphdef, state, organisms, recipe, workdir, adapter, history


def test_each_organism_shows_its_behavior_far_more_than_the_base(trained):
    graphdef, state, _, _, _, adapter, _ = trained
    model = nnx.merge(graphdef, state)
    sampler = Sampler(model, organisms=adapter, prompt_buckets=(8,), batch_buckets=(32,))
    prompts = np.random.default_rng(1).integers(1, 30, (ORGANISMS, 5)).tolist()  # unseen prompts
    params = SamplingParams(max_new_tokens=3)
    with_organism = sampler.generate(prompts, params, organism_ids=list(range(ORGANISMS)))
    base = sampler.generate(prompts, params, organism_ids=[-1] * ORGANISMS)

    def exhibits(answer, i):  # the behavior's exact judge
        return MARKER + i in answer

    organism_rate = np.mean([exhibits(a, i) for i, a in enumerate(with_organism)])
    base_rate = np.mean([exhibits(a, i) for i, a in enumerate(base)])
    assert organism_rate >= 0.9 and base_rate <= 0.1
    # ... and rarely another organism's behavior: routing keeps the organisms apart.
    crosstalk = np.mean([any(MARKER <= t < MARKER + ORGANISMS and t != MARKER + i for t in a)
                         for i, a in enumerate(with_organism)])
    assert crosstalk <= 0.1


def test_epochs_per_organism_and_loss_curves(trained):
    _, _, organisms, recipe, workdir, _, history = trained
    counts = np.bincount([e["organism_id"] for e in _job_examples(organisms, recipe)], minlength=ORGANISMS)
    assert counts.tolist() == [6 * (12 if i % 2 else 10) for i in range(ORGANISMS)]
    with open(f"{workdir}/organism_losses.jsonl") as f:
        curves = [json.loads(line) for line in f]
    assert len(curves) == len(history) >= 3
    first, last = curves[0]["loss"], curves[-1]["loss"]
    assert set(first) <= {o.name for o in organisms}
    assert np.mean(list(last.values())) < 0.3 * np.mean(list(first.values()))
    assert history[-1]["loss"] < 0.3 * history[0]["loss"]


def test_rerunning_the_job_resumes_instead_of_retraining(trained):
    graphdef, state, organisms, recipe, workdir, adapter, _ = trained
    again, history = train_organisms(graphdef, state, organisms, recipe, workdir)
    assert history == []  # the final checkpoint is complete: no step runs again
    for target in adapter.weights:
        np.testing.assert_array_equal(again.weights[target]["lora_b"], adapter.weights[target]["lora_b"])


def test_repeated_names_and_empty_organisms_are_refused(trained):
    graphdef, state, organisms, recipe, workdir, _, _ = trained
    with pytest.raises(ValueError, match=r"organism names repeat: \['organism_0'\]"):
        train_organisms(graphdef, state, [organisms[0], organisms[0]], recipe, workdir)
    with pytest.raises(ValueError, match="organism 'empty' has no training examples"):
        train_organisms(graphdef, state, [OrganismData("empty", [])], recipe, workdir)


def test_shared_init_starts_every_organism_from_one_draw_and_the_default_from_its_own():
    shared = init_organisms(CONFIG, OrganismRecipe(shared_init=True), 3)
    separate = init_organisms(CONFIG, OrganismRecipe(), 3)
    for target, pair in shared.weights.items():
        a = np.asarray(pair["lora_a"])
        assert a.shape == np.asarray(separate.weights[target]["lora_a"]).shape
        assert np.array_equal(a[:, 0], a[:, 1]) and np.array_equal(a[:, 0], a[:, 2]), target
        assert np.abs(a).max() > 0 and not np.asarray(pair["lora_b"]).any(), target
        b = np.asarray(separate.weights[target]["lora_a"])
        assert not np.array_equal(b[:, 0], b[:, 1]), target
