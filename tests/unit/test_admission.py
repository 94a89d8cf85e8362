"""The endpoint's admission queue (``deblur.serving.admission``), without Ray: a FIFO of bounded length."""

from __future__ import annotations

import asyncio

import pytest

from deblur.serving.admission import Admission, ClusterCapacity, QueueFullError, default_capacity


class Sessions:
    """Open sessions, as the ingress counts them (named actors)."""

    def __init__(self) -> None:
        self.open = 0


def admission(sessions: Sessions, *, capacity: int = 1, max_queue: int = 2, wait_s: float = 60.0) -> Admission:
    return Admission(
        capacity=lambda: capacity, open_sessions=lambda: sessions.open, max_queue=max_queue, wait_s=wait_s, poll_s=0.01
    )


def test_a_request_starts_at_once_while_there_is_room() -> None:
    sessions = Sessions()
    queue = admission(sessions, capacity=2)
    assert queue.try_enter() is None
    sessions.open = 1
    assert queue.try_enter() is None


def test_requests_past_the_capacity_wait_in_order_and_start_first_come_first_served() -> None:
    sessions = Sessions()
    sessions.open = 1
    queue = admission(sessions)
    first, second = queue.try_enter(), queue.try_enter()
    assert (first.position, second.position) == (1, 2)
    assert queue.try_enter(second.ticket).position == 2  # asking again keeps its place
    sessions.open = 0
    assert queue.try_enter(second.ticket).position == 2  # room, but the first comes first
    assert queue.try_enter(first.ticket) is None
    sessions.open = 1
    assert queue.try_enter(second.ticket).position == 1


def test_only_a_full_queue_is_refused() -> None:
    sessions = Sessions()
    sessions.open = 1
    queue = admission(sessions, max_queue=2)
    queue.try_enter(), queue.try_enter()
    with pytest.raises(QueueFullError, match="queue is full"):
        queue.try_enter()


def test_a_ticket_nobody_asks_for_again_gives_up_its_place() -> None:
    sessions = Sessions()
    sessions.open = 1
    queue = admission(sessions)
    queue.ticket_s = 0.0  # every place is stale at the next call
    gone = queue.try_enter()
    assert queue.try_enter().position == 1
    assert queue.try_enter(gone.ticket).position == 1  # a new place: the old one was dropped


def test_a_wait_longer_than_wait_s_is_refused() -> None:
    sessions = Sessions()
    sessions.open = 1
    queue = admission(sessions, wait_s=0.0)
    queued = queue.try_enter()
    with pytest.raises(QueueFullError, match="waited"):
        queue.try_enter(queued.ticket)
    assert queue.waiting == 0


def test_an_upload_waits_inside_its_request_and_leaves_the_queue_when_cancelled() -> None:
    sessions = Sessions()
    sessions.open = 1
    queue = admission(sessions)

    async def scenario() -> None:
        waiting = asyncio.ensure_future(queue.enter())
        await asyncio.sleep(0.05)
        assert not waiting.done() and queue.waiting == 1
        sessions.open = 0
        await asyncio.wait_for(waiting, 1.0)
        sessions.open = 1
        cancelled = asyncio.ensure_future(queue.enter())
        await asyncio.sleep(0.05)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert queue.waiting == 0

    asyncio.run(scenario())


def test_default_capacity_is_whole_session_actors_in_the_free_cpus_or_gpus() -> None:
    two_cores = {"CPU": 2.0}
    assert default_capacity(two_cores, session_cpus=1.0, session_gpus=0.0, reserved_cpus=0.25) == 1
    assert default_capacity(two_cores, session_cpus=0.5, session_gpus=0.0, reserved_cpus=0.25) == 3
    assert default_capacity({"CPU": 16.0, "GPU": 2.0}, session_cpus=1.0, session_gpus=0.5, reserved_cpus=0.25) == 4
    assert default_capacity({"CPU": 0.5}, session_cpus=1.0, session_gpus=0.0, reserved_cpus=0.25) == 1


def test_cluster_capacity_follows_the_cluster_and_a_fixed_limit_wins() -> None:
    cluster = {"CPU": 2.0}
    capacity = ClusterCapacity(
        lambda: cluster, fixed=None, session_cpus=1.0, session_gpus=0.0, reserved_cpus=0.25, every_s=0.0
    )
    assert capacity() == 1
    cluster["CPU"] = 8.0  # a node joined
    assert capacity() == 7
    fixed = ClusterCapacity(lambda: cluster, fixed=2, session_cpus=1.0, session_gpus=0.0, reserved_cpus=0.25)
    assert fixed() == 2
