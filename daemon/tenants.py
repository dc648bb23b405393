"""Per-tenant limits: each bearer token in the keys file is a tenant with its own limits.

A line of `security.api_keys_file` is a token, then optional limits:

    s3cret-token-of-team-a  tenant=team-a  concurrency=8  rps=20  tokens_per_min=60000

- `concurrency`: calls in flight at once (streams count until they end);
- `rps`: calls per second, a token bucket holding one second's worth (bursts up to `rps`);
- `tokens_per_min`: LLM tokens (prompt + completion) per minute, a token bucket holding
  one minute's worth; a generation request is admitted while the bucket is above zero, its
  prompt is charged once the engine has queued it and each completion token as the engine
  samples it, however the request then ends (finished, cancelled, expired, failed), so one
  long request may leave the bucket in debt;
- `tenant`: the name in logs and metrics (default: `tenant-` and the token's hash prefix;
  the token itself is never logged).

0 or absent means unlimited. Past a limit: RESOURCE_EXHAUSTED saying which limit, with a
`google.rpc.RetryInfo` detail (and "retry in N s" in the text) telling when to come back.
"""

from __future__ import annotations

import contextvars
import dataclasses
import hashlib
import math
import threading
import time
from dataclasses import dataclass, field

from engines.config import ConfigError
from engines.errors import ResourceExhausted
from engines.llm.types import GenerationRequest

# The tenant of the call being handled, set by the interceptor (each call runs in its own
# task, so this never leaks between calls); servicers charge LLM tokens to it.
CURRENT: contextvars.ContextVar[Tenant | None] = contextvars.ContextVar("galactic_tenant", default=None)
LIMIT_KEYS = ("concurrency", "rps", "tokens_per_min")


class RateLimited(ResourceExhausted):
    """A tenant's limit is reached; `retry_after_s` says when to come back."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(f"{message}; retry in {retry_after_s:.2f} s")
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class TenantLimits:
    concurrency: int = 0
    rps: float = 0.0
    tokens_per_min: float = 0.0


class TokenBucket:
    """`rate` tokens per second up to `capacity`. Thread-safe (charged from any task)."""

    def __init__(self, rate: float, capacity: float) -> None:
        self.rate, self.capacity = rate, capacity
        self._level = capacity
        self._at = time.monotonic()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self._level = min(self.capacity, self._level + (now - self._at) * self.rate)
        self._at = now

    def take(self, n: float) -> float:
        """Take `n` if the bucket holds them and return 0, else the seconds until it would."""
        with self._lock:
            self._refill()
            if self._level >= n:
                self._level -= n
                return 0.0
            return (n - self._level) / self.rate

    def wait_positive(self) -> float:
        """0 if the bucket is above zero, else the seconds until it is."""
        with self._lock:
            self._refill()
            return 0.0 if self._level > 0 else (1e-3 - self._level) / self.rate

    def charge(self, n: float) -> None:
        """Take `n` unconditionally (the work is done); the level may go negative."""
        with self._lock:
            self._refill()
            self._level -= n


@dataclass(eq=False)
class Tenant:
    name: str
    limits: TenantLimits
    in_flight: int = 0
    _rps: TokenBucket | None = field(default=None, repr=False)
    _tokens: TokenBucket | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        lim = self.limits
        if lim.rps:
            self._rps = TokenBucket(lim.rps, max(lim.rps, 1.0))
        if lim.tokens_per_min:
            self._tokens = TokenBucket(lim.tokens_per_min / 60.0, lim.tokens_per_min)

    def admit(self, uses_tokens: bool) -> None:
        """Count a new call in, or raise RateLimited naming the limit it would pass."""
        lim = self.limits
        if lim.concurrency and self.in_flight >= lim.concurrency:
            raise RateLimited(f"tenant {self.name}: {lim.concurrency} calls already in flight", 1.0)
        if uses_tokens:
            self.check_tokens()
        if self._rps is not None:
            wait = self._rps.take(1)
            if wait:
                raise RateLimited(f"tenant {self.name}: {lim.rps:g} calls per second", wait)
        self.in_flight += 1

    def check_tokens(self) -> None:
        """RateLimited while the tenant's token budget is spent (in debt until it refills)."""
        if self._tokens is not None:
            wait = self._tokens.wait_positive()
            if wait:
                raise RateLimited(f"tenant {self.name}: {self.limits.tokens_per_min:g} tokens per minute used", wait)

    def release(self) -> None:
        self.in_flight -= 1

    def charge(self, tokens: int) -> None:
        if self._tokens is not None:
            self._tokens.charge(tokens)


def bind(request: GenerationRequest) -> GenerationRequest:
    """`request` stamped with the current call's tenant: its name (the scheduler's fairness
    key) and its meter (the engine charges tokens to it as they are used). Every front end
    hands its requests to the engine through this, so none can skip the budget: a tenant
    whose token budget is spent is refused here (RateLimited), whichever call carries the
    request (a KServe call that may serve a tensor model, a Session's next submit)."""
    tenant = CURRENT.get()
    if tenant is None:
        return request
    tenant.check_tokens()
    meter = tenant.charge if tenant.limits.tokens_per_min else None
    return dataclasses.replace(request, tenant=tenant.name, meter=meter)


def parse_line(line: str, key: str) -> tuple[str, str, TenantLimits]:
    """`TOKEN [tenant=NAME] [concurrency=N] [rps=X] [tokens_per_min=X]` -> (token, name, limits)."""
    token, *options = line.split()
    values: dict[str, float] = {}
    name = "tenant-" + hashlib.sha256(token.encode()).hexdigest()[:8]
    for option in options:
        k, sep, v = option.partition("=")
        if k == "tenant" and sep and v:
            name = v
            continue
        if k not in LIMIT_KEYS or not sep:
            raise ConfigError(key, f"unknown option {k!r} after a token (known: tenant, {', '.join(LIMIT_KEYS)})")
        try:
            values[k] = float(v)
        except ValueError:
            raise ConfigError(key, f"{k} must be a number, got {v!r}") from None
        if not (math.isfinite(values[k]) and values[k] >= 0):
            raise ConfigError(key, f"{k} must be >= 0")
    return token, name, TenantLimits(concurrency=int(values.get("concurrency", 0)), rps=values.get("rps", 0.0),
                                      tokens_per_min=values.get("tokens_per_min", 0.0))
