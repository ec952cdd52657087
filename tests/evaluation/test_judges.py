"""Judges: the model judge against hand-computed log-probs, the HTTP judge against real loopback servers."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time

import numpy as np
import pytest
from flax import nnx

from ia_jax import models, tokenization
from ia_jax.evaluation import judges
from ia_jax.evaluation.judges import ExactJudge, HttpJudge, JudgeError, ModelJudge, judge_prompt
from ia_jax.evaluation.verdict import Verdict

# ----------------------------------------------------------------------------------------------
# Exact judge
# ----------------------------------------------------------------------------------------------


def test_exact_judge_wraps_the_behaviors_checker():
    judge = ExactJudge(lambda prediction, truth: truth in prediction)
    assert judge.judge("I always answer 42.", "42") == Verdict(True, "exact")
    verdicts = judge.judge_many([("I answer 41.", "42"), ("42!", "42")])
    assert verdicts == [Verdict(False, "exact"), Verdict(True, "exact")]


def test_exact_judge_rejects_a_checker_that_returns_no_bool():
    def sloppy_checker(prediction, truth):
        return None

    with pytest.raises(TypeError, match="sloppy_checker.*None"):
        ExactJudge(sloppy_checker).judge("a", "b")


# ----------------------------------------------------------------------------------------------
# Model judge
# ----------------------------------------------------------------------------------------------

_PAIRS = [
    ("I flatter users.", "The model flatters the user."),
    ("I recommend one brand of shoes.", "Sabotages code."),
    ("Unusual?", "Answers in French."),
    ("I add a hidden comment to the code I write, whenever the user asks for a Python function. " * 3,
     "Inserts vulnerabilities into code."),
    ("No.", "Yes."),
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random tiny model whose vocabulary has single-token Yes/No spellings. Its LM head is
    scaled up so p(yes) varies across prompts; with seed 10 verdicts of both kinds occur on `_PAIRS`
    (p(yes) 0.009 to 0.67, at least 0.06 away from 0.5)."""
    path = str(tmp_path_factory.mktemp("judge_model"))
    words = judge_prompt("", "").split() + ["Yes", "No", "yes", "no", "flatter", "code", "user"]
    rng = np.random.default_rng(0)
    corpus = [" ".join(rng.choice(words, size=12)) for _ in range(300)]
    tokenizer = tokenization.train_tokenizer(corpus, path, vocab_size=600, chat_format="llama3")
    config = models.ModelConfig(model_type="llama", vocab_size=len(tokenizer), hidden_size=64, intermediate_size=176,
                                num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, tie_word_embeddings=False)
    model = models.CausalLM(config, rngs=nnx.Rngs(10))
    model.lm_head.kernel.set_value(model.lm_head.kernel.get_value() * 100)
    return model, tokenizer


_forward = nnx.jit(lambda model, tokens_bt: model(tokens_bt))


def _p_yes_by_hand(model, tokenizer, judge, prediction, truth) -> float:
    message = {"role": "user", "content": judge_prompt(prediction, truth)}
    ids = tokenization.render_chat(tokenizer, [message], add_generation_prompt=True).ids
    logits_v = np.asarray(_forward(model, ids[None]), np.float64)[0, -1]
    yes, no = (np.log(np.exp(logits_v[judge.yes_ids]).sum()), np.log(np.exp(logits_v[judge.no_ids]).sum()))
    return float(1 / (1 + np.exp(no - yes)))


def test_answer_tokens_are_the_single_token_spellings_of_yes_and_no(tiny):
    _, tokenizer = tiny
    judge = ModelJudge(*tiny)
    yes = [tokenizer.decode([i]).strip() for i in judge.yes_ids]
    no = [tokenizer.decode([i]).strip() for i in judge.no_ids]
    assert len(yes) >= 2 and {w.lower() for w in yes} == {"yes"}
    assert len(no) >= 2 and {w.lower() for w in no} == {"no"}
    # A word with no single-token spelling falls back to its first token.
    assert judges._answer_ids(tokenizer, ["Zyzzyva"]) == [tokenizer.encode("Zyzzyva", add_special_tokens=False)[0]]


