"""Admission of new sessions and uploads: a bounded FIFO queue in front of the session actors.

A new session or upload starts at once when fewer sessions are open than the capacity and nobody
is waiting; otherwise it takes a place in the queue. A session request (``POST /v1/sessions``) is
answered 202 with its place and a ticket, and asks again with the ticket after ``Retry-After``; a
ticket not asked for within ``ticket_s`` is dropped (its client went away). An upload has sent its
body already, so it waits in the queue inside its request. Only a full queue, or a wait longer
than ``wait_s``, is refused (503 with ``Retry-After``).

Each ingress replica keeps its own queue; the open sessions they count are the cluster's (named
actors), so replicas never admit past the capacity by more than the requests admitted in the same
instant. Plain asyncio, no Ray: the capacity and the count of open sessions are callables.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Admission", "ClusterCapacity", "QueueFullError", "Queued", "default_capacity"]

RETRY_AFTER_S = 1


class QueueFullError(Exception):
    """No place in the queue (or waited too long): the 503 the caller answers."""


@dataclass(frozen=True)
class Queued:
    """A request that must ask again: its place (1 = next) and the ticket that keeps it."""

    position: int
    ticket: str
    waiting: int  # requests in this replica's queue

    def body(self) -> dict[str, object]:
        return {"status": "queued", "position": self.position, "ticket": self.ticket, "retry_after_s": RETRY_AFTER_S}


@dataclass
class _Place:
    since: float = field(default_factory=time.monotonic)
    seen: float = field(default_factory=time.monotonic)


def default_capacity(
    resources: dict[str, float], *, session_cpus: float, session_gpus: float, reserved_cpus: float
) -> int:
    """Sessions the cluster holds at once: whole session actors in its CPUs (or GPUs), at least one.

    ``reserved_cpus``: what the ingress replicas hold already.
    """
    if session_gpus > 0:
        fit = resources.get("GPU", 0.0) / session_gpus
    else:
        fit = (resources.get("CPU", 0.0) - reserved_cpus) / session_cpus
    return max(1, int(fit + 1e-9))


class ClusterCapacity:
    """``max_sessions`` when set, else ``default_capacity`` of the cluster's resources, read at most
    every ``every_s`` (the cluster grows and shrinks; a call to Ray per poll would be too many)."""

    def __init__(
        self,
        resources: Callable[[], dict[str, float]],
        *,
        fixed: int | None,
        session_cpus: float,
        session_gpus: float,
        reserved_cpus: float,
        every_s: float = 5.0,
    ) -> None:
        self.resources, self.fixed, self.every_s = resources, fixed, every_s
        self.sizes = {"session_cpus": session_cpus, "session_gpus": session_gpus, "reserved_cpus": reserved_cpus}
        self.read, self.value = -float("inf"), 1

    def __call__(self) -> int:
        if self.fixed is not None:
            return self.fixed
        if time.monotonic() - self.read > self.every_s:
            self.value = default_capacity(dict(self.resources()), **self.sizes)
            self.read = time.monotonic()
        return self.value


class Admission:
    """The FIFO queue of one ingress replica (see the module's doc)."""

    def __init__(
        self,
        *,
        capacity: Callable[[], int],
        open_sessions: Callable[[], int],
        max_queue: int,
        wait_s: float,
        ticket_s: float = 15.0,
        poll_s: float = 0.25,
    ) -> None:
        self.capacity, self.open_sessions = capacity, open_sessions
        self.max_queue, self.wait_s, self.ticket_s, self.poll_s = max_queue, wait_s, ticket_s, poll_s
        self.places: OrderedDict[str, _Place] = OrderedDict()

    @property
    def waiting(self) -> int:
        self._prune()
        return len(self.places)

    def try_enter(self, ticket: str | None = None) -> Queued | None:
        """None: start now. Else the request's place in the queue. Raises ``QueueFullError``."""
        self._prune()
        place = self.places.get(ticket) if ticket else None
        now = time.monotonic()
        if place is None:
            if not self.places and self._free():
                return None
            if len(self.places) >= self.max_queue:
                raise QueueFullError(
                    f"the queue is full ({self.max_queue} waiting for {self.capacity()} sessions): try again later"
                )
            ticket = secrets.token_hex(8)
            place = self.places[ticket] = _Place(since=now, seen=now)
        elif now - place.since > self.wait_s:
            del self.places[ticket]  # type: ignore[arg-type]
            raise QueueFullError(f"waited {self.wait_s:g} s in the queue without a free session: try again later")
        assert ticket is not None
        place.seen = now
        position = list(self.places).index(ticket) + 1
        if position == 1 and self._free():
            del self.places[ticket]
            return None
        return Queued(position=position, ticket=ticket, waiting=len(self.places))

    async def enter(self) -> None:
        """Wait in the queue inside the request (uploads); returns when it may start."""
        queued = self.try_enter()
        try:
            while queued is not None:
                await asyncio.sleep(self.poll_s)
                queued = self.try_enter(queued.ticket)
        finally:
            if queued is not None:  # cancelled (the client went away) or refused: leave the queue
                self.places.pop(queued.ticket, None)

    def _free(self) -> bool:
        return self.open_sessions() < self.capacity()

    def _prune(self) -> None:
        now = time.monotonic()
        for ticket in [t for t, p in self.places.items() if now - p.seen > self.ticket_s]:
            del self.places[ticket]
