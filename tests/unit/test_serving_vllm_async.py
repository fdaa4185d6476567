"""The vllm serving backend's bookkeeping (:mod:`scoreops.serving.vllm_async`) on a stand-in
for vLLM's ``AsyncLLM`` (pure logic: the real engine is exercised by
``tests/integration/test_vllm_serving.py`` under ``.venv-vllm``)."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import wait
from types import SimpleNamespace
from typing import Any

import pytest

from scoreops.rollout.types import SamplingParams
from scoreops.serving.decode import Cancelled, Row
from scoreops.serving.vllm_async import AsyncVLLMDecoder


class _Tokenizer:
    eos_token_id = 0

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(f"<{i}>" for i in ids)


class _FakeLLM:
    """Yields one token per ``delay`` seconds as DELTA outputs, as ``AsyncLLM.generate``;
    records aborts; aborts on cancellation like vLLM's generator."""

    def __init__(self, delay: float = 0.01) -> None:
        self.delay = delay
        self.aborted: list[str] = []
        self.unfinished: set[str] = set()

    async def generate(self, prompt: dict, sampling: Any, request_id: str):
        self.unfinished.add(request_id)
        try:
            for i in range(sampling.max_tokens):
                await asyncio.sleep(self.delay)
                last = i == sampling.max_tokens - 1
                yield SimpleNamespace(finished=last, outputs=[SimpleNamespace(
                    token_ids=[10 + i], logprobs=[{10 + i: SimpleNamespace(logprob=-0.5)}],
                    finish_reason="length" if last else None)])
            self.unfinished.discard(request_id)
        except (asyncio.CancelledError, GeneratorExit):
            await self.abort(request_id)
            raise

    async def abort(self, request_id: str) -> None:
        if request_id in self.unfinished:
            self.aborted.append(request_id)
            self.unfinished.discard(request_id)

    def shutdown(self) -> None:
        pass


@pytest.fixture
def decoder() -> Any:
    dec = AsyncVLLMDecoder(_Tokenizer(), max_model_len=None, eos={0})
    dec.llm = _FakeLLM()
    dec._sampling = lambda row: SimpleNamespace(max_tokens=row.params.max_new_tokens)
    yield dec
    dec.close()


def _row(tokens: int, on_token: Any = None) -> Row:
    return Row(prompt=[1, 2, 3], params=SamplingParams(max_new_tokens=tokens), seed=0,
               on_token=on_token)


def _until(cond: Any, seconds: float = 5.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.005)
    return False


def test_tokens_reach_the_row_as_they_come_and_the_completion_at_the_end(decoder) -> None:
    seen: list[int] = []
    row = _row(5, on_token=lambda r: seen.append(len(r.generated)))
    decoder.submit([row])
    done = row.future.result(timeout=5)
    assert seen == [1, 2, 3, 4]  # each token as it came; the last is the completion's
    assert done.token_ids == [10, 11, 12, 13, 14]
    assert done.logprobs == [-0.5] * 5
    assert done.text == "<10><11><12><13><14>" and done.finish_reason == "length"
    assert _until(lambda: decoder.running == 0)


def test_cancel_aborts_the_request_in_the_engine_and_frees_the_row(decoder) -> None:
    long, other = _row(1000), _row(20)
    decoder.submit([long, other])
    assert _until(lambda: len(long.generated) >= 2)
    assert decoder.running == 2
    decoder.cancel([long])
    with pytest.raises(Cancelled):
        long.future.result(timeout=5)
    assert decoder.llm.aborted and decoder.llm.aborted[0].startswith("scoreops-")
    assert other.future.result(timeout=5).token_ids[-1] == 29  # the other row went on
    assert _until(lambda: decoder.running == 0)
    assert decoder.cancelled_rows == 1


def test_a_row_cancelled_before_it_started_fails_and_never_runs(decoder) -> None:
    rows = [_row(10) for _ in range(3)]
    for r in rows:
        r.cancelled = True
    decoder.submit(rows)
    wait([r.future for r in rows], timeout=5)
    assert all(isinstance(r.future.exception(), Cancelled) for r in rows)
    assert decoder.llm.unfinished == set() and decoder.llm.aborted == []
    assert decoder.running == 0 and decoder.waiting == 0


def test_a_task_cancelled_before_its_first_step_still_resolves_its_row(decoder) -> None:
    row = _row(10)

    def begin_and_cancel() -> None:  # both in one loop iteration: the body never runs
        decoder._begin(row)
        decoder._cancel([row])

    decoder._submitted += 1
    decoder._loop.call_soon_threadsafe(begin_and_cancel)
    with pytest.raises(Cancelled):
        row.future.result(timeout=5)
    assert _until(lambda: decoder.running == 0)


def test_engine_steps_report_vllm_load_and_the_batch(decoder) -> None:
    batches: list[int] = []
    decoder.step_hook = lambda rows: batches.append(len(rows))
    rows = [_row(200) for _ in range(3)]
    decoder.submit(rows)
    assert _until(lambda: decoder.running == 3)
    decoder._engine_step(SimpleNamespace(num_running_reqs=3, num_waiting_reqs=1,
                                         kv_cache_usage=0.25), None)
    assert (decoder.load.running, decoder.load.waiting, decoder.load.steps) == (3, 1, 1)
    assert batches == [3]
    decoder.cancel(rows)
    wait([r.future for r in rows], timeout=5)
    # nothing of ours is left in the engine: its last step's figures are not kept
    assert _until(lambda: decoder.load.running == 0 and decoder.load.kv_cache_usage == 0.0)


def test_closed_decoder_refuses_rows(decoder) -> None:
    decoder.close()
    with pytest.raises(RuntimeError, match="closed"):
        decoder.submit([_row(3)])
