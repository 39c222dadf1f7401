"""The progress counter actor of generate_ddpm, in a module that imports nothing heavy (the actor's
process imports only this, not torch)."""

from __future__ import annotations


class ProgressCounter:
    """Ray tasks add the images they generate, so the driver's bar moves within a shard."""

    def __init__(self) -> None:
        self.n = 0

    def add(self, n: int) -> None:
        self.n += n

    def value(self) -> int:
        return self.n
