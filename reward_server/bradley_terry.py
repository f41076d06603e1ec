"""Bradley-Terry strengths from pairwise outcomes: pure Python, no database, no torch.

Used by the rating queue to score the images of an A/B job.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence


def bradley_terry(
    n: int, wins: Sequence[tuple[int, int]], prior: float = 1.0, iters: int = 200
) -> list[float]:
    """Log-strengths of n items from (winner, loser) index pairs.

    Each item also plays a reference of strength 1 and gets `prior` virtual wins
    and losses against it: undefeated items stay finite, and a score is the
    log-odds of beating that reference (0 = even). Fitted by the MM algorithm.
    """
    strength = [1.0] * n
    won = [prior] * n
    games: dict[tuple[int, int], int] = defaultdict(int)
    for w, lo in wins:
        won[w] += 1
        games[(min(w, lo), max(w, lo))] += 1
    for _ in range(iters):
        denom = [2 * prior / (s + 1.0) for s in strength]
        for (i, j), count in games.items():
            shared = count / (strength[i] + strength[j])
            denom[i] += shared
            denom[j] += shared
        new = [won[i] / denom[i] for i in range(n)]
        delta = max(abs(a - b) for a, b in zip(new, strength, strict=True)) if n else 0.0
        strength = new
        if delta < 1e-10:
            break
    return [math.log(s) for s in strength]
