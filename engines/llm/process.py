"""The model in a process of its own (`llm.runner = "process"`, the default).

Why: in one interpreter every torch op, on returning, queues for the GIL behind whatever
Python the event loop and grpc.aio are running (vLLM's engine-core process and TGI's shard
processes exist for the same reason; the measurements are in benchmarks/results/HISTORY.md).

Split: the daemon's process keeps everything that is not a tensor (scheduler, output
handling, adapter policy, streams); the child owns `core.build_core`'s model, LoRA bank
and runner. Per step the engine's worker thread sends the plan as plain tuples (request
keys, chunk bounds, and each new request's prompt ids and sampling parameters once) and
blocks in `recv`, with the GIL released, while the child runs the forward; the reply is
the sampled tokens. `ProcessRunner` hands each step back at once; `OverlappedProcessRunner`
applies step k's tokens while step k+1 computes.

Protocol: strictly one request, one reply, in order (the engine's `_model_lock`
serializes every call; a step's reply is taken before anything else is sent). Replies
are ("ok", value...) or ("error", kind, message, field); errors keep their class
(InvalidArgument with its field, out of memory) so the engine maps them as before.

Lifecycle: the child ignores SIGTERM and SIGINT, since systemd signals the whole control
group on stop and the child must keep serving the drain; it exits when the parent sends
"close", closes the pipe or dies (EOF). If the child dies, the step in flight fails with
Unavailable; `reset()` then marks it for a respawn, which the next call performs (model
load and every resident adapter written back into its slot), so the engine's canary
proves the new process before health returns to SERVING.

Start method: "spawn" wherever CUDA may be used (`device = "cuda"`, or `"auto"` with a
CUDA build of torch; a forked CUDA context is unusable), else "forkserver": one server
process, started with the first child, imports torch, transformers and this package once,
and every child (each respawn after a crash, each daemon the tests start) is forked from
it instead of importing them again. The fork server holds no model and no thread pool (it
only imports).
"""

from __future__ import annotations

import atexit
import gc
import logging
import multiprocessing
import signal
import threading
from typing import Any, Callable

import torch

from engines.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    GalacticError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from engines.llm.config import LLMConfig
from engines.llm.core import ModelFacts, ModelSide
from engines.llm.lora import AdapterWeights
from engines.llm.runner import Sampled, StepResult
from engines.llm.scheduler import PrefillChunk, Sequence, StepPlan
from engines.llm.types import FinishReason, GenerationRequest

log = logging.getLogger(__name__)

_ERRORS = {cls.__name__: cls for cls in (InvalidArgument, NotFound, AlreadyExists, ResourceExhausted,
                                          FailedPrecondition, DeadlineExceeded, Unavailable, PermissionDenied)}


def _encode_error(exc: BaseException) -> tuple[str, str, str, str | None]:
    if isinstance(exc, torch.OutOfMemoryError):
        return ("error", "OutOfMemoryError", str(exc), None)
    if isinstance(exc, GalacticError) and type(exc).__name__ in _ERRORS:
        return ("error", type(exc).__name__, exc.message, exc.field)
    return ("error", "RuntimeError", f"{type(exc).__name__}: {exc}", None)


def _decode_error(kind: str, message: str, field: str | None) -> Exception:
    if kind == "OutOfMemoryError":
        return torch.OutOfMemoryError(message)
    if kind in _ERRORS:
        return _ERRORS[kind](message, field=field)
    return RuntimeError(f"model process: {message}")


# ---- the child ---------------------------------------------------------------------------

