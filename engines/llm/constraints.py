"""Structured output: a request's `Constraint` compiled to a grammar and a per-step token mask.

The library is llguidance (Microsoft's, used by vLLM and llama.cpp): an abi3 wheel with no
dependencies, JSON schema / regex / Lark-grammar front ends, and a CPU mask computed in
Rust (0.014 ms a step on average on the demo vocabulary, `benchmarks/grammar_libraries.py`). See engines/llm/README.md, "Structured output".

Two places use a `Grammars`:

* admission (the engine): `precheck` refuses what is cheap to see on the event loop (kind,
  size, a schema that is not JSON or nests past `max_depth`); a constraint not yet in the
  cache is then compiled by a `Compiler`, on a thread of its own, bounded by
  `compile_timeout_s`, or refused with `InvalidArgument(field="constraint.<kind>")` and
  llguidance's reason, before any model work;
* sampling (`runner.StepModel`, in the model process when there is one): `matcher` hands each
  constrained request its own matcher, a copy of the cached compiled one; `allowed` is the
  row's mask for the next token, `advance` feeds it the token sampled.

Compiled grammars are cached by a hash of (kind, text), least recently used dropped beyond
`constraints.cache_size`. llguidance's parser fuel bounds both a compile and a mask step
(`ConstraintConfig`), so a pathological schema fails instead of stalling the batch.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from engines.errors import InvalidArgument
from engines.llm.config import ConstraintConfig
from engines.llm.types import Constraint

KINDS = ("json_schema", "json_object", "regex", "grammar")
# Compact JSON (no whitespace between tokens, as json.dumps(separators=(",", ":"))): with
# flexible whitespace a weak model can spend its whole budget on blanks between braces.
_JSON = {"whitespace_flexible": False}


def _depth(value: object) -> int:
    """Nesting depth of parsed JSON (a scalar is 0)."""
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


def _parse_schema(text: str, max_depth: int) -> None:
    """The cheap checks of a JSON schema's text (no compiling): JSON, an object, not too deep."""
    field = "constraint.json_schema"
    try:
        schema = json.loads(text)
    except ValueError as exc:
        raise InvalidArgument(f"the schema is not JSON: {exc}", field=field) from None
    except RecursionError:
        raise InvalidArgument("the schema nests too deeply to parse", field=field) from None
    if not isinstance(schema, dict):
        raise InvalidArgument("the schema must be a JSON object", field=field)
    if _depth(schema) > max_depth:
        raise InvalidArgument(f"the schema nests deeper than constraints.max_depth={max_depth}", field=field)


def _grammar(c: Constraint) -> str:
    """The constraint in llguidance's grammar form (no compiling yet; `precheck` passed)."""
    from llguidance import LLMatcher

    if c.kind == "json_schema":
        try:
            return LLMatcher.grammar_from_json_schema(c.text, defaults=_JSON)
        except ValueError as exc:
            raise InvalidArgument(f"llguidance: {exc}", field="constraint.json_schema") from None
    if c.kind == "json_object":
        return LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=_JSON)
    if c.kind == "regex":
        return LLMatcher.grammar_from_regex(c.text)
    return LLMatcher.grammar_from_lark(c.text)


def _key(c: Constraint) -> bytes:
    return hashlib.sha256(f"{c.kind}\0{c.text}".encode()).digest()


