"""Admission control of the serving layer (pure logic on an event loop, no model)."""

from __future__ import annotations

import asyncio

import pytest

from scoreops.serving.scheduler import Admission, QueueFull, QueueWaitExceeded


def test_capacity_is_running_plus_queue_and_beyond_it_is_refused_at_once() -> None:
    async def scenario() -> None:
        adm = Admission(max_concurrency=2, max_queue=1, max_queue_wait=30)
        a, b = await adm.enter(), await adm.enter()
        assert (adm.running, adm.queued) == (2, 0)
        waiting = asyncio.ensure_future(adm.enter())
        await asyncio.sleep(0)
        assert (adm.running, adm.queued) == (2, 1)
        with pytest.raises(QueueFull, match="capacity"):
            await adm.enter()
        a.release()
        c = await waiting  # the waiter got the freed slot, first in first out
        assert (adm.running, adm.queued) == (2, 0)
        a.release()  # a second release of the same slot changes nothing
        assert adm.running == 2
        b.release()
        c.release()
        assert adm.running == 0

    asyncio.run(scenario())


def test_queue_wait_limit_answers_early_and_leaves_the_queue() -> None:
    async def scenario() -> None:
        adm = Admission(max_concurrency=1, max_queue=4, max_queue_wait=0.05)
        held = await adm.enter()
        with pytest.raises(QueueWaitExceeded, match=r"within 0\.05 s"):
            await adm.enter()
        assert (adm.running, adm.queued) == (1, 0)
        held.release()
        assert adm.running == 0

    asyncio.run(scenario())


def test_a_waiter_that_goes_away_frees_its_place_and_does_not_take_a_slot() -> None:
    async def scenario() -> None:
        adm = Admission(max_concurrency=1, max_queue=2, max_queue_wait=30)
        held = await adm.enter()
        gone = asyncio.ensure_future(adm.enter())
        stays = asyncio.ensure_future(adm.enter())
        await asyncio.sleep(0)
        assert adm.queued == 2
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert adm.queued == 1
        held.release()
        slot = await stays
        assert (adm.running, adm.queued) == (1, 0)
        slot.release()
        assert adm.running == 0

    asyncio.run(scenario())


def test_close_fails_the_waiters() -> None:
    async def scenario() -> None:
        adm = Admission(max_concurrency=1, max_queue=1, max_queue_wait=30)
        await adm.enter()
        waiting = asyncio.ensure_future(adm.enter())
        await asyncio.sleep(0)
        adm.close()
        with pytest.raises(QueueFull, match="shutting down"):
            await waiting
        with pytest.raises(QueueFull, match="shutting down"):
            await adm.enter()

    asyncio.run(scenario())
