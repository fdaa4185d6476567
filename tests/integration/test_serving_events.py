"""Streaming, cancellation and queueing, checked by the order of events rather than by time.

The OpenAI routes and the hf backend's decode loop run in this process on a real uvicorn
server on loopback (the same routes ``python -m scoreops.serving`` mounts on KServe's app), and
are queried with the official ``openai`` client and httpx. A hook on the decode loop (called
before every decoding step) holds generation at a chosen point until the client has seen what
it should have seen by then.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration]

MODEL = "tiny"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class InProcessServer:
    def __init__(self, corrector: Any) -> None:
        import uvicorn
        from fastapi import FastAPI

        from scoreops.serving.openai_routes import register_error_handler, register_openai_routes

        app = FastAPI()
        register_openai_routes(app, corrector)
        register_error_handler(app)
        self.corrector = corrector
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        for _ in range(600):
            if self.server.started:
                return
            time.sleep(0.05)
        raise RuntimeError("uvicorn did not start")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)

    # a per-test hook, run before every decoding step after the metrics' own
    def hook(self, fn: Callable[[list[Any]], None] | None) -> None:
        self._test_hook = fn

    def wait_idle(self, seconds: float = 60) -> None:
        end = time.monotonic() + seconds
        c = self.corrector
        while time.monotonic() < end:
            if c.admission.running == 0 and c.admission.queued == 0 and c.decoder.running == 0:
                return
            time.sleep(0.01)
        raise AssertionError("requests stayed running")


def _count(status: str, route: str = "chat") -> float:
    from prometheus_client import REGISTRY

    value = REGISTRY.get_sample_value("scoreops_requests_total",
                                      {"model": MODEL, "route": route, "status": status})
    return value or 0.0


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessServer]:
    pytest.importorskip("torch")
    from scoreops.api.common import StrategySpec
    from scoreops.api.correctorservice import ServingLimits
    from scoreops.serving.config import ServingConfig
    from scoreops.serving.core import Corrector
    from testkit.tiny import build_tiny_model

    tiny: Path = build_tiny_model(tmp_path_factory.mktemp("tiny-model"))
    config = ServingConfig(
        name=MODEL, backend="hf", model_uri=str(tiny),
        strategy=StrategySpec(name="self-correct", turns=2),
        limits=ServingLimits(max_tokens=64, max_n=4, max_concurrency=2, max_queue=4,
                             request_timeout_seconds=120),
        default_max_tokens=16, max_queue_wait_seconds=0.5, torch_threads=1)
    corrector = Corrector.load(config)
    srv = InProcessServer(corrector)
    metrics_hook = corrector.decoder.step_hook
    srv._test_hook = None

    def hook(rows: list[Any]) -> None:
        metrics_hook(rows)
        if srv._test_hook is not None:
            srv._test_hook(rows)

    corrector.decoder.step_hook = hook
    try:
        yield srv
    finally:
        srv.hook(None)
        srv.stop()
        corrector.close()


@pytest.fixture
def client(served: InProcessServer):
    import openai

    with openai.OpenAI(base_url=f"{served.url}/openai/v1", api_key="unused",
                       max_retries=0, timeout=120) as c:
        yield c
    served.hook(None)
    served.wait_idle()


def test_the_final_turn_streams_before_its_last_token_is_generated(served, client) -> None:
    first_chunk = threading.Event()
    held: list[tuple[int, bool]] = []  # (tokens generated when held, released by the client)

    def hold_after_two_tokens(rows: list[Any]) -> None:
        for row in rows:
            if row.streaming and len(row.generated) == 2 and not held:
                # generation of the final turn pauses here until the client has a chunk
                held.append((len(row.generated), first_chunk.wait(60)))

    served.hook(hold_after_two_tokens)
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Count to ten."}], max_tokens=12,
        temperature=0.0, stream=True, stream_options={"include_usage": True},
        extra_body={"scoreops": {"return_attempts": True}})
    events: list[str] = []
    content, usage, trace = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                if not first_chunk.is_set():
                    events.append("first content chunk")
                    first_chunk.set()
                content.append(c.delta.content)
            if c.finish_reason:
                events.append("finish")
                trace = (c.model_extra or {}).get("scoreops")
    # the server held the final turn after its 2nd token until the client got content
    assert held == [(2, True)], held
    assert events == ["first content chunk", "finish"]
    assert trace is not None
    final = trace["attempts"][-1]
    assert final["turn"] == 2 and "".join(content) == final["text"]
    # ... and the turn went on past that point afterwards: 12 tokens in each of 2 turns
    assert usage is not None and usage.completion_tokens == 24


def test_a_disconnect_mid_generation_stops_the_work_at_the_next_step(served) -> None:
    # the previous test's request is counted once the server is done with it, which on a
    # loaded machine can be after its client read the last chunk: count from an idle server
    served.wait_idle()
    decoder = served.corrector.decoder
    entered, disconnected = threading.Event(), threading.Event()
    held_rows: list[tuple[Any, int]] = []
    cancelled_rows = decoder.cancelled_rows
    before_cancelled, before_ok = _count("cancelled"), _count("200")
    start = decoder.steps

    def hold(rows: list[Any]) -> None:
        if decoder.steps == start + 3 and not held_rows:
            held_rows.extend((r, len(r.generated)) for r in rows)
            entered.set()
            disconnected.wait(60)

    served.hook(hold)
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Hello"}],
                       "max_tokens": 40, "n": 2, "temperature": 1.0}).encode()
    # a plain HTTP client whose connection is closed while generation is held
    sock = socket.create_connection(("127.0.0.1", served.port))
    sock.sendall(b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
                 b"Content-Type: application/json\r\nContent-Length: "
                 + str(len(body)).encode() + b"\r\n\r\n" + body)
    assert entered.wait(60)
    running = served.corrector.admission.running
    sock.close()
    # the request is counted cancelled and its slot is free while the loop is still held
    end = time.monotonic() + 30
    while _count("cancelled") < before_cancelled + 1 and time.monotonic() < end:
        time.sleep(0.01)
    assert running == 1
    assert _count("cancelled") == before_cancelled + 1
    assert served.corrector.admission.running == 0
    disconnected.set()
    served.wait_idle()
    # both rows left the batch at the next step boundary, having sampled nothing more
    assert decoder.cancelled_rows == cancelled_rows + 2
    assert _count("200") == before_ok
    assert len(held_rows) == 2
    assert [len(r.generated) for r, _ in held_rows] == [n for _, n in held_rows]


def test_a_full_server_answers_429_after_the_queue_wait_limit(served, client) -> None:
    import openai

    gate = threading.Event()
    served.hook(lambda rows: gate.wait(60))
    workers = []
    answers: list[Any] = []

    def ask() -> None:
        answers.append(client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4))

    try:
        for _ in range(2):  # max_concurrency = 2: both run (and are held by the gate)
            t = threading.Thread(target=ask)
            t.start()
            workers.append(t)
        end = time.monotonic() + 60
        while served.corrector.admission.running < 2 and time.monotonic() < end:
            time.sleep(0.01)
        assert served.corrector.admission.running == 2
        before = _count("429")
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
        assert info.value.response.headers.get("retry-after") == "1"
        assert "0.5 s" in info.value.body["message"]
        assert _count("429") == before + 1
    finally:
        gate.set()
        for t in workers:
            t.join(120)
    assert len(answers) == 2 and all(a.choices[0].message.role == "assistant" for a in answers)
