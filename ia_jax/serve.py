"""An OpenAI-compatible chat server over the sampler, so existing auditing agents can interview any
organism with or without the introspection adapter.

    python -m ia_jax.serve --model=DIR [--organisms=name=DIR,...] [--ia=PEFT_DIR] --port=8000

The requested model name picks what answers: `base` or an organism's name, each also as `NAME+ia`
when an IA is loaded. `GET /v1/models` lists them. Requests arriving together are batched onto one
sampler call (up to --max_batch rows, waiting at most --batch_wait_ms for company); `GET /v1/stats`
reports how many requests and batches were served. Streaming is not supported (a request asking for
it gets a 400).
"""

from __future__ import annotations

import json
import queue
import secrets
import signal
import threading
import time
import uuid
from concurrent.futures import Future
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from absl import app, flags

from ia_jax import model_flags, tokenization
from ia_jax.organisms.sources import load_chat_sampler
from ia_jax.sampling.chat import BASE, ChatSampler
from ia_jax.sampling.sampler import SamplingParams

IA_SUFFIX = "+ia"


class RequestError(ValueError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class BatchingEngine:
    """One worker thread owns the sampler; HTTP threads hand it requests and wait on futures."""

    def __init__(self, chat: ChatSampler, *, has_ia: bool, max_batch: int, batch_wait_s: float):
        self.chat = chat
        self.has_ia = has_ia
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_s
        self.stats = {"requests": 0, "batches": 0, "largest_batch": 0}
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        threading.Thread(target=self._work, daemon=True).start()

    def model_names(self) -> list[str]:
        names = sorted(self.chat.organisms)
        return names + [name + IA_SUFFIX for name in names] if self.has_ia else names

    def resolve(self, model: str) -> tuple[str, bool]:
        """(organism, IA on?) for a requested model name."""
        if model not in self.model_names():
            raise RequestError(404, f"model {model!r} does not exist; available: {self.model_names()}")
        use_ia = model.endswith(IA_SUFFIX)
        return (model[: -len(IA_SUFFIX)] if use_ia else model), use_ia

    def submit(self, prompt_ids: list[int], organism: str, use_ia: bool, params: SamplingParams) -> Future:
        future: Future = Future()
        self._queue.put((prompt_ids, organism, use_ia, params, future))
        return future

    def _complete(self, items) -> list:
        return self.chat.complete_prompts([i[0] for i in items], [i[3] for i in items],
                                          organisms=[i[1] for i in items], use_ia=[i[2] for i in items])

    def _work(self) -> None:
        while True:
            batch = [self._queue.get()]
            deadline = time.monotonic() + self.batch_wait_s
            while len(batch) < self.max_batch:
                remaining = deadline - time.monotonic()
                try:
                    batch.append(self._queue.get(timeout=max(remaining, 0)) if remaining > 0 else
                                 self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                completions = self._complete(batch)
            except Exception:  # noqa: BLE001 - find the request at fault; the others still get answers
                completions = []
                for item in batch:
                    try:
                        completions.append(self._complete([item])[0])
                    except Exception as e:  # noqa: BLE001
                        item[4].set_exception(e)
                        completions.append(None)
            with self._lock:
                self.stats["requests"] += len(batch)
                self.stats["batches"] += 1
                self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))
            for item, completion in zip(batch, completions):
                if completion is not None:
                    item[4].set_result((completion, len(batch)))


def parse_chat_request(body: dict[str, Any], engine: BatchingEngine, max_tokens_limit: int):
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    if body.get("stream"):
        raise RequestError(400, "stream=true is not supported; request the whole completion")
    if body.get("n", 1) != 1:
        raise RequestError(400, f"n={body['n']} is not supported; send one request per completion")
    if "model" not in body:
        raise RequestError(400, "field 'model' is required")
    organism, use_ia = engine.resolve(body["model"])
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "field 'messages' must be a non-empty list")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in tokenization.ROLES or not isinstance(
                message.get("content"), str):
            raise RequestError(400, f"messages[{i}] must be {{role: one of {list(tokenization.ROLES)}, "
                                    "content: string}")
    try:
        params = SamplingParams(
            max_new_tokens=int(body.get("max_completion_tokens") or body.get("max_tokens") or 256),
            temperature=float(body.get("temperature", 1.0)),
            top_p=float(body.get("top_p", 1.0)),
            top_k=int(body.get("top_k", 0)),
            # Without a seed, every request draws its own (as OpenAI's API does), so re-asking varies.
            seed=int(body["seed"]) % 2**32 if body.get("seed") is not None else secrets.randbits(32),
        )
    except (TypeError, ValueError) as e:
        raise RequestError(400, f"bad sampling field: {e}") from None
    if params.max_new_tokens > max_tokens_limit:
        raise RequestError(400, f"max_tokens={params.max_new_tokens} is above this server's limit "
                                f"({max_tokens_limit}, --max_tokens_limit)")
    conversation = [{"role": m["role"], "content": m["content"]} for m in messages]
    try:
        prompt_ids = engine.chat.prompt_ids(conversation)
    except ValueError as e:  # the chat template's or the length limit's complaint, for this request alone
        raise RequestError(400, str(e)) from None
    return prompt_ids, organism, use_ia, params


