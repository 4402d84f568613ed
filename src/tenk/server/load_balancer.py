"""Which data-parallel replica takes the next request: the lowest `waiting * 4 + running`
(vLLM V1's rule: a waiting request costs a prefill, which delays every running one), ties
broken round robin so equal replicas take turns instead of the first one taking all."""

from __future__ import annotations

WAITING_WEIGHT = 4


def score(waiting: int, running: int) -> int:
    return waiting * WAITING_WEIGHT + running


class LeastLoaded:
    def __init__(self) -> None:
        self._next = 0  # where the round robin starts looking

    def pick(self, loads: list[tuple[int, int] | None]) -> int | None:
        """Index of the replica to use, given each replica's (waiting, running), None for a
        replica that cannot take requests; None when none can."""
        n = len(loads)
        best, best_score = None, 0
        for k in range(n):
            i = (self._next + k) % n
            load = loads[i]
            if load is None:
                continue
            s = score(*load)
            if best is None or s < best_score:
                best, best_score = i, s
        if best is not None:
            self._next = (best + 1) % n
        return best
