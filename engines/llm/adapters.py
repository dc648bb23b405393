"""The adapter registry: named LoRA adapters resident in the model's `LoRABank`.

Policy lives here: load paths must lie inside `adapters.root` (symlinks resolved first, so
`../` or a link cannot escape it); at `max_loaded` the least recently used *idle* adapter
is evicted, and if every adapter serves requests the load is refused (ResourceExhausted)
rather than pulling weights from under a running stream. Counting `in_use` covers queued
requests too, since they resolved their adapter at enqueue. An adapter whose metadata names
another base model than the one served is refused (FailedPrecondition, both hashes named).

Locks are the engine's: `lock` guards the registry (short sections); `model_lock` is held
for the whole scheduler step, so bank writes taken under it never race a forward pass.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from engines.errors import AlreadyExists, InvalidArgument, FailedPrecondition, NotFound, PermissionDenied, ResourceExhausted
from engines.llm.config import AdapterConfig
from engines.paths import confine
from engines.llm.identity import METADATA_FILE, model_content_hash, read_metadata
from engines.llm.lora import AdapterWeights, LoRABank
from engines.llm.types import AdapterInfo

log = logging.getLogger(__name__)


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

    def info(self) -> AdapterInfo:
        return AdapterInfo(self.name, self.path, self.rank, self.loaded_at, self.in_use, self.last_used)


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

    def check_free_name(self, name: str) -> None:
        with self._lock:
            if name in self._by_name:
                raise AlreadyExists(f"adapter {name!r} is already loaded", field="name")

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

    def install(self, name: str, full: Path, weights: AdapterWeights) -> AdapterInfo:
        """Blocking (waits for the current step): write the adapter into a bank slot."""
        with self._model_lock, self._lock:
            if name in self._by_name:
                raise AlreadyExists(f"adapter {name!r} is already loaded", field="name")
            self.bank.check(weights)
            if self.bank.free_slots == 0:
                idle = [a for a in self._by_name.values() if a.in_use == 0 and not a.unloading]
                if not idle:
                    raise ResourceExhausted(f"all {self.config.max_loaded} adapter slots are in use; retry later")
                victim = min(idle, key=lambda a: a.last_used)
                log.info("evicting adapter %s (least recently used)", victim.name)
                self.bank.remove(victim.slot)
                del self._by_name[victim.name]
            slot = self.bank.add(weights)
            now = time.time()
            adapter = Adapter(name, str(full), weights.rank, slot, now, now)
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

    def infos(self) -> list[AdapterInfo]:
        with self._lock:
            return [a.info() for a in self._by_name.values() if not a.unloading]