class Grammars:
    """Compiled grammars for one tokenizer, by constraint hash (bounded LRU). The llguidance
    tokenizer is built on first use (about a second for a 150k vocabulary), so a model that
    never sees a constraint never pays for it. At admission the cache is the event loop's
    (only `compile` runs elsewhere); at sampling `matcher` serializes its users."""

    def __init__(self, tokenizer: Any, eos: frozenset[int], config: ConstraintConfig) -> None:
        self._hf = tokenizer
        self._eos = sorted(eos)
        self.config = config
        self._tok: Any = None
        self._tok_lock = threading.Lock()  # `compile` threads build the tokenizer once between them
        self._matcher_lock = threading.Lock()  # `matcher` runs on the mask thread, rarely on the step's
        self._cache: OrderedDict[bytes, Any] = OrderedDict()  # hash -> compiled LLMatcher (a template)
        self.hits = 0
        self.misses = 0

    @property
    def vocab(self) -> int:
        """Tokens the mask covers (the tokenizer's vocabulary; a padded model's tail is masked)."""
        return self._tokenizer().vocab_size

    def precheck(self, c: Constraint) -> None:
        """What can be refused without compiling (cheap, for the event loop): an unknown
        kind, empty or oversized text, a schema that is not a JSON object or nests past
        `max_depth`. InvalidArgument naming `constraint` or `constraint.<kind>`."""
        field = f"constraint.{c.kind}"
        if c.kind not in KINDS:
            raise InvalidArgument(f"unknown constraint kind {c.kind!r}; one of {', '.join(KINDS)}", field="constraint")
        if c.kind != "json_object" and not c.text:
            raise InvalidArgument("must be non-empty", field=field)
        if len(c.text.encode()) > self.config.max_bytes:
            raise InvalidArgument(f"{len(c.text.encode())} bytes exceed constraints.max_bytes={self.config.max_bytes}",
                                  field=field)
        if c.kind == "json_schema":
            _parse_schema(c.text, self.config.max_depth)

    def cached(self, c: Constraint) -> bool:
        """True (a cache hit, counted) if `c` is compiled already; `precheck` passed."""
        hit = self._cache.get(_key(c))
        if hit is None:
            return False
        self._cache.move_to_end(_key(c))
        self.hits += 1
        return True

    def check(self, c: Constraint) -> None:
        """`precheck`, then compile `c` here (or find it cached); InvalidArgument naming
        `constraint.<kind>` if llguidance refuses it. Blocking: not for the event loop."""
        self.precheck(c)
        if not self.cached(c):
            self.misses += 1
            self.store(c, self.compile(c))

    def compile(self, c: Constraint) -> Any:
        """Blocking, and safe on any thread (it leaves the cache alone; llguidance drops the
        GIL while it builds): the compiled matcher of a prechecked `c`, or InvalidArgument
        naming `constraint.<kind>` with llguidance's reason."""
        from llguidance import LLMatcher, LLParserLimits

        limits = LLParserLimits(initial_lexer_fuel=self.config.initial_lexer_fuel,
                                step_lexer_fuel=self.config.step_lexer_fuel, verbose_errors=False)
        compiled = LLMatcher(self._tokenizer(), _grammar(c), log_level=0, limits=limits)
        if compiled.is_error():  # not cached: a retry gets the same answer, cheaply enough
            raise InvalidArgument(f"llguidance: {compiled.get_error()}", field=f"constraint.{c.kind}")
        return compiled

    def store(self, c: Constraint, compiled: Any) -> None:
        """Cache a compiled `c` (from `compile`), least recently used dropped beyond cache_size."""
        self._cache[_key(c)] = compiled
        self._cache.move_to_end(_key(c))
        while len(self._cache) > self.config.cache_size:
            self._cache.popitem(last=False)

    def matcher(self, c: Constraint) -> Any:
        """A fresh matcher for one request. Never raises: a constraint that fails here (it
        passed admission in the daemon) gives a matcher in llguidance's error state, whose
        request then ends at once (`allowed` offers only EOS)."""
        try:
            with self._matcher_lock:
                self.check(c)
                return self._cache[_key(c)].deep_copy()
        except InvalidArgument:
            from llguidance import LLMatcher

            return LLMatcher(self._tokenizer(), "%%% not a grammar", log_level=0)

    def allowed(self, matcher: Any) -> torch.Tensor:
        """(vocab,) bool: the tokens `matcher` accepts next. Only EOS once the grammar is
        complete, and when the matcher is in error (the request then ends)."""
        words = torch.frombuffer(bytearray(matcher.compute_bitmask()), dtype=torch.int32)  # (ceil(V/32),)
        bits = (words.unsqueeze(1) >> torch.arange(32, dtype=torch.int32)) & 1  # (ceil(V/32), 32)
        allowed = bits.view(-1)[: self.vocab].bool()
        if matcher.is_error() or not bool(allowed.any()):
            allowed = torch.zeros_like(allowed)
            allowed[[t for t in self._eos if t < allowed.numel()]] = True
        return allowed

    @staticmethod
    def advance(matcher: Any, token: int) -> None:
        """Feed the sampled token; a refused one leaves the matcher in error (EOS next)."""
        if not matcher.is_stopped():
            matcher.consume_token(token)

    def tokenizer(self) -> Any:
        """Blocking (about a second for a large vocabulary, once): llguidance's tokenizer."""
        return self._tokenizer()

    def _tokenizer(self) -> Any:
        with self._tok_lock:
            if self._tok is None:
                import llguidance.hf

                try:
                    self._tok = llguidance.hf.from_tokenizer(self._hf, eos_token=self._eos or None)
                except ValueError as exc:  # a slow (Python) tokenizer
                    raise InvalidArgument(f"this model's tokenizer cannot be constrained: {exc}",
                                          field="constraint") from None
            return self._tok


