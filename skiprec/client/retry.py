"""When to try a request again and how long to wait: pure functions.

What is retried (everything else is raised at once):

- no answer: a connection refused, reset or timed out, a broken reply. For a
  request that is safe to repeat (every GET and DELETE, ``POST /events`` whose
  event ids are fixed before the first attempt, ``POST .../rank`` which writes
  nothing). A request that is not (``POST /admin/reload``) is retried only when it
  cannot have reached the service: the connection was never made.
- 503 (the service's "try later": Redis, the model, the inference queue; its
  ``Retry-After`` is honoured), and a gateway's 502/504.
- never a 4xx: the request is wrong and stays wrong.

The wait before retry n (1-based) is ``min(max_backoff_s, base_backoff_s * 2**(n-1))``
shortened by up to ``jitter`` of itself at random (so clients that failed together
do not come back together; OpenAI's python client uses the same shape), and at
least the server's ``Retry-After``. Attempts stop at ``max_attempts`` or when the
next wait would end past ``max_total_s`` from the first attempt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

RETRY_STATUSES = frozenset({502, 503, 504})
# Errors raised before the request left: safe to retry whatever the request does.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# Errors after which the request may or may not have reached the service.
MAYBE_SENT = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently a request is tried (``NO_RETRIES``: once)."""

    max_attempts: int = 4
    base_backoff_s: float = 0.1
    max_backoff_s: float = 5.0
    jitter: float = 0.25  # the largest fraction a wait is shortened by, at random
    max_total_s: float = 30.0  # from the first attempt to the end of the last wait

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts: at least 1")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError("jitter: between 0 and 1")
        if min(self.base_backoff_s, self.max_backoff_s, self.max_total_s) < 0:
            raise ValueError("backoff and total times: not negative")


NO_RETRIES = RetryPolicy(max_attempts=1)


def backoff_s(
    policy: RetryPolicy, failed_attempts: int, random_fraction: float
) -> float:
    """The wait after ``failed_attempts`` (>= 1) failures, jittered by a [0, 1) draw."""
    # Past 2**60 the cap applies anyway; the bound keeps 2.0**n finite.
    exponent = min(failed_attempts - 1, 60)
    ceiling = min(policy.max_backoff_s, policy.base_backoff_s * 2.0**exponent)
    return ceiling * (1.0 - policy.jitter * random_fraction)


def retry_delay(
    policy: RetryPolicy,
    failed_attempts: int,
    elapsed_s: float,
    retry_after_s: float | None,
    random_fraction: float,
) -> float | None:
    """Seconds to wait before the next attempt, or None to give up.

    ``elapsed_s`` is the time since the first attempt started; ``retry_after_s`` the
    server's ``Retry-After`` (a floor on the wait), if it sent one.
    """
    if failed_attempts >= policy.max_attempts:
        return None
    delay = backoff_s(policy, failed_attempts, random_fraction)
    if retry_after_s is not None:
        delay = max(delay, retry_after_s)
    if elapsed_s + delay > policy.max_total_s:
        return None
    return delay


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """``Retry-After`` in seconds: delta-seconds or an HTTP date (RFC 9110 10.2.3)."""
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            moment = parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None  # unreadable: the backoff alone decides
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        seconds = (moment - (now or datetime.now(UTC))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)


def transport_error_is_retryable(error: httpx.TransportError, idempotent: bool) -> bool:
    """Whether a request that failed with ``error`` may be sent again."""
    if isinstance(error, NOT_SENT):
        return True
    return idempotent and isinstance(error, MAYBE_SENT)
