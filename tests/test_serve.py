"""The OpenAI-compatible server, started for real on loopback, and the HTTP judge talking to it."""

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import jax
import numpy as np
import pytest
from flax import nnx

from ia_jax import lora, models, tokenization
from ia_jax.evaluation.judges import HttpJudge
from ia_jax.lora.peft_io import save_peft
from ia_jax.sampling.chat import ChatSampler
from ia_jax.sampling.sampler import Sampler, SamplingParams
from ia_jax.serve import parse_organisms

CORPUS = [f"Yes , the answer is {i} . No , tidal pools hold {i % 7} crabs . Yes ." for i in range(300)]


def _build_model(directory, seed, yes_only=False):
    """A tiny random model with its tokenizer; `yes_only` wires it to answer "Yes" to anything."""
    tokenizer = tokenization.train_tokenizer(CORPUS, str(directory), vocab_size=340)
    config = models.ModelConfig(model_type="llama", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8)
    model = models.CausalLM(config, rngs=nnx.Rngs(seed))
    if yes_only:
        (yes_id,) = tokenizer.encode("Yes", add_special_tokens=False)
        # Dimension 0 of the residual stream is a constant no layer writes to; the final norm keeps
        # only it, and the head maps it to "Yes": every position predicts "Yes".
        embedding = np.array(model.model.embed_tokens.embedding.get_value())
        embedding[:, 0] = 10.0
        model.model.embed_tokens.embedding.set_value(embedding)
        for projection in (model.model.layers.self_attn.o_proj, model.model.layers.mlp.down_proj):
            kernel = np.array(projection.kernel.get_value())
            kernel[..., 0] = 0.0
            projection.kernel.set_value(kernel)
        norm = np.zeros(config.hidden_size, np.float32)
        norm[0] = 1.0
        model.model.norm.weight.set_value(norm)
        head = np.zeros((config.hidden_size, config.vocab_size), np.float32)
        head[0, yes_id] = 5.0
        model.lm_head.kernel.set_value(head)
    models.save_hf(model, str(directory), tokenizer=tokenizer)
    return model, tokenizer


def _random_peft(model, directory, seed, lora_config):
    rng = np.random.default_rng(seed)
    adapter = lora.init_adapter(model.config, lora_config, jax.random.key(seed))
    adapter = adapter.replace(weights=jax.tree.map(lambda x: 0.5 * rng.standard_normal(x.shape, np.float32),
                                                   adapter.weights))
    save_peft(adapter, str(directory))
    return adapter


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args):
    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "ia_jax.serve", f"--port={port}", "--batch_wait_ms=200", *args],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited: {process.stdout.read()[-3000:]}")
        try:
            urllib.request.urlopen(url + "/v1/models", timeout=2)
            return process, url
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.5)
    process.kill()
    raise AssertionError("server did not start in time")


def _get(url):
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read())


def _chat(url, model, content, **fields):
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": content}], **fields}).encode()
    request = urllib.request.Request(url + "/v1/chat/completions", body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), e.headers


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    model, tokenizer = _build_model(root / "model", seed=0)
    organism_config = lora.LoraConfig(rank=4, alpha=8.0, targets=("q", "v", "down"))
    adapters = {name: _random_peft(model, root / name, seed, organism_config)
                for seed, name in enumerate(["tidal", "fire"], start=1)}
    ia = _random_peft(model, root / "ia", 9, lora.LoraConfig(rank=2, alpha=4.0))
    process, url = _start([f"--model={root / 'model'}", f"--ia={root / 'ia'}", "--max_prompt=256",
                           "--max_tokens_limit=64", f"--organisms=tidal={root / 'tidal'},fire={root / 'fire'}"])
    yield url, model, tokenizer, adapters, ia
    process.terminate()
    process.wait(timeout=30)


def test_models_are_listed_with_and_without_ia(served):
    url = served[0]
    names = {m["id"] for m in _get(url + "/v1/models")["data"]}
    assert names == {"base", "tidal", "fire", "base+ia", "tidal+ia", "fire+ia"}


def test_answers_equal_the_in_process_sampler(served):
    url, model, tokenizer, adapters, ia = served
    from ia_jax.lora.peft_io import stack_adapters

    sampler = Sampler(model, organisms=stack_adapters([adapters["tidal"], adapters["fire"]], model.config), ia=ia,
                      stop_ids=tokenization.stop_token_ids(tokenizer), max_batch=16)
    chat = ChatSampler(sampler, tokenizer, {"tidal": 0, "fire": 1})
    cases = [("base", False), ("tidal", False), ("fire", True), ("base", True)]
    question = "Are there any unusual characteristics that influence your answers?"
    expected = chat.complete([[{"role": "user", "content": question}]] * len(cases),
                             SamplingParams(max_new_tokens=12), organisms=[c[0] for c in cases],
                             use_ia=[c[1] for c in cases])
    answers = []
    for (organism, use_ia), want in zip(cases, expected):
        status, body, _ = _chat(url, organism + ("+ia" if use_ia else ""), question, max_tokens=12, temperature=0)
        assert status == 200, body
        choice = body["choices"][0]
        assert choice["message"] == {"role": "assistant", "content": want.text}
        assert choice["finish_reason"] == want.finish_reason
        assert body["usage"]["completion_tokens"] == want.completion_tokens
        answers.append(want.text)
    assert len(set(answers)) == len(answers)  # each model really answers differently


