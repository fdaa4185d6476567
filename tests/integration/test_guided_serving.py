"""The guided strategy behind ``scoreops serve`` (hf backend, the tiny model), queried with the
official ``openai`` client: the answer and its search trace, each critic that runs without a
reward model, streamed steps, the per-request budgets and a disconnect during the search.

The tiny model writes random tokens, so steps end at a space (``stepDelimiter: " "``): most
of SmolLM2's tokens start with one.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_serving import Server, _metric, _metrics, _wait_for_idle

pytestmark = [pytest.mark.integration]

MODEL = "tiny"
BUDGET = 400  # --max-total-tokens
TIMEOUT = 60  # --request-timeout
SEARCH = {"beam": 1, "expand": 2, "maxSteps": 32, "critic": "tool", "stepDelimiter": " "}


class ServeCommand(Server):
    """``scoreops serve`` (the CLI a user runs) instead of the container entrypoint."""

    def __init__(self, args: list[str], log: Path) -> None:
        from test_serving import _free_port

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._fh = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "scoreops", "serve", "--host", "127.0.0.1", "--port",
             str(self.port), *args], stdout=self._fh, stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeCommand]:
    from testkit.tiny import build_tiny_model

    model = build_tiny_model(tmp_path_factory.mktemp("tiny-guided"))
    srv = ServeCommand(["--model", str(model), "--name", MODEL, "--backend", "hf",
                        "--strategy", "guided", "--strategy-json", json.dumps(SEARCH),
                        "--max-tokens", "32", "--default-max-tokens", "24", "--max-n", "4",
                        "--max-total-tokens", str(BUDGET), "--request-timeout", str(TIMEOUT),
                        "--dtype", "float32", "--torch-threads", "1"],
                       tmp_path_factory.mktemp("guided-logs") / "server.log")
    try:
        srv.wait_ready()
        yield srv
    finally:
        code = srv.stop()
        assert code == 0, f"server exited with {code}:\n{srv.tail()}"


@pytest.fixture(scope="module")
def client(server: ServeCommand):
    import openai

    with openai.OpenAI(base_url=f"{server.url}/openai/v1", api_key="unused",
                       max_retries=0, timeout=120) as c:
        yield c


def _user(text: str = "What is 7 + 5?") -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _chosen_text(search: dict) -> str:
    return "".join(search["nodes"][n]["text"] for n in search["chosen"])


def test_a_guided_answer_comes_with_its_search_tree(client) -> None:
    resp = client.chat.completions.create(
        model=MODEL, messages=_user(), max_tokens=24, temperature=0.8, seed=1,
        extra_body={"scoreops": {"return_attempts": True}})
    choice = resp.model_dump()["choices"][0]
    trace = choice["scoreops"]
    assert trace["strategy"] == "guided"
    search = trace["search"]
    assert search["critic"] == "tool" and (search["beam"], search["expand"]) == (1, 2)
    assert choice["message"]["content"] == _chosen_text(search)
    # every step sampled expand candidates (beam x expand at the first); one kept per step
    depths = [n["d"] for n in search["nodes"]]
    assert depths.count(1) == 2 and all(depths.count(d) == 2 for d in set(depths))
    assert sum(n["kept"] for n in search["nodes"]) == search["depth"]
    assert 1 <= resp.usage.completion_tokens <= BUDGET


def test_the_self_eval_critic_runs_through_the_decode_loop(client) -> None:
    resp = client.chat.completions.create(
        model=MODEL, messages=_user(), max_tokens=16, temperature=0.8, seed=2,
        extra_body={"scoreops": {"critic": "self-eval", "return_attempts": True}})
    search = resp.model_dump()["choices"][0]["scoreops"]["search"]
    assert search["critic"] == "self-eval"
    assert search["critic_tokens"] == len(search["nodes"])  # one verdict token per candidate
    assert all(0.0 <= n["score"] <= 1.0 for n in search["nodes"])


def test_streaming_sends_the_steps_as_they_are_fixed(client) -> None:
    deltas: list[str] = []
    trace = None
    with client.chat.completions.create(
            model=MODEL, messages=_user(), max_tokens=24, temperature=0.8, seed=3,
            stream=True, extra_body={"scoreops": {"return_attempts": True}}) as stream:
        for chunk in stream:
            for ch in chunk.model_dump()["choices"]:
                if ch["delta"].get("content"):
                    deltas.append(ch["delta"]["content"])
                if ch.get("scoreops"):
                    trace = ch["scoreops"]
    assert trace is not None
    search = trace["search"]
    assert "".join(deltas) == _chosen_text(search)
    # beam 1: each step is fixed as soon as it is chosen and sent on its own
    assert len(deltas) >= min(2, search["steps"])
    assert deltas[0] == search["nodes"][search["chosen"][0]]["text"]


def test_asking_for_more_than_the_service_allows_is_a_400_naming_the_field(client) -> None:
    import openai

    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=_user(), max_tokens=8,
                                       extra_body={"scoreops": {"max_total_tokens": BUDGET + 1}})
    assert info.value.body["param"] == "scoreops.max_total_tokens"
    assert str(BUDGET) in info.value.body["message"]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=_user(), max_tokens=8,
                                       extra_body={"scoreops": {"timeout_seconds": TIMEOUT * 2}})
    assert info.value.body["param"] == "scoreops.timeout_seconds"


def test_a_requests_token_budget_is_enforced(client) -> None:
    resp = client.chat.completions.create(
        model=MODEL, messages=_user(), max_tokens=32, temperature=0.8, seed=4, n=2,
        extra_body={"scoreops": {"max_total_tokens": 40, "return_attempts": True}})
    searches = [c["scoreops"]["search"] for c in resp.model_dump()["choices"]]
    assert sum(s["generated_tokens"] for s in searches) <= 40
    assert resp.usage.completion_tokens <= 40


def test_a_disconnect_during_the_search_cancels_it(server: ServeCommand) -> None:
    labels = {"model": MODEL, "route": "chat"}
    before = _metrics(server)
    ok, cancelled = (_metric(before, "scoreops_requests_total", **labels, status=s)
                     for s in ("200", "cancelled"))
    body = {"model": MODEL, "messages": _user("Count to a hundred."), "max_tokens": 32,
            "n": 4, "temperature": 1.0, "stream": True,
            "scoreops": {"critic": "self-eval"}}
    with httpx.stream("POST", f"{server.url}/openai/v1/chat/completions", json=body,
                      timeout=120) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.startswith("data: "):
                break  # leaving the block closes the connection
    after = _wait_for_idle(server)
    assert _metric(after, "scoreops_requests_total", **labels, status="cancelled") == (
        cancelled + 1)
    assert _metric(after, "scoreops_requests_total", **labels, status="200") == ok
    assert _metric(after, "scoreops_decode_rows", model=MODEL) == 0
    time.sleep(0.2)
    assert httpx.get(f"{server.url}/v2/health/ready").json() == {"ready": True}