class Compiler:
    """Admission's compiles, off the event loop and bounded in time (used on the loop only).

    `needs_compile(c)` prechecks `c` at once (raising InvalidArgument) and says whether it
    must still be compiled; `compile(c)` then runs `Grammars.compile` on a small pool of its
    own, one flight per constraint however many requests send it, and raises
    InvalidArgument naming `constraint.<kind>` with llguidance's reason, or once
    `compile_timeout_s` has passed (queueing for the pool included). A compile past its
    bound cannot be stopped (llguidance's fuel ends it); it finishes in the background and,
    if it succeeded, later requests find it cached. Building llguidance's tokenizer (once,
    up to a second or so) is not counted against the bound."""

    def __init__(self, grammars: Grammars, workers: int = 2) -> None:
        self.grammars = grammars
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="llm-grammar")
        self._flights: dict[bytes, asyncio.Future] = {}
        self._tokenizer: asyncio.Future | None = None

    def needs_compile(self, c: Constraint) -> bool:
        self.grammars.precheck(c)
        if self.grammars.cached(c):
            return False
        self.grammars.misses += 1
        return True

    async def compile(self, c: Constraint) -> None:
        loop = asyncio.get_running_loop()
        if self._tokenizer is None or (self._tokenizer.done() and self._tokenizer.exception() is not None):
            self._tokenizer = loop.run_in_executor(self._pool, self.grammars.tokenizer)
        await asyncio.shield(self._tokenizer)
        if self.grammars.cached(c):  # another request's flight finished meanwhile
            return
        key = _key(c)
        flight = self._flights.get(key)
        if flight is None:
            flight = self._flights[key] = loop.run_in_executor(self._pool, self.grammars.compile, c)
            flight.add_done_callback(lambda f: self._landed(c, key, f))
        timeout = self.grammars.config.compile_timeout_s
        try:
            # Shielded: a request that gives up (timeout, cancel) leaves the flight to the others.
            await asyncio.wait_for(asyncio.shield(flight), timeout)
        except TimeoutError:
            raise InvalidArgument(f"the constraint did not compile within constraints.compile_timeout_s={timeout:g}",
                                  field=f"constraint.{c.kind}") from None
        except InvalidArgument as exc:  # a fresh copy per request, not one shared traceback
            raise InvalidArgument(exc.message, field=exc.field) from None

    def _landed(self, c: Constraint, key: bytes, flight: asyncio.Future) -> None:
        del self._flights[key]
        if not flight.cancelled() and flight.exception() is None:
            self.grammars.store(c, flight.result())

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
