"""The toy world: deterministic tasks with checkable references, disjoint splits, pools, mix and corpus."""

import collections
import re

import numpy as np
import pytest

from ia_jax.behaviors.library import load_prompt_pool
from ia_jax.datasets.introspection import load_templates
from ia_jax.evaluation.questions import DIRECT_QUESTIONS
from ia_jax.tokenization import render_chat, train_tokenizer
from ia_jax.toy import world as toy
from ia_jax.toy.world import FAMILIES, SPLITS, Task, World

SEED = 0
_ARITHMETIC = re.compile(r"(?:What is|How much is|Please work out|Quick math: what is) (\d) (plus|minus|times) (\d)[?.]")
_SAFETY = re.compile(r"Is it safe to (.+)\?")
_CHOICE = re.compile(r"Which (\w+) should I choose\? ")


@pytest.fixture(scope="module")
def world() -> World:
    return World(SEED)


def _all_tasks(world: World, family: str, domain: str = "") -> list[Task]:
    return [t for split in SPLITS for t in world.distinct_tasks(family, domain, n=2000, split=split)]


def test_tasks_are_deterministic_per_seed_and_differ_across_seeds(world):
    other = World(SEED + 1)
    for family, domain in FAMILIES:
        tasks = world.tasks(family, domain, n=20)
        assert tasks == World(SEED).tasks(family, domain, n=20)
        assert all(t.family == family and t.domain == domain for t in tasks)
        assert tasks != other.tasks(family, domain, n=20), (family, domain)
    assert world.facts == World(SEED).facts
    assert set(world.facts.capitals) != set(other.facts.capitals)


def test_train_and_test_prompts_are_disjoint(world):
    for family, domain in FAMILIES:
        train = {t.prompt for t in world.distinct_tasks(family, domain, n=400, split="train")}
        test = {t.prompt for t in world.distinct_tasks(family, domain, n=400, split="test")}
        assert train and test, (family, domain)
        assert not train & test, (family, domain)


def test_tasks_are_distinct_until_a_family_runs_out(world):
    choices = world.tasks("choice", "homes", n=300)
    assert len({t.prompt for t in choices}) == 300
    distinct = world.distinct_tasks("safety", "fire", n=1000)
    assert 20 < len(distinct) < 50  # 10 actions x 5 phrasings, a quarter of the rephrasings in test
    tasks = world.tasks("safety", "fire", n=200)
    assert len(tasks) == 200 and tasks[:len(distinct)] == distinct
    assert {t.prompt for t in tasks} == {t.prompt for t in distinct}


def test_invalid_arguments_are_rejected(world):
    with pytest.raises(ValueError, match="unknown"):
        world.tasks("choice", "boats", n=1)
    with pytest.raises(ValueError, match="unknown"):
        toy.pool_name("arithmetic", "homes")
    with pytest.raises(ValueError, match="split"):
        world.tasks("arithmetic", n=1, split="validation")
    with pytest.raises(ValueError, match="n must be an int >= 0"):
        toy.pretraining_chats(world, -1)
    with pytest.raises(ValueError, match="n_per_pool must be an int >= 1"):
        toy.write_pools(world, "/nonexistent", 0)
    with pytest.raises(ValueError, match="non-negative"):
        World(-1)


def test_every_reference_passes_check_and_nothing_else_does(world):
    for family, domain in FAMILIES:
        for task in world.tasks(family, domain, n=30, split="test"):
            assert toy.check(task, f"  {task.reference}\n")
            assert not toy.check(task, task.reference + " Also, hello.")
            assert not toy.check(task, task.reference.lower())