class _Child:
    """The child's side of each call; requests are known by the key the parent gives
    them (`Sequence.order`, unique per engine)."""

    def __init__(self, core: Any) -> None:
        self.runner = core.runner
        self.bank = core.bank
        self.seqs: dict[int, Sequence] = {}

    def execute(self, new: list[tuple], dropped: list[int], decode: list[int],
                prefill: list[tuple[int, int, int]], evicted: list[bytes]) -> tuple:
        for key, prompt_ids, slot, sampling, cached, hashes in new:
            self.seqs[key] = Sequence(GenerationRequest(str(key), sampling=sampling), prompt_ids, slot=slot, order=key,
                                      cached=cached, block_hashes=hashes)
        plan = StepPlan(dropped=[(self.seqs.pop(k), FinishReason.CANCELLED) for k in dropped if k in self.seqs],
                        decode=[self.seqs[k] for k in decode],
                        prefill=[PrefillChunk(self.seqs[k], start, n) for k, start, n in prefill],
                        evicted=evicted)
        with torch.no_grad():
            result = self.runner.execute(plan)
        return ([(s.seq.order, s.token, s.logprob, s.first) for s in result.sampled], self.runner.kv_tokens,
                result.mask_s)

    def free(self, keys: list[int]) -> int:
        self.runner.free([self.seqs.pop(k) for k in keys if k in self.seqs])
        return self.runner.kv_tokens

    def reset(self) -> None:
        self.runner.reset()
        self.seqs.clear()

    def bank_check(self, weights: AdapterWeights) -> None:
        self.bank.check(weights)

    def bank_add(self, weights: AdapterWeights, slot: int | None = None) -> int:
        return self.bank.add(weights, slot)

    def bank_remove(self, slot: int) -> None:
        self.bank.remove(slot)


def _child_main(conn: Any, config: LLMConfig, threads: int) -> None:
    # systemd's stop signals every process of the unit; the parent decides when we end.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from engines.llm.core import build_core

    torch.set_num_threads(threads)
    try:
        core = build_core(config, lambda message: conn.send(("progress", message)))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(_encode_error(exc))
        return
    # As in the daemon: full collections walking the model's objects were the p99 there.
    gc.collect()
    gc.freeze()
    conn.send(("ok", core.facts))
    child = _Child(core)
    while True:
        try:
            op, *args = conn.recv()
        except (EOFError, OSError):  # the parent closed the pipe or died
            return
        if op == "close":
            return
        try:
            reply = ("ok", getattr(child, op)(*args))
        except Exception as exc:  # the step's requests fail in the parent; the child lives on
            reply = _encode_error(exc)
        conn.send(reply)


# ---- the parent --------------------------------------------------------------------------

# What the fork server imports before forking children: everything `_child_main` needs
# up to the model's own files, including what `build_core` imports inside itself
# (lightning through the LightningModule: 3.8 s here; the KV layouts: 0.7 s). A module left
# out is imported again by every child, each start and each respawn after a crash.
_PRELOAD = ["engines.llm.core", "engines.llm.loading", "engines.llm.process", "engines.llm.module",
            "engines.llm.layouts", "engines.llm.constraints", "engines.llm.lora", "engines.llm.runner"]


def _context(config: LLMConfig) -> Any:
    """The child's start method (see the module docstring). Never plain "fork": the
    daemon's process runs threads (the event loop, grpc's poller), and a fork copies their
    locks in whatever state they are."""
    # `auto` asks whether this torch was built with CUDA, not whether a GPU is present:
    # `is_available()` would initialise the CUDA driver in the daemon's own process.
    if config.device == "cuda" or (config.device == "auto" and torch.backends.cuda.is_built()):
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)  # takes effect when the server starts, once per process
    return ctx


