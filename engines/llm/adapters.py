"""The adapter registry: named LoRA adapters resident in the model's `LoRABank`.

Policy lives here: load paths must lie inside `adapters.root` (symlinks resolved first, so
`../` or a link cannot escape it); at `max_loaded` the least recently used *idle* adapter
that nobody pinned is evicted, and if every adapter serves requests the load is refused
(ResourceExhausted) rather than pulling weights from under a running stream. `LoadAdapter`
and `preload` pin; adapters loaded on demand (`OnDemandLoads`: a request names
`root/<name>`) do not, so on-demand traffic never evicts an explicit load; an explicit
load may still evict an idle pinned one when no unpinned one is idle, as it always could.
Counting `in_use` covers queued requests too, since they resolved their adapter at
enqueue. An adapter whose metadata names another base model than the one served is refused
(FailedPrecondition, both hashes named).

Locks are the engine's: `lock` guards the registry (short sections); `model_lock` is held
for the whole scheduler step, so bank writes taken under it never race a forward pass.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

from engines.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    GalacticError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from engines.llm.config import AdapterConfig
from engines.paths import confine
from engines.llm.identity import METADATA_FILE, model_content_hash, read_metadata
from engines.llm.lora import AdapterWeights, LoRABank, read_adapter
from engines.llm.metrics import ModelMetrics
from engines.llm.types import AdapterInfo

log = logging.getLogger(__name__)

# A directory under the root is an adapter's name when it follows the rule of every name a
# request carries (daemon/validation.py NAME_PATTERN): it cannot then be `..`, hold a `/`,
# or start with a dot (hidden dirs, rsync's partial files, a synced tree's temp dirs).
DIR_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(eq=False)
class Adapter:
    name: str
    path: str
    rank: int
    slot: int  # row index into the bank's stacked weights
    loaded_at: float
    last_used: float
    in_use: int = 0
    unloading: bool = False  # new requests naming it get NotFound
    pinned: bool = False  # loaded by LoadAdapter or preload: on-demand loads never evict it
    generation: int = 0  # which load of the name this is: a replaced adapter's cached prefixes never match

    @property
    def cache_key(self) -> str:
        """What its requests' prompts are cached under (`prefix_cache.py`)."""
        return f"{self.name}@{self.generation}"

    def info(self) -> AdapterInfo:
        return AdapterInfo(self.name, self.path, self.rank, self.loaded_at, self.in_use, self.last_used,
                           self.pinned)