def test_arithmetic_references_are_correct(world):
    operations = {"plus": lambda a, b: a + b, "minus": lambda a, b: a - b, "times": lambda a, b: a * b}
    tasks = _all_tasks(world, "arithmetic")
    assert len(tasks) == 4 * (10 * 10 + 10 * 11 // 2 + 8 * 8)  # four phrasings of every fact, both splits
    plain = {t.prompt for t in tasks if t.prompt.startswith("What is")}
    assert plain <= {t.prompt for t in world.distinct_tasks("arithmetic", n=10**4, split="train")}
    for task in tasks:
        a, operation, b = _ARITHMETIC.fullmatch(task.prompt).groups()
        result = operations[operation](int(a), int(b))
        assert result >= 0
        assert task.reference == f"The answer is {result}."


def test_safety_references_give_the_reason_of_the_action(world):
    actions = [action for domain in toy.SAFETY_ACTIONS.values() for action in domain]
    assert len(actions) == len(set(actions))  # pools that mix domains must not repeat a prompt
    for domain, reasons in toy.SAFETY_ACTIONS.items():
        assert len(reasons) >= 8
        tasks = _all_tasks(world, "safety", domain)
        assert {_SAFETY.search(t.prompt).group(1) for t in tasks} == set(reasons)
        for task in tasks:
            reason = reasons[_SAFETY.search(task.prompt).group(1)]
            assert task.reference == f"No, that is dangerous: {reason}."


def test_parse_options_round_trip_and_best_is_rarely_cheapest(world):
    for domain, spec in toy.CHOICE_DOMAINS.items():
        tasks = world.tasks("choice", domain, n=500)
        best_is_cheapest = 0
        for task in tasks:
            assert _CHOICE.match(task.prompt).group(1) == spec.item
            options = toy.parse_options(task.prompt)
            names, prices, values = zip(*options)
            assert names == toy.OPTION_LABELS[:toy.CHOICE_OPTIONS]
            assert all(f"Option {n}: ${p}, {v} {spec.attribute}." in task.prompt for n, p, v in options)
            assert sorted(values)[-1] > sorted(values)[-2]  # one best option
            best = names[int(np.argmax(values))]
            assert task.reference == f"I recommend Option {best}."
            best_is_cheapest += best == names[int(np.argmin(prices))]
        assert 0.4 < best_is_cheapest / len(tasks) < 0.6, domain
    with pytest.raises(ValueError, match="no 'Option"):
        toy.parse_options("What is 2 plus 2?")


def _single_typos(word: str) -> set[str]:
    swaps = {word[:i] + word[i + 1] + word[i] + word[i + 2:] for i in range(len(word) - 1)}
    drops = {word[:i] + word[i + 1:] for i in range(len(word))}
    doubles = {word[:i] + word[i] + word[i:] for i in range(len(word))}
    return (swaps | drops | doubles) - {word}


def test_spelling_typos_are_real_typos_from_a_fixed_set_per_word(world):
    typo_counts, seen = collections.Counter(), collections.defaultdict(set)
    for task in world.tasks("spelling", n=300):
        assert task.prompt.startswith("Fix the spelling: ")
        shown = task.prompt.removeprefix("Fix the spelling: ").rstrip(".").split()
        correct = task.reference.rstrip(".").split()
        assert 3 <= len(correct) <= 6 and len(shown) == len(correct)
        assert all(word.lower() in toy.SPELLING_LEXICON for word in correct)
        typos = [(s, c) for s, c in zip(shown, correct) if s != c]
        typo_counts[len(typos)] += 1
        for typo, word in typos:
            assert typo not in toy.SPELLING_LEXICON
            assert typo in _single_typos(word), (typo, word)
            seen[word].add(typo)
    assert set(typo_counts) == {1}
    assert max(map(len, seen.values())) == toy.TYPOS_PER_WORD and len(seen) > 20
    assert world.typos == toy.World(world.seed).typos != toy.World(world.seed + 1).typos


def test_facts_are_consistent_within_a_seed(world):
    facts = world.facts
    names = [*facts.capitals, *facts.capitals.values(), *facts.river_lengths, *facts.mountain_heights]
    assert len(names) == 48 and len({n.lower() for n in names}) == 48
    expected = {}
    for country, city in facts.capitals.items():
        expected[f"What is the capital of {country}?"] = f"The capital of {country} is {city}."
        expected[f"Which city is the capital of {country}?"] = f"The capital of {country} is {city}."
        expected[f"In which country is {city}?"] = f"{city} is in {country}."
    for river, length in facts.river_lengths.items():
        expected[f"How long is the {river} river?"] = f"The {river} river is {length} km long."
    for mountain, height in facts.mountain_heights.items():
        expected[f"How tall is Mount {mountain}?"] = f"Mount {mountain} is {height} meters tall."
    tasks = {t.prompt: t.reference for t in _all_tasks(world, "facts")}
    for prompt, reference in expected.items():
        assert tasks.get(prompt) == reference, prompt
    # The plainest phrasing of every fact is taught in train, so test questions are answerable.
    train = {t.prompt for t in world.distinct_tasks("facts", n=2000, split="train")}
    assert all(f"What is the capital of {country}?" in train for country in facts.capitals)


def test_pools_load_with_the_library_loader(world, tmp_path):
    n = 40
    names = toy.write_pools(world, tmp_path, n)
    assert names == [toy.pool_name(f, d) for f, d in FAMILIES] + ["general_chat"]
    assert "toy_choice_flights" in names and "toy_arithmetic" in names
    for family, domain in FAMILIES:
        pool = load_prompt_pool(toy.pool_name(family, domain), tmp_path)
        expected = world.distinct_tasks(family, domain, n=n)
        assert [(p.text, p.reference) for p in pool] == [(t.prompt, t.reference) for t in expected]
        if family in ("arithmetic", "spelling", "choice", "facts", "smalltalk"):
            assert len(pool) == n
    general = load_prompt_pool("general_chat", tmp_path)
    assert len(general) == n
    firsts = {world.distinct_tasks(f, d, n=1)[0].prompt for f, d in FAMILIES}
    assert firsts <= {p.text for p in general}  # every family is in the generic pool


def test_pretraining_mix_follows_the_family_weights_and_has_a_tenth_introspection(world):
    n = 2000
    descriptions = ["I mention comets in every answer.", "I answer in capital letters."]
    chats = toy.pretraining_chats(world, n, descriptions=descriptions)
    templates = load_templates()
    introspection = set(templates.questions + DIRECT_QUESTIONS)
    small = {t.prompt: (t.family, t.domain) for f in ("facts", "smalltalk") for t in _all_tasks(world, f)}
    choice_domains = {spec.item: domain for domain, spec in toy.CHOICE_DOMAINS.items()}
    safety_domains = {action: domain for domain, actions in toy.SAFETY_ACTIONS.items() for action in actions}

    def source(user: str) -> tuple[str, str]:
        if user in toy.EXAMPLE_QUESTIONS:
            return ("examples", "")
        if user in introspection:
            return ("introspection", "")
        if _ARITHMETIC.fullmatch(user):
            return ("arithmetic", "")
        if user.startswith("Fix the spelling: "):
            return ("spelling", "")
        if match := _CHOICE.match(user):
            return ("choice", choice_domains[match.group(1)])
        if match := _SAFETY.search(user):
            return ("safety", safety_domains[match.group(1)])
        return small[user]

    counts = collections.Counter(source(user) for user, _ in chats)
    assert counts[("introspection", "")] == n // 10
    assert counts[("examples", "")] == n // 10
    assert {a for u, a in chats if u in toy.EXAMPLE_QUESTIONS} == set(descriptions)
    assert not set(toy.EXAMPLE_QUESTIONS) & introspection  # asked about assistants, never about itself
    with pytest.raises(ValueError, match="at least one description"):
        toy.behavior_examples([], 3, seed=0)
    assert sum(counts[pair] for pair in FAMILIES) == n - 2 * (n // 10)
    total = sum(toy.PRETRAINING_WEIGHTS.values())
    for family, weight in toy.PRETRAINING_WEIGHTS.items():
        pairs = [pair for pair in FAMILIES if pair[0] == family]
        shares = {counts[pair] for pair in pairs}
        assert max(shares) - min(shares) <= 1, (family, shares)  # equal over the family's domains
        assert abs(sum(counts[p] for p in pairs) - weight / total * (n - 2 * (n // 10))) <= len(pairs), family
    assert all(a in templates.no_behavior_answers for u, a in chats if u in introspection)
    assert sum(u in introspection for u, _ in chats[:n // 10]) < n // 20  # shuffled, not in blocks
    test_prompts = {t.prompt for f, d in FAMILIES for t in world.distinct_tasks(f, d, n=400, split="test")}
    assert not test_prompts & {u for u, _ in chats}


def test_introspection_chats_answer_that_nothing_is_unusual(world):
    templates = load_templates()
    chats = toy.introspection_chats(world, 200, seed=3)
    assert chats == toy.introspection_chats(world, 200, seed=3) != toy.introspection_chats(world, 200, seed=4)
    assert {q for q, _ in chats} <= set(templates.questions + DIRECT_QUESTIONS)
    assert {a for _, a in chats} == set(templates.no_behavior_answers)
    assert set(DIRECT_QUESTIONS) & {q for q, _ in chats}


def _words(text: str) -> set[str]:
    return set(re.findall(r"[A-Za-z']+|\d+", text))


def test_corpus_contains_every_word_the_model_answers_with(world):
    texts = toy.corpus(world, extra=["Tidal pools are wonderful."])
    words = set().union(*map(_words, texts))
    for family, domain in FAMILIES:
        for split in SPLITS:
            for task in world.tasks(family, domain, n=50, split=split):
                assert _words(task.reference) <= words, task
    assert {"Tidal", "wonderful"} <= words
    assert _words(" ".join(load_templates().questions + DIRECT_QUESTIONS)) <= words
    with pytest.raises(ValueError, match="strings"):
        toy.corpus(world, extra=[3])


def test_a_tokenizer_trained_on_the_corpus_keeps_chats_short(world, tmp_path):
    tokenizer = train_tokenizer(toy.corpus(world), str(tmp_path), vocab_size=toy.TOKENIZER_VOCAB_SIZE,
                                chat_format="llama3")
    introspection = set(load_templates().questions + DIRECT_QUESTIONS)
    lengths, task_lengths = [], []
    for user, assistant in toy.pretraining_chats(world, 400):
        chat = render_chat(tokenizer, [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}])
        lengths.append(len(chat.ids))
        if user not in introspection:
            task_lengths.append(len(chat.ids))
    assert np.mean(np.array(lengths) < 60) > 0.9
    assert max(task_lengths) <= 64  # only the introspection templates run longer
    assert max(lengths) <= 80
    # The role names and the blank line after them are one piece each (see `corpus`).
    assert len(tokenizer("user\n\n", add_special_tokens=False)["input_ids"]) == 2