class ModelProcess:
    """The parent's handle on the child: start, one call at a time, respawn, close."""

    def __init__(self, config: LLMConfig) -> None:
        self._config = config
        self._conn: Any = None
        self._proc: Any = None
        self._respawn = False
        self._adapters: dict[int, AdapterWeights] = {}  # slot -> weights, written back after a respawn
        self._closed = threading.Event()
        self._atexit = False
        self.facts: ModelFacts | None = None

    def start(self, progress: Callable[[str], None]) -> ModelFacts:
        """Blocking: start the child (`_context` picks how) and wait until its model is loaded."""
        ctx = _context(self._config)
        self._conn, child_conn = ctx.Pipe()
        self._proc = ctx.Process(target=_child_main, args=(child_conn, self._config, torch.get_num_threads()),
                                 name=f"galactic-llm-{self._config.name}")
        self._proc.start()
        child_conn.close()  # else our copy keeps the pipe open and a dead child is never noticed
        if not self._atexit:  # a parent that never called close() still ends its child
            atexit.register(self.close)
            self._atexit = True
        while True:
            reply = self._recv()
            if reply[0] == "progress":
                progress(reply[1])
                continue
            if reply[0] == "error":  # the load failed: end this child; a later call may try again
                self._end_child(10)
                self._respawn = True
                raise _decode_error(*reply[1:])
            _, self.facts = reply
            progress(f"model process {self._proc.pid} ready")
            return self.facts

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive() and not self._respawn

    def call(self, op: str, *args: Any) -> Any:
        """One request and its reply; raises what the child raised, or Unavailable if the
        child is gone."""
        self.send(op, *args)
        return self.receive()

    def send(self, op: str, *args: Any) -> None:
        """A request whose reply the caller takes with `receive()` before any other call."""
        if self._closed.is_set():
            raise Unavailable("the model process is closed")
        if self._respawn:
            self._restart()
        try:
            self._conn.send((op, *args))
        except (OSError, ValueError):
            raise self._gone() from None

    def receive(self) -> Any:
        reply = self._recv()
        if reply[0] == "error":
            raise _decode_error(*reply[1:])
        return reply[1]

    def reset(self) -> None:
        """After a failed step: the child forgets every request, or, if it died, is
        respawned by the next call."""
        if self.alive:
            try:
                self.call("reset")
                return
            except Unavailable:
                pass
        self._respawn = True

    @property
    def adapters_loaded(self) -> int:
        return len(self._adapters)

    def add_adapter(self, weights: AdapterWeights) -> int:
        slot = self.call("bank_add", weights)
        self._adapters[slot] = weights
        return slot

    def remove_adapter(self, slot: int) -> None:
        self.call("bank_remove", slot)
        self._adapters.pop(slot, None)

    def close(self, timeout: float = 10.0) -> None:
        if self._proc is None or self._closed.is_set():
            return
        self._closed.set()
        try:
            self._conn.send(("close",))
        except (OSError, ValueError):
            pass
        if not self._end_child(timeout):
            log.warning("model process %s did not exit in %.0f s; killed it", self._proc.pid, timeout)
        self._conn.close()

    def _recv(self) -> tuple:
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            raise self._gone() from None

    def _end_child(self, wait_s: float) -> bool:
        """Give the child `wait_s` to exit, then kill it; True if it exited by itself."""
        self._proc.join(wait_s)
        if not self._proc.is_alive():
            return True
        self._proc.kill()
        self._proc.join(5)
        return False

    def _gone(self) -> Unavailable:
        self._end_child(1)  # if the pipe broke under a live child, it cannot be trusted
        self._respawn = True
        return Unavailable(f"the model process exited (exit code {self._proc.exitcode}); it is being restarted")

    def _restart(self) -> None:
        log.warning("model process %s exited (exit code %s); starting a new one", self._proc.pid, self._proc.exitcode)
        self._conn.close()
        self._end_child(0)
        self._respawn = False
        self.start(lambda message: log.info("model process: %s", message))
        for slot, weights in sorted(self._adapters.items()):
            self.call("bank_add", weights, slot)


