"""Retry delay: exponential backoff capped at a maximum, with jitter so that a burst
of failures does not come back as a burst of retries."""

from __future__ import annotations

import random


def retry_delay(attempt: int, backoff: float, backoff_max: float,
                rng: random.Random | None = None) -> float:
    """Delay before the next run after failed attempt number ``attempt`` (1-based).

    ``min(backoff_max, backoff * 2**(attempt-1))`` scaled by a jitter factor in
    [0.5, 1.0], so the result never exceeds the documented ceiling.
    """
    if attempt < 1:
        raise ValueError("attempt is 1-based")
    exponent = min(attempt - 1, 62)  # keeps the float finite for absurd attempt counts
    base = min(float(backoff_max), float(backoff) * (2.0**exponent))
    factor = (rng or random).uniform(0.5, 1.0)
    return base * factor