def make_handler(engine: BatchingEngine, max_tokens_limit: int = 4096):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet: one line per request would drown the job's own logs
            pass

        def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str) -> None:
            kind = "not_found_error" if status == 404 else "invalid_request_error"
            self._send(status, {"error": {"message": message, "type": kind, "code": status}})

        def do_GET(self):
            if self.path.rstrip("/") == "/v1/models":
                self._send(200, {"object": "list", "data": [
                    {"id": name, "object": "model", "created": 0, "owned_by": "ia-jax"}
                    for name in engine.model_names()]})
            elif self.path.rstrip("/") == "/v1/stats":
                self._send(200, dict(engine.stats))
            else:
                self._error(404, f"no route {self.path}")

        def do_POST(self):
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._error(404, f"no route {self.path}")
                return
            try:
                length = int(self.headers.get("Content-Length", 0))
                try:
                    body = json.loads(self.rfile.read(length) or b"null")
                except json.JSONDecodeError as e:
                    raise RequestError(400, f"the body is not valid JSON ({e})") from None
                prompt_ids, organism, use_ia, params = parse_chat_request(body, engine, max_tokens_limit)
                completion, batch_size = engine.submit(prompt_ids, organism, use_ia, params).result()
            except RequestError as e:
                self._error(e.status, str(e))
                return
            except Exception as e:  # noqa: BLE001 - the client gets the reason, the server keeps serving
                self._error(400 if isinstance(e, (ValueError, KeyError)) else 500, f"{type(e).__name__}: {e}")
                return
            self._send(200, {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": completion.text},
                             "finish_reason": completion.finish_reason}],
                "usage": {"prompt_tokens": completion.prompt_tokens,
                          "completion_tokens": completion.completion_tokens,
                          "total_tokens": completion.prompt_tokens + completion.completion_tokens},
            }, headers={"X-IA-JAX-Batch-Size": str(batch_size)})

    return Handler


def parse_organisms(spec: str | None) -> dict[str, str]:
    """'name=DIR,name2=DIR2' -> {name: DIR}, refusing duplicates and the reserved name 'base'."""
    organisms: dict[str, str] = {}
    for item in filter(None, (spec or "").split(",")):
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--organisms entry {item!r} is not NAME=DIR")
        if name == BASE or name.endswith(IA_SUFFIX) or name in organisms:
            raise ValueError(f"--organisms: name {name!r} is reserved or repeated")
        organisms[name] = path
    return organisms


def build_engine(model_dir: str, organisms: dict[str, str], ia_dir: str | None, *, max_batch: int = 16,
                 batch_wait_ms: float = 20.0, dtype: str | None = None, max_prompt: int = 4096,
                 template_kwargs: dict | None = None, full_rank: int = 64) -> BatchingEngine:
    chat = load_chat_sampler(model_dir, organisms, ia_dir, max_batch=max_batch, max_prompt=max_prompt, dtype=dtype,
                             full_rank=full_rank, template_kwargs=template_kwargs)
    return BatchingEngine(chat, has_ia=ia_dir is not None, max_batch=max_batch, batch_wait_s=batch_wait_ms / 1000)


_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to listen on.")
_PORT = flags.DEFINE_integer("port", 8000, "Port to listen on.")
_MAX_BATCH = flags.DEFINE_integer("max_batch", 16, "Most requests sampled together.")
_BATCH_WAIT_MS = flags.DEFINE_float("batch_wait_ms", 20.0, "How long a request waits for others to batch with.")
_MAX_PROMPT = flags.DEFINE_integer("max_prompt", 4096, "Longest prompt in tokens (requests above it get a 400).")
_MAX_TOKENS_LIMIT = flags.DEFINE_integer("max_tokens_limit", 4096, "Largest max_tokens a request may ask for.")


def main(argv):
    del argv
    if not model_flags.MODEL.value:
        raise app.UsageError("--model is required")
    engine = build_engine(model_flags.MODEL.value, parse_organisms(model_flags.ORGANISMS.value), model_flags.IA.value,
                          max_batch=_MAX_BATCH.value, batch_wait_ms=_BATCH_WAIT_MS.value, dtype=model_flags.DTYPE.value,
                          max_prompt=_MAX_PROMPT.value, template_kwargs=model_flags.template_kwargs(),
                          full_rank=model_flags.FULL_RANK.value)
    server = ThreadingHTTPServer((_HOST.value, _PORT.value), make_handler(engine, _MAX_TOKENS_LIMIT.value))
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"serving {engine.model_names()} on http://{_HOST.value}:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    app.run(main)
