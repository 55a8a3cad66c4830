"""Timestamp correction, applied once at the source (architecture decision 1).

SRS corrects per consumer; we do it once per stream so every player sees the same timeline and can share the
same encoded bytes. A player that joins late starts at the source's current time, not at 0.
"""

from __future__ import annotations

# SRS's CONST_MAX_JITTER_MS and DEFAULT_FRAME_TIME_MS: a jump of more than ±250 ms between two consecutive
# messages is a discontinuity (encoder restart, republish, wrap) and becomes a +10 ms step.
MAX_JITTER_MS = 250
DEFAULT_FRAME_TIME_MS = 10

JITTER_FULL = "full"
JITTER_ZERO = "zero"
JITTER_OFF = "off"


class Jitter:
    """Turns publisher timestamps into the source's output timeline."""

    __slots__ = ("mode", "last_in", "last_out", "zero_base", "started")

    def __init__(self, mode: str = JITTER_FULL):
        self.mode = mode
        self.last_in: int | None = None
        self.last_out = 0
        self.zero_base: int | None = None
        self.started = False   # whether any message went out yet: a republish then steps on, never repeats

    def correct(self, timestamp: int) -> int:
        if self.mode == JITTER_FULL:
            if self.last_in is None:
                out = self.last_out + (DEFAULT_FRAME_TIME_MS if self.started else 0)
                self.started = True
            else:
                delta = timestamp - self.last_in
                if delta < -MAX_JITTER_MS or delta > MAX_JITTER_MS:
                    delta = DEFAULT_FRAME_TIME_MS
                out = max(0, self.last_out + delta)
            self.last_in = timestamp
            self.last_out = out
            return out
        if self.mode == JITTER_ZERO:
            if self.zero_base is None:
                self.zero_base = timestamp
            out = max(0, timestamp - self.zero_base)
            self.last_out = out
            return out
        self.last_out = timestamp
        return timestamp

    def on_new_publisher(self) -> None:
        """A republish starts a new input timeline; the output timeline goes on where it was."""
        self.last_in = None
        if self.mode == JITTER_ZERO:
            self.zero_base = None

    def snapshot(self) -> dict:
        return {"mode": self.mode, "last_in": self.last_in, "last_out": self.last_out, "zero_base": self.zero_base,
                "started": self.started}

    @classmethod
    def restore(cls, d: dict) -> "Jitter":
        self = cls(d["mode"])
        self.last_in, self.last_out, self.zero_base = d["last_in"], d["last_out"], d["zero_base"]
        self.started = d["started"]
        return self