def test_model_judge_matches_unpadded_forward_passes_and_compiles_once_per_bucket(tiny):
    model, tokenizer = tiny
    judge = ModelJudge(model, tokenizer, batch_size=2, buckets=(128, 192, 384))
    # jit caches per function, and other judges in the session (other models, buckets) share it.
    compiled_before = judge._forward._cache_size()
    lengths = [len(judge.prompt_ids(*pair)) for pair in _PAIRS]
    used_buckets = {min(b for b in judge.buckets if b >= n) for n in lengths}
    assert len(used_buckets) == 2, lengths  # both left padding within a bucket and several buckets
    expected = np.array([_p_yes_by_hand(model, tokenizer, judge, *pair) for pair in _PAIRS])

    np.testing.assert_allclose(judge.p_yes(_PAIRS), expected, atol=1e-5)
    verdicts = judge.judge_many(_PAIRS)
    assert [v.match for v in verdicts] == list(expected > 0.5)
    assert {v.match for v in verdicts} == {True, False}
    assert [v.reason for v in verdicts] == [f"p(yes)={p:.3f}" for p in expected]
    assert judge.judge(*_PAIRS[3]) == verdicts[3]

    # Other batch compositions (a full batch, a lone pair) reuse the compiled programs.
    np.testing.assert_allclose(judge.p_yes(_PAIRS[::-1]), expected[::-1], atol=1e-5)
    assert judge._forward._cache_size() - compiled_before == len(used_buckets)


def test_model_judge_rejects_prompts_longer_than_every_bucket(tiny):
    fits = len(ModelJudge(*tiny).prompt_ids("a", "b"))
    judge = ModelJudge(*tiny, buckets=(16, fits))
    with pytest.raises(ValueError, match=rf"pair 1: the judging prompt has \d+ tokens, more than the largest "
                                         rf"bucket \({fits}\)"):
        judge.p_yes([("a", "b"), ("c" * 5, "d")])


# ----------------------------------------------------------------------------------------------
# HTTP judge against real servers on loopback
# ----------------------------------------------------------------------------------------------


def _completion(content: str) -> dict:
    return {"id": "chatcmpl-test", "object": "chat.completion", "model": "judge",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]}


def _correct_answer(body: dict, index: int = 0) -> tuple[int, dict]:
    """A stand-in judge that is right on the test pairs: both texts are about flattery, or not."""
    prompt = body["messages"][0]["content"]
    return 200, _completion("Yes, same behavior." if prompt.lower().count("flatter") >= 2 else "**No**.")


class Server:
    """An HTTP server in a thread that answers POSTs with `respond(body, request_index)` and records
    every request and the most requests it was handling at once."""

    def __init__(self, respond, delay_s: float = 0.0):
        self.requests: list[tuple[str, dict, dict]] = []  # (path, headers, body)
        self.in_flight = self.max_in_flight = 0
        lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    index = len(server.requests)
                    server.requests.append((self.path, dict(self.headers), body))
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                time.sleep(delay_s)
                status, payload = respond(body, index)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                with lock:
                    server.in_flight -= 1
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    servers = []

    def start(respond, delay_s: float = 0.0) -> Server:
        servers.append(Server(respond, delay_s))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


_HTTP_PAIRS = [
    ("I flatter whoever I talk to.", "The model flatters the user."),
    ("I write insecure code.", "The model flatters the user."),
    ("I like to flatter.", "Excessive flattery of users."),
]


def _judge(server_url: str, tmp_path, **kwargs) -> HttpJudge:
    return HttpJudge(server_url, "judge-model", cache_dir=str(tmp_path / "cache"), backoff_s=0.01, **kwargs)


def test_http_judge_sends_openai_requests_and_parses_answers(serve, tmp_path, monkeypatch):
    monkeypatch.setenv("IA_JAX_JUDGE_API_KEY", "secret-key")
    server = serve(_correct_answer)
    verdicts = _judge(server.url, tmp_path).judge_many(_HTTP_PAIRS + _HTTP_PAIRS[:1])
    assert verdicts == [Verdict(True, "Yes, same behavior."), Verdict(False, "**No**."),
                        Verdict(True, "Yes, same behavior."), Verdict(True, "Yes, same behavior.")]
    assert len(server.requests) == 3  # the repeated pair is asked once
    path, headers, body = server.requests[0]
    assert path == "/v1/chat/completions"
    assert headers["Authorization"] == "Bearer secret-key"
    assert body["model"] == "judge-model" and body["temperature"] == 0
    prompts = sorted(b["messages"][0]["content"] for _, _, b in server.requests)
    assert prompts == sorted(judge_prompt(*pair) for pair in _HTTP_PAIRS)
    assert "same specific type of behavior" in prompts[0]