class AdapterRegistry:
    def __init__(self, config: AdapterConfig, bank: LoRABank, model_lock: threading.Lock, lock: threading.Lock,
                 model_dir: Path | None = None):
        self.config = config
        self.bank = bank
        self._model_lock = model_lock
        self._lock = lock
        self._by_name: dict[str, Adapter] = {}
        self._model_dir = model_dir
        self._base_hash: str | None = None  # hashed on first need: gigabytes for a large base
        self.evictions = 0
        self.on_evict: Callable[[str], None] = lambda name: None  # the engine's metric
        # Called under `lock` when an adapter leaves (evicted or unloaded): the engine drops
        # its cached prefixes.
        self.on_remove: Callable[[Adapter], None] = lambda adapter: None
        self._loads = 0  # adapters installed so far: the next one's generation

    def base_hash(self) -> str:
        """Blocking: the served model's content hash (computed once)."""
        if self._base_hash is None:
            if self._model_dir is None:
                raise FailedPrecondition("the served model has no model dir to identify it by", field="path")
            self._base_hash = model_content_hash(self._model_dir)
        return self._base_hash

    def check_base(self, full: Path) -> None:
        """Blocking: refuse an adapter trained on another base model than the one served.

        An adapter without our metadata (trained elsewhere) passes with a warning, unless
        `adapters.require_metadata` is set."""
        try:
            meta = read_metadata(full)
        except (OSError, ValueError) as exc:
            raise InvalidArgument(f"unreadable {METADATA_FILE}: {exc}", field="path") from None
        if meta is None:
            if self.config.require_metadata:
                raise FailedPrecondition(
                    f"{full} has no {METADATA_FILE} and adapters.require_metadata is set; "
                    "train it with galactic-train lora or add the metadata", field="path")
            log.warning("adapter %s has no %s: its base model cannot be checked", full, METADATA_FILE)
            return
        served = self.base_hash()
        if meta["base_model_hash"] != served:
            raise FailedPrecondition(
                f"adapter was trained on base model {meta['base_model_hash']}, "
                f"but this daemon serves {served}", field="path")

    def __len__(self) -> int:
        return len(self._by_name)

    @property
    def active(self) -> int:
        return sum(1 for a in self._by_name.values() if a.in_use)

    def resolve_dir(self, path: str) -> Path:
        full = confine(path, self.config.resolved_root(), "adapter")
        if not full.is_dir():
            raise NotFound(f"no adapter dir at {full}", field="path")
        return full

    def check_free_name(self, name: str, full: Path | None = None) -> AdapterInfo | None:
        """Raise AlreadyExists if `name` is taken; except that an adapter loaded on demand
        from `full` is pinned now (LoadAdapter of what traffic loaded) and returned."""
        with self._lock:
            adapter = self._by_name.get(name)
            if adapter is None:
                return None
            if full is not None and not adapter.unloading and not adapter.pinned and adapter.path == str(full):
                adapter.pinned = True
                return adapter.info()
            raise AlreadyExists(f"adapter {name!r} is already loaded", field="name")

    def wants_load(self, name: str) -> bool:
        """Whether a request naming `name` should load it on demand first: on by config, a
        name a directory under the root may have, and not in the registry (an adapter being
        unloaded stays there until it is gone: its requests get NotFound meanwhile)."""
        return self.config.on_demand and DIR_NAME.fullmatch(name) is not None and name not in self._by_name

    def check_dir(self, name: str) -> None:
        """NotFound (naming `adapter`) unless `root/<name>` is a directory: one stat, cheap
        enough for the event loop, so that a request naming no adapter fails at once."""
        if not (self.config.resolved_root() / name).is_dir():
            raise NotFound(f"adapter {name!r} is not loaded and {self.config.root}/{name} is not a directory",
                           field="adapter")

    def read(self, path: str) -> tuple[Path, AdapterWeights]:
        """Blocking (file reads, the base model's hash): the adapter dir at `path`, checked
        against the served base model, and its weights; raises what LoadAdapter raises."""
        full = self.resolve_dir(path)
        self.check_base(full)
        return full, read_adapter(full, self.config.resolved_root())

    def load_unpinned(self, name: str) -> None:
        """Blocking: the on-demand load of `root/<name>`: read and checked off the model
        lock, installed unpinned under it. Loaded meanwhile by LoadAdapter is loaded too."""
        full, weights = self.read(name)
        try:
            self.install(name, full, weights, pinned=False)
        except AlreadyExists:
            pass

    def resolvable(self) -> list[str]:
        """Blocking (lists the root): adapters that requests could load on demand, i.e.
        directories under the root with an adapter_config.json that are not loaded."""
        root = self.config.resolved_root()
        try:
            entries = sorted(p for p in root.iterdir() if DIR_NAME.fullmatch(p.name))
        except OSError:
            return []
        with self._lock:
            loaded = set(self._by_name)
        return [p.name for p in entries if p.name not in loaded and (p / "adapter_config.json").is_file()]

    def acquire(self, name: str) -> Adapter:
        """For a new request; the caller holds `lock`."""
        adapter = self._by_name.get(name)
        if adapter is None or adapter.unloading:
            raise NotFound(f"adapter {name!r} is not loaded", field="adapter")
        adapter.in_use += 1
        adapter.last_used = time.time()
        return adapter

    @staticmethod
    def release(adapter: Adapter) -> None:
        """When a request ends; the caller holds `lock`."""
        adapter.in_use -= 1

    def install(self, name: str, full: Path, weights: AdapterWeights, pinned: bool = True) -> AdapterInfo:
        """Blocking (waits for the current step): write the adapter into a bank slot,
        evicting the idle unpinned adapter used longest ago if none is free (an idle
        pinned one too, for a pinned install, when no unpinned one is idle)."""
        with self._model_lock, self._lock:
            if name in self._by_name:
                raise AlreadyExists(f"adapter {name!r} is already loaded", field="name")
            self.bank.check(weights)
            if self.bank.free_slots == 0:
                idle = [a for a in self._by_name.values() if a.in_use == 0 and not a.unloading]
                candidates = [a for a in idle if not a.pinned] or (idle if pinned else [])
                if not candidates:
                    why = "in use" if not idle else "in use or pinned by LoadAdapter"
                    raise ResourceExhausted(f"all {self.config.max_loaded} adapter slots are {why}; retry later")
                victim = min(candidates, key=lambda a: a.last_used)
                log.info("evicting adapter %s (least recently used)", victim.name)
                self.bank.remove(victim.slot)
                del self._by_name[victim.name]
                self.evictions += 1
                self.on_evict(victim.name)
                self.on_remove(victim)
            slot = self.bank.add(weights)
            now = time.time()
            self._loads += 1
            adapter = Adapter(name, str(full), weights.rank, slot, now, now, pinned=pinned, generation=self._loads)
            self._by_name[name] = adapter
            return adapter.info()

    def begin_unload(self, name: str) -> Adapter:
        """Mark the adapter unloading: from now on new requests naming it get NotFound."""
        with self._lock:
            adapter = self._by_name.get(name)
            if adapter is None or adapter.unloading:
                raise NotFound(f"adapter {name!r} is not loaded", field="name")
            adapter.unloading = True
            return adapter

    def remove(self, adapter: Adapter) -> None:
        """Blocking: free the slot once no request uses the adapter."""
        with self._model_lock, self._lock:
            self.bank.remove(adapter.slot)
            self._by_name.pop(adapter.name, None)
            self.on_remove(adapter)

    def infos(self) -> list[AdapterInfo]:
        with self._lock:
            return [a.info() for a in self._by_name.values() if not a.unloading]


