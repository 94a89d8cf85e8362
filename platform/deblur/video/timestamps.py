"""Output timestamps repaired where the input's repeat, go back or are missing: strictly increasing,
every frame kept, regular timestamps unchanged (``Timestamps``)."""

from __future__ import annotations

from fractions import Fraction


def rescale(value: int, source: Fraction, target: Fraction) -> int:
    """``value`` ticks of ``source`` in ticks of ``target``, rounded as FFmpeg rounds (half away from 0)."""
    num = value * source.numerator * target.denominator
    den = source.denominator * target.numerator
    half = den // 2
    return (num + half) // den if num >= 0 else -((-num + half) // den)


class Timestamps:
    """Strictly increasing timestamps for frames whose own may repeat, go back or be missing.

    In ticks of the output (the coarser of the encoder's and the container's time bases, so
    that distinct ticks stay distinct in the file). ``push(item, ticks)`` returns the items
    whose timestamp is decided, in order, as ``(item, timestamp)``; ``finish()`` the rest.

    - A frame whose timestamp is after the last one written keeps it (plus the shift below,
      zero unless something was shifted): regular timestamps, gaps (variable frame rates)
      included, come out as they went in.
    - A frame later than the one before it in the source, but not in output ticks (the two
      are closer together than the output's time base), goes one tick after it.
    - A frame whose timestamp is missing, repeats, or goes back by at most ``HOLD`` frames
      is held (up to ``HOLD`` frames) until the next frame with a usable timestamp, then
      placed between the two: at the nominal frame spacing if the interval has room for it
      (a real gap stays after the held frames), evenly if each gets at least half a frame and
      a tick, and otherwise (a coarse time base, a long run) at the nominal spacing with the
      frames that follow shifted by as much as needed, their own spacing kept.
    - A jump back by more than that (files joined end to end, a reset clock) starts a new
      stretch one nominal frame after the last one, with its own spacing kept.
    - Frames held when ``HOLD`` is reached, or at the end, go one after another: a missing
      timestamp one nominal frame after the last, a known one with its spacing kept.
    """

    HOLD = 8  # frames held for the next usable timestamp (the encoder's frames: bounded memory)

    def __init__(self, step: int) -> None:
        self.step = max(1, step)  # nominal frame duration, ticks
        self.jump = self.HOLD * self.step  # a step back further than this is a new stretch
        self.last: int | None = None  # last timestamp given out
        self.offset = 0  # added to the source timestamps from here on
        self.held: list[tuple[object, int | None]] = []
        self.previous: tuple[int, int] | None = None  # (source pts, ticks) of the last frame that had one
        self.frames = self.retimed = 0
        self.counts = {"repeated": 0, "back": 0, "close": 0, "missing": 0}

    def push(self, item: object, ticks: int | None, pts: int | None = None) -> list[tuple[object, int]]:
        """``ticks``: the frame's timestamp in output ticks; ``pts`` the source's own (for the counts)."""
        self.frames += 1
        pts = ticks if pts is None else pts
        previous = self.previous
        self._count(ticks, pts)
        if ticks is None:
            return self._hold(item, None)
        t = ticks + self.offset
        out: list[tuple[object, int]] = []
        if self.last is not None and t <= self.last:
            if not self.held and previous is not None and previous[1] == ticks and previous[0] < pts:
                return [self._give(item, ticks, self.last + 1)]  # closer together than a tick
            if self.last - t <= self.jump:
                return self._hold(item, ticks)
            out += self._release()
            assert self.last is not None
            self.offset += self.last + self.step - t
            t = self.last + self.step
        if self.held:
            placed, t = self._place_before(t)
            out += placed
        out.append(self._give(item, ticks, t))
        return out

    def finish(self) -> list[tuple[object, int]]:
        return self._release()

    def summary(self) -> str | None:
        """What was repaired, or None when nothing was."""
        if not self.retimed:
            return None
        names = {
            "repeated": "repeated",
            "back": "going back",
            "close": "closer together than the output's time base",
            "missing": "missing",
        }
        causes = ", ".join(f"{n} {names[k]}" for k, n in self.counts.items() if n)
        return f"irregular timestamps ({causes}) repaired: {self.retimed} of {self.frames} frames retimed, all kept"

    def _count(self, ticks: int | None, pts: int | None) -> None:
        if pts is None or ticks is None:
            self.counts["missing"] += 1
            return
        if self.previous is not None:
            previous_pts, previous_ticks = self.previous
            if pts == previous_pts:
                self.counts["repeated"] += 1
            elif pts < previous_pts:
                self.counts["back"] += 1
            elif ticks <= previous_ticks:
                self.counts["close"] += 1
        self.previous = (pts, ticks)

    def _give(self, item: object, ticks: int | None, t: int) -> tuple[object, int]:
        if ticks != t:
            self.retimed += 1
        self.last = t
        return item, t

    def _hold(self, item: object, ticks: int | None) -> list[tuple[object, int]]:
        self.held.append((item, ticks))
        return self._release() if len(self.held) >= self.HOLD else []

    def _release(self) -> list[tuple[object, int]]:
        out = []
        for item, ticks in self.held:
            start = -self.step if self.last is None else self.last
            if ticks is None:
                t = start + self.step
            else:
                t = ticks + self.offset
                if t <= start:
                    self.offset += start + self.step - t
                    t = start + self.step
            out.append(self._give(item, ticks, t))
        self.held.clear()
        return out

    def _place_before(self, t: int) -> tuple[list[tuple[object, int]], int]:
        """Give out the held frames before a frame at ``t``; returns them and that frame's timestamp."""
        k, step = len(self.held), self.step
        if self.last is None:  # before the first known timestamp
            times = [t - step * (k - j) for j in range(k)]
        else:
            gap = t - self.last
            if gap >= (k + 1) * step:
                times = [self.last + step * (j + 1) for j in range(k)]
            elif gap >= k + 1 and 2 * gap >= (k + 1) * step:
                times = [self.last + gap * (j + 1) // (k + 1) for j in range(k)]
            else:
                times = [self.last + step * (j + 1) for j in range(k)]
                shift = self.last + step * (k + 1) - t
                self.offset += shift
                t += shift
        placed = [self._give(item, ticks, time) for (item, ticks), time in zip(self.held, times, strict=True)]
        self.held.clear()
        return placed, t
