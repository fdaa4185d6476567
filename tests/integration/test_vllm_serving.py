"""The ``vllm`` serving backend on vLLM's async engine, through the real server on loopback.

What the async engine gives that the old blocking ``LLM.generate`` backend did not: tokens
stream while they are generated, a client that goes away has its request aborted inside vLLM
(its rows leave vLLM's scheduler at the next engine step while other requests go on), and
vLLM's scheduler runs concurrent requests in the same engine steps. The other serving tests
(``tests/integration/test_serving.py``, parametrised over hf and vllm) run on it as well.

Runs in the interpreter that has vLLM (``.venv-vllm``; ``hack/test.sh`` runs
``tests/integration/test_vllm*.py`` there), with the tiny random model (fast engine steps;
it rarely emits EOS, so requests run to ``max_tokens``).
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed in this interpreter: these tests "
                    "run in .venv-vllm (make install; hack/test.sh runs them there)")

import httpx
from test_serving import Server, _metric

pytestmark = [pytest.mark.integration]

MODEL = "tiny"
CEILING = 64


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    from testkit.tiny import build_tiny_model

    model = build_tiny_model(tmp_path_factory.mktemp("tiny-model"), head_dim=32)
    logs = tmp_path_factory.mktemp("vllm-serving-logs")
    srv = Server(["--model", str(model), "--model-name", MODEL, "--backend", "vllm",
                  "--strategy", "self-correct", "--turns", "2", "--max-tokens", str(CEILING),
                  "--max-n", "4", "--max-concurrency", "32", "--engine-batch-size", "32",
                  "--request-timeout", "300"],
                 logs / "server.log", python=sys.executable)
    try:
        srv.wait_ready(deadline_s=300)
        yield srv
    finally:
        code = srv.stop()
        assert code == 0, f"server exited with {code} on SIGTERM:\n{srv.tail()}"


def _metrics(server: Server) -> str:
    return httpx.get(f"{server.url}/metrics", timeout=10).text


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _content_events(server: Server, body: dict) -> tuple[list[tuple[float, str]], float, dict]:
    """A streamed chat request: (arrival time, text) of each content delta, the arrival time
    of the finish chunk, and the usage."""
    events: list[tuple[float, str]] = []
    finished, usage = float("nan"), {}
    with httpx.stream("POST", f"{server.url}/openai/v1/chat/completions",
                      json={**body, "stream": True, "stream_options": {"include_usage": True}},
                      timeout=300) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: "):])
            assert "error" not in chunk, chunk
            if chunk.get("usage"):
                usage = chunk["usage"]
            for c in chunk["choices"]:
                if c["delta"].get("content"):
                    events.append((time.monotonic(), c["delta"]["content"]))
                if c.get("finish_reason"):
                    finished = time.monotonic()
    return events, finished, usage


def test_tokens_stream_while_the_answer_is_generated(server: Server) -> None:
    body = {"model": MODEL, "messages": _user("Count to a hundred."), "max_tokens": CEILING,
            "temperature": 0.0, "scoreops": {"strategy": "single"}}
    whole = httpx.post(f"{server.url}/openai/v1/chat/completions", json=body, timeout=300)
    assert whole.status_code == 200, whole.text
    events, finished, usage = _content_events(server, body)
    text = "".join(t for _, t in events)
    # the same greedy answer, streamed in many pieces
    assert text == whole.json()["choices"][0]["message"]["content"]
    assert usage["completion_tokens"] == whole.json()["usage"]["completion_tokens"] == CEILING
    assert len(events) >= 8, events
    # ... that arrived over the generation, not in one burst once it was complete
    # (the blocking backend sent the whole text in one piece after the last token)
    spread = events[-1][0] - events[0][0]
    assert spread > 0, events
    assert events[0][0] < finished
    distinct = len({round(t, 3) for t, _ in events})
    assert distinct >= 4, f"{distinct} distinct arrival times over {len(events)} pieces"


def test_the_self_correct_final_turn_streams_after_the_first_turn(server: Server) -> None:
    body = {"model": MODEL, "messages": _user("What is 7 + 5?"), "max_tokens": 32,
            "temperature": 0.0, "scoreops": {"return_attempts": True}}
    whole = httpx.post(f"{server.url}/openai/v1/chat/completions", json=body, timeout=300)
    assert whole.status_code == 200, whole.text
    trace = whole.json()["choices"][0]["scoreops"]
    assert trace["turns_taken"] == 2
    events, _, _ = _content_events(server, body)
    assert "".join(t for _, t in events) == trace["attempts"][1]["text"]
    assert len(events) >= 4


def test_a_disconnected_stream_is_aborted_inside_vllm(server: Server) -> None:
    """A client leaves its stream after the first tokens: its request leaves vLLM's scheduler
    at once (vLLM's running count drops by one while another request goes on) and is counted
    cancelled."""
    labels = {"model": MODEL, "route": "chat"}
    before = _metrics(server)
    cancelled = _metric(before, "scoreops_requests_total", **labels, status="cancelled")
    # another client's long request (4 samples x 8 turns of 64 tokens) keeps vLLM busy
    other: dict = {}

    def long_request() -> None:
        other["resp"] = httpx.post(  # minutes when other jobs load the machine
            f"{server.url}/openai/v1/chat/completions", timeout=900,
            json={"model": MODEL, "messages": _user("Tell a story."), "max_tokens": CEILING,
                  "n": 4, "temperature": 1.0, "scoreops": {"turns": 8}})

    thread = threading.Thread(target=long_request)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while (_metric(_metrics(server), "scoreops_decode_rows", model=MODEL) < 4
               and thread.is_alive() and time.monotonic() < deadline):
            time.sleep(0.02)
        assert thread.is_alive(), f"the long request ended early: {other['resp'].text}"
        body = {"model": MODEL, "messages": _user("Count to a hundred."), "max_tokens": CEILING,
                "temperature": 1.0, "stream": True, "scoreops": {"strategy": "single"}}
        with httpx.stream("POST", f"{server.url}/openai/v1/chat/completions", json=body,
                          timeout=120) as resp:
            assert resp.status_code == 200
            for line in resp.iter_lines():
                if '"content": "' in line and '"content": ""' not in line:
                    break  # the stream is generating: leave (closes the connection)
        seen_with_both = _metric(_metrics(server), "scoreops_decode_rows", model=MODEL)
        left = time.monotonic()
        # the other request's 4 rows go on in vLLM; the abandoned one is gone
        deadline = left + 10
        while time.monotonic() < deadline:
            text = _metrics(server)
            if (_metric(text, "scoreops_decode_rows", model=MODEL) == 4
                    and _metric(text, "scoreops_engine_requests", model=MODEL,
                                state="running") == 4
                    and _metric(text, "scoreops_requests_total", **labels,
                                status="cancelled") == cancelled + 1):
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"vLLM still ran the abandoned request:\n{text}")
        assert thread.is_alive(), "the other request finished first: nothing was observed"
        assert seen_with_both >= 4
        gone_after = time.monotonic() - left
        assert gone_after < 5
    finally:
        thread.join(timeout=300)
    assert other["resp"].status_code == 200, other["resp"].text
    idle = _metrics(server)
    assert _metric(idle, "scoreops_decode_rows", model=MODEL) == 0
    assert _metric(idle, "scoreops_engine_requests", model=MODEL, state="running") == 0


def test_concurrent_requests_share_vllm_engine_steps(server: Server) -> None:
    before = _metrics(server)
    steps_before = _metric(before, "scoreops_batch_size_count", model=MODEL)
    rows_before = _metric(before, "scoreops_batch_size_sum", model=MODEL)
    ok_before = _metric(before, "scoreops_requests_total", model=MODEL, route="chat",
                        status="200")

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=300) as ac:
            return await asyncio.gather(*[
                ac.post(f"{server.url}/openai/v1/chat/completions",
                        json={"model": MODEL, "messages": _user(f"What is {i} + {i}?"),
                              "max_tokens": 16, "temperature": 0.0})
                for i in range(24)])

    responses = asyncio.run(fire())
    assert [r.status_code for r in responses] == [200] * 24
    assert all(r.json()["usage"]["completion_tokens"] >= 2 for r in responses)
    after = _metrics(server)
    assert _metric(after, "scoreops_requests_total", model=MODEL, route="chat",
                   status="200") == ok_before + 24
    steps = _metric(after, "scoreops_batch_size_count", model=MODEL) - steps_before
    rows = _metric(after, "scoreops_batch_size_sum", model=MODEL) - rows_before
    # vLLM's scheduler ran many requests per engine step (one at a time would be 1.0)
    assert steps >= 1 and rows / steps > 4, (rows, steps)
    assert _metric(after, "scoreops_decode_rows", model=MODEL) == 0


def test_the_description_names_the_async_engine(server: Server) -> None:
    log = Path(server.log).read_text(errors="replace")
    assert "vllm (async engine)" in log