class ProcessRunner:
    """`core.StepRunner` over a `ModelProcess`: `submit` sends the plan, `collect` waits in
    `recv` (the GIL released while the child computes) and hands the step back at once."""

    def __init__(self, proc: ModelProcess) -> None:
        self.process = proc
        self._known: set[int] = set()  # keys the child holds state for
        self._freed: list[int] = []  # keys to free, held back while a step is in flight
        self._inflight: dict[int, Sequence] | None = None  # the step sent: key -> request
        self.kv_tokens = 0

    def submit(self, plan: StepPlan) -> StepResult | None:
        if not plan:
            self.free([seq for seq, _ in plan.dropped])
            return None
        new = []
        for c in plan.prefill:
            seq = c.seq
            if seq.order not in self._known:
                self._known.add(seq.order)
                new.append((seq.order, seq.prompt_ids, seq.slot, seq.request.sampling, seq.cached, seq.block_hashes))
        dropped = [seq.order for seq, _ in plan.dropped if seq.order in self._known]
        self._known.difference_update(dropped)
        dropped, self._freed = dropped + self._freed, []
        self.process.send("execute", new, dropped, [s.order for s in plan.decode],
                          [(c.seq.order, c.start, c.length) for c in plan.prefill], plan.evicted)
        by_key = {s.order: s for s in plan.decode}
        by_key.update((c.seq.order, c.seq) for c in plan.prefill)
        self._inflight = by_key
        return None

    def collect(self) -> StepResult | None:
        by_key, self._inflight = self._inflight, None
        sampled, self.kv_tokens, mask_s = self.process.receive()
        return StepResult([Sampled(by_key[k], token, logprob, first) for k, token, logprob, first in sampled], mask_s)

    def free(self, seqs: list[Sequence]) -> None:
        """At once when no step is in flight; else with the next step."""
        keys = [seq.order for seq in seqs if seq.order in self._known]
        self._known.difference_update(keys)
        self._freed.extend(keys)
        if self._freed and self._inflight is None:
            keys, self._freed = self._freed, []
            self.kv_tokens = self.process.call("free", keys)

    def reset(self) -> None:
        if self._inflight is not None:  # a step failed between submit and collect: take its reply first
            self._inflight = None
            try:
                self.process.receive()
            except Exception:  # noqa: BLE001 - the step's requests already failed; reset decides what is left
                pass
        self._known.clear()
        self._freed.clear()
        self.kv_tokens = 0
        self.process.reset()


class OverlappedProcessRunner(ProcessRunner):
    """Overlapped steps (`llm.overlap_steps`): `collect` keeps step k's tokens and the next
    `submit` returns them once step k+1 is on its way, so the engine applies them
    (detokenizing, stop strings, streams) while the child computes: TensorRT-LLM's overlap
    scheduler, vLLM's asynchronous scheduling. Plans are then made one step behind the
    outputs (`scheduler.Sequence.planned`); frees asked for while a step is in flight travel
    with the next step."""

    def __init__(self, proc: ModelProcess) -> None:
        super().__init__(proc)
        self._held: StepResult | None = None

    def submit(self, plan: StepPlan) -> StepResult | None:
        held, self._held = self._held, None
        super().submit(plan)
        return held

    def collect(self) -> StepResult | None:
        self._held = super().collect()
        return None

    def reset(self) -> None:
        self._held = None
        super().reset()


def load_in_process(config: LLMConfig, progress: Callable[[str], None]) -> ModelSide:
    """The model in a child process; here only the tokenizer. Steps overlap with
    `overlap_steps = "on"`, or `"auto"` where the model runs on CUDA."""
    from pathlib import Path

    from engines.llm.loading import load_tokenizer, resolve_model_dir, resolve_placement

    resolve_placement(config)  # a host that cannot run the config fails here, by name
    model_dir = resolve_model_dir(config, progress)
    tok = load_tokenizer(config, model_dir, progress)
    progress("starting the model process")
    proc = ModelProcess(config)
    try:
        facts = proc.start(progress)
    except BaseException:
        proc.close()  # the engine never gets a handle on a child that failed to load
        raise
    overlap = config.overlap_steps == "on" or (config.overlap_steps == "auto" and facts.device.startswith("cuda"))
    runner = (OverlappedProcessRunner if overlap else ProcessRunner)(proc)
    return ModelSide(runner, RemoteBank(proc, config.adapters.max_loaded), tok, Path(model_dir), facts,
                     close=proc.close)


class RemoteBank:
    """The part of `LoRABank` the adapter registry uses, over a `ModelProcess`."""

    def __init__(self, proc: ModelProcess, capacity: int) -> None:
        self._proc = proc
        self._capacity = capacity

    def check(self, weights: AdapterWeights) -> None:
        self._proc.call("bank_check", weights)

    @property
    def free_slots(self) -> int:
        return self._capacity - self._proc.adapters_loaded

    def add(self, weights: AdapterWeights) -> int:
        return self._proc.add_adapter(weights)

    def remove(self, slot: int) -> None:
        self._proc.remove_adapter(slot)