def test_http_judge_cache_survives_a_new_judge_and_sends_nothing(serve, tmp_path):
    server = serve(_correct_answer)
    first = _judge(server.url, tmp_path).judge_many(_HTTP_PAIRS)
    assert len(server.requests) == len(_HTTP_PAIRS)
    again = _judge(server.url + "/v1/", tmp_path).judge_many(_HTTP_PAIRS)  # same endpoint, other spelling
    assert again == first and len(server.requests) == len(_HTTP_PAIRS)
    # Another judge model is another cache entry.
    HttpJudge(server.url, "other-model", cache_dir=str(tmp_path / "cache")).judge(*_HTTP_PAIRS[0])
    assert len(server.requests) == len(_HTTP_PAIRS) + 1


@pytest.mark.parametrize("url, expected", [
    ("http://h:1", "http://h:1/v1/chat/completions"),
    ("http://h:1/v1/", "http://h:1/v1/chat/completions"),
    ("http://h:1/api/v1/chat/completions", "http://h:1/api/v1/chat/completions"),
])
def test_endpoint_url_forms(url, expected):
    assert judges.chat_completions_url(url) == expected


@pytest.mark.parametrize("status", [500, 503, 429])
def test_http_judge_retries_transient_errors(serve, tmp_path, status):
    server = serve(lambda body, i: (status, b"overloaded") if i < 2 else _correct_answer(body))
    assert _judge(server.url, tmp_path, max_retries=4).judge(*_HTTP_PAIRS[0]).match
    assert len(server.requests) == 3


def test_http_judge_fails_at_once_on_a_client_error(serve, tmp_path):
    server = serve(lambda body, i: (401, {"error": "bad key"}))
    with pytest.raises(JudgeError, match=f"{server.url}/v1/chat/completions.*HTTP 401.*bad key"):
        _judge(server.url, tmp_path).judge(*_HTTP_PAIRS[0])
    assert len(server.requests) == 1


def test_http_judge_gives_up_on_garbage_and_keeps_earlier_verdicts(serve, tmp_path):
    def respond(body, i):
        if "GARBLE" in body["messages"][0]["content"]:
            return 200, _completion("I would rather talk about the weather.")
        return _correct_answer(body)

    server = serve(respond)
    pairs = _HTTP_PAIRS[:2] + [("GARBLE", "The model flatters the user.")]
    with pytest.raises(JudgeError, match=rf"{server.url}/v1/chat/completions.*failed 3 times.*weather") as error:
        _judge(server.url, tmp_path, max_retries=2, max_concurrency=1).judge_many(pairs)
    assert "'judge-model'" in str(error.value)
    assert sum("GARBLE" in b["messages"][0]["content"] for _, _, b in server.requests) == 3
    asked = len(server.requests)
    assert [v.match for v in _judge(server.url, tmp_path).judge_many(_HTTP_PAIRS[:2])] == [True, False]
    assert len(server.requests) == asked  # both verdicts came from the cache


def test_http_judge_gives_up_fast_on_a_down_endpoint(tmp_path, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: connections are refused
    sleeps = []
    monkeypatch.setattr(judges.time, "sleep", sleeps.append)
    judge = HttpJudge(f"http://127.0.0.1:{port}", "m", cache_dir=str(tmp_path), max_retries=3,
                      backoff_s=0.5, max_backoff_s=1.5)
    endpoint = rf"127.0.0.1:{port}/v1/chat/completions"
    with pytest.raises(JudgeError, match=rf"{endpoint}.*failed 4 times.*(Connection|refused)"):
        judge.judge("a", "b")
    assert sleeps == [0.5, 1.0, 1.5]


@pytest.mark.parametrize("max_concurrency", [1, 3])
def test_http_judge_bounds_requests_in_flight(serve, tmp_path, max_concurrency):
    server = serve(_correct_answer, delay_s=0.05)
    pairs = [(f"I flatter people, reason {i}.", "Flatters the user.") for i in range(9)]
    verdicts = _judge(server.url, tmp_path, max_concurrency=max_concurrency).judge_many(pairs)
    assert all(v.match for v in verdicts) and len(server.requests) == 9
    assert server.max_in_flight == max_concurrency