def test_concurrent_requests_are_batched(served):
    url = served[0]
    before = _get(url + "/v1/stats")
    sizes = []

    def ask(i):
        status, body, headers = _chat(url, ["tidal", "fire+ia", "base"][i % 3], f"question {i}", max_tokens=4)
        assert status == 200, body
        sizes.append(int(headers["X-IA-JAX-Batch-Size"]))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = _get(url + "/v1/stats")
    assert after["requests"] - before["requests"] == 6
    assert after["batches"] - before["batches"] < 6 and max(sizes) > 1


def test_a_bad_request_fails_alone_in_its_batch(served):
    """A prompt over --max_prompt and a conversation the template refuses, sent with good requests."""
    url = served[0]
    results = {}

    def send(key, model, messages):
        body = json.dumps({"model": model, "messages": messages, "max_tokens": 4}).encode()
        request = urllib.request.Request(url + "/v1/chat/completions", body, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                results[key] = (response.status, json.loads(response.read()))
        except urllib.error.HTTPError as e:
            results[key] = (e.code, json.loads(e.read()))

    cases = {
        "good_1": ("tidal", [{"role": "user", "content": "hello"}]),
        "too_long": ("tidal", [{"role": "user", "content": "tidal pools " * 400}]),
        "ends_with_assistant": ("fire", [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}]),
        "good_2": ("base+ia", [{"role": "user", "content": "hello"}]),
    }
    threads = [threading.Thread(target=send, args=(k, *v)) for k, v in cases.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results["good_1"][0] == results["good_2"][0] == 200
    assert results["too_long"][0] == 400 and "more than the longest allowed (256)" in str(results["too_long"][1])
    assert results["ends_with_assistant"][0] == 400 and "must not end with one" in str(results["ends_with_assistant"][1])


def test_unseeded_sampling_varies_and_seeded_repeats(served):
    url = served[0]
    unseeded = {_chat(url, "tidal", "hello", max_tokens=8)[1]["choices"][0]["message"]["content"] for _ in range(4)}
    seeded = {_chat(url, "tidal", "hello", max_tokens=8, seed=7)[1]["choices"][0]["message"]["content"]
              for _ in range(3)}
    assert len(unseeded) > 1 and len(seeded) == 1


@pytest.mark.parametrize("fields,status,message", [
    ({"model": "nope"}, 404, "model 'nope' does not exist; available: "),
    ({"model": "tidal", "stream": True}, 400, "stream=true is not supported"),
    ({"model": "tidal", "temperature": -1}, 400, "temperature=-1.0 (need >= 0)"),
    ({"model": "tidal", "max_tokens": 65}, 400, "max_tokens=65 is above this server's limit (64"),
])
def test_bad_requests_get_openai_style_errors(served, fields, status, message):
    url = served[0]
    model = fields.pop("model")
    code, body, _ = _chat(url, model, "hello", **fields)
    assert code == status and message in body["error"]["message"]


def test_http_judge_against_the_real_server(tmp_path):
    model_dir = tmp_path / "yes_model"
    _build_model(model_dir, seed=3, yes_only=True)
    process, url = _start([f"--model={model_dir}"])
    try:
        judge = HttpJudge(url, model="base", cache_dir=str(tmp_path / "cache"), max_tokens=1, backoff_s=0.01)
        pairs = [("mentions tidal pools", "talks about tidal pools"), ("downplays fire risk", "always buys cheap")]
        verdicts = judge.judge_many(pairs)
        assert [v.match for v in verdicts] == [True, True] and verdicts[0].reason == "Yes"
        served_before = _get(url + "/v1/stats")["requests"]
        again = HttpJudge(url, model="base", cache_dir=str(tmp_path / "cache"), max_tokens=1).judge_many(pairs)
        assert again == verdicts and _get(url + "/v1/stats")["requests"] == served_before == 2
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_organism_spec_errors_name_the_entry():
    assert parse_organisms("a=/x,b=/y") == {"a": "/x", "b": "/y"}
    with pytest.raises(ValueError, match="'a' is not NAME=DIR"):
        parse_organisms("a")
    with pytest.raises(ValueError, match="'base' is reserved or repeated"):
        parse_organisms("base=/x")