# Errors of a load that the same files would raise again: these are remembered for
# `negative_cache_s`. Unavailable (a closing engine) and ResourceExhausted (every slot busy)
# pass with the moment and are not.
_LASTING = (NotFound, FailedPrecondition, InvalidArgument, PermissionDenied)


class OnDemandLoads:
    """Loads that requests trigger, one per name at a time (single flight), with a negative
    cache; used on the event loop only, so its dicts need no lock.

    `start(name)` returns the load in flight (starting one if none is): a future every
    request naming `name` awaits (`wait`), so N concurrent first requests cause one load,
    and each sees its error if it fails. Before a load starts, `precheck(name)` may raise
    at once (no directory of that name: the caller's field mapping still applies, and a
    typo costs no task). A load that failed with a lasting error (`_LASTING`) is not tried
    again for `negative_cache_s`: `start` raises that error at once meanwhile. The load
    itself runs as its own task: a waiter that goes away does not cancel it. Errors name
    the request's `adapter` field.
    """

    def __init__(self, load: Callable[[str], Awaitable[None]], negative_cache_s: float,
                 clock: Callable[[], float] = time.monotonic,
                 precheck: Callable[[str], None] = lambda name: None,
                 needed: Callable[[str], bool] = lambda name: True,
                 metrics: ModelMetrics | None = None) -> None:
        self._load = load
        self._precheck = precheck
        self._needed = needed  # False once the adapter is loaded
        self._negative_s = negative_cache_s
        self._clock = clock
        self._metrics = metrics
        self._flights: dict[str, asyncio.Future] = {}
        self._failed: dict[str, tuple[float, GalacticError]] = {}  # name -> (until, error)
        self.loads = 0  # loads that succeeded
        self.failures = 0  # loads (and prechecks) that failed

    def start(self, name: str) -> asyncio.Future:
        failed = self._failed.get(name)
        if failed is not None:
            until, exc = failed
            if self._clock() < until:
                raise type(exc)(exc.message, field=exc.field)
            del self._failed[name]
        flight = self._flights.get(name)
        if flight is None:
            try:
                self._precheck(name)
            except _LASTING as exc:
                self._failed_with(name, exc)
                raise
            flight = self._flights[name] = asyncio.ensure_future(self._run(name))
            # Retrieved here so that a failure nobody awaited any more is not logged as
            # "never retrieved" (the waiters may all have gone).
            flight.add_done_callback(lambda f: f.cancelled() or f.exception())
        return flight

    async def wait(self, name: str, deadline: float | None) -> None:
        """Return once `name` is loaded, loading it if needed; raises the load's error, or
        DeadlineExceeded past `deadline` (time.monotonic). Should the adapter be evicted
        again before the caller holds it (a burst of other adapters' first requests), it
        is loaded again, a bounded number of times."""
        for _ in range(3):
            if not self._needed(name):
                return
            flight = self.start(name)
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                # Shielded: a waiter that gives up (deadline, cancel) leaves the load to the others.
                await asyncio.wait_for(asyncio.shield(flight), timeout)
            except TimeoutError:
                raise DeadlineExceeded(f"the deadline passed while adapter {name!r} loaded", field="adapter") from None
            except GalacticError as exc:  # a fresh copy per waiter, not one shared traceback
                raise type(exc)(exc.message, field=exc.field) from None

    def forget(self, name: str) -> None:
        """Drop a remembered failure (LoadAdapter or UnloadAdapter of the name)."""
        self._failed.pop(name, None)

    async def _run(self, name: str) -> None:
        try:
            await self._load(name)
        except GalacticError as exc:
            exc.field = "adapter" if exc.field in ("path", "name") else exc.field
            log.warning("on-demand load of adapter %s failed: %s", name, exc)
            self._failed_with(name, exc)
            raise
        else:
            self.loads += 1
            if self._metrics is not None:
                self._metrics.adapter_loads_on_demand.inc()
        finally:
            del self._flights[name]

    def _failed_with(self, name: str, exc: GalacticError) -> None:
        self.failures += 1
        if self._metrics is not None:
            self._metrics.adapter_load_failures.inc()
        if isinstance(exc, _LASTING) and self._negative_s > 0:
            self._failed[name] = (self._clock() + self._negative_s, exc)
