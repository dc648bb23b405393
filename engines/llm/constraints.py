"""Structured output: a request's `Constraint` compiled to a grammar and a per-step token mask.

The library is llguidance (Microsoft's, used by vLLM and llama.cpp): an abi3 wheel with no
dependencies, JSON schema / regex / Lark-grammar front ends, and a CPU mask computed in
Rust (0.014 ms a step on average on the demo vocabulary, `benchmarks/grammar_libraries.py`). See engines/llm/README.md, "Structured output".

Two places use a `Grammars`:

* admission (the engine, on the event loop): `check` compiles the constraint or raises
  `InvalidArgument(field="constraint.<kind>")` with llguidance's reason, before any model work;
* sampling (`runner.StepModel`, in the model process when there is one): `matcher` hands each
  constrained request its own matcher, a copy of the cached compiled one; `allowed` is the
  row's mask for the next token, `advance` feeds it the token sampled.

Compiled grammars are cached by a hash of (kind, text), least recently used dropped beyond
`constraints.cache_size`. llguidance's parser fuel bounds both a compile and a mask step
(`ConstraintConfig`), so a pathological schema fails instead of stalling the batch.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
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


def _grammar(c: Constraint, max_depth: int) -> str:
    """The constraint in llguidance's grammar form (no compiling yet)."""
    from llguidance import LLMatcher

    field = f"constraint.{c.kind}"
    if c.kind == "json_schema":
        try:
            schema = json.loads(c.text)
        except ValueError as exc:
            raise InvalidArgument(f"the schema is not JSON: {exc}", field=field) from None
        except RecursionError:
            raise InvalidArgument("the schema nests too deeply to parse", field=field) from None
        if not isinstance(schema, dict):
            raise InvalidArgument("the schema must be a JSON object", field=field)
        if _depth(schema) > max_depth:
            raise InvalidArgument(f"the schema nests deeper than constraints.max_depth={max_depth}", field=field)
        try:
            return LLMatcher.grammar_from_json_schema(schema, defaults=_JSON)
        except ValueError as exc:
            raise InvalidArgument(f"llguidance: {exc}", field=field) from None
    if c.kind == "json_object":
        return LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=_JSON)
    if c.kind == "regex":
        return LLMatcher.grammar_from_regex(c.text)
    return LLMatcher.grammar_from_lark(c.text)


class Grammars:
    """Compiled grammars for one tokenizer, by constraint hash (bounded LRU). The llguidance
    tokenizer is built on first use (about a second for a 150k vocabulary), so a model that
    never sees a constraint never pays for it. Not thread-safe: one owner thread each."""

    def __init__(self, tokenizer: Any, eos: frozenset[int], config: ConstraintConfig) -> None:
        self._hf = tokenizer
        self._eos = sorted(eos)
        self.config = config
        self._tok: Any = None
        self._cache: OrderedDict[bytes, Any] = OrderedDict()  # hash -> compiled LLMatcher (a template)
        self.hits = 0
        self.misses = 0

    @property
    def vocab(self) -> int:
        """Tokens the mask covers (the tokenizer's vocabulary; a padded model's tail is masked)."""
        return self._tokenizer().vocab_size

    def check(self, c: Constraint) -> None:
        """Compile `c` (or find it cached); InvalidArgument naming `constraint.<kind>` if it
        is malformed, too large, or llguidance refuses it."""
        field = f"constraint.{c.kind}"
        if c.kind not in KINDS:
            raise InvalidArgument(f"unknown constraint kind {c.kind!r}; one of {', '.join(KINDS)}", field="constraint")
        if c.kind != "json_object" and not c.text:
            raise InvalidArgument("must be non-empty", field=field)
        if len(c.text.encode()) > self.config.max_bytes:
            raise InvalidArgument(f"{len(c.text.encode())} bytes exceed constraints.max_bytes={self.config.max_bytes}",
                                  field=field)
        template = self._compiled(c)
        if template.is_error():
            raise InvalidArgument(f"llguidance: {template.get_error()}", field=field)

    def matcher(self, c: Constraint) -> Any:
        """A fresh matcher for one request. Never raises: a constraint that fails here (it
        passed `check` in the daemon) gives a matcher in llguidance's error state, whose
        request then ends at once (`allowed` offers only EOS)."""
        try:
            return self._compiled(c).deep_copy()
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

    def _compiled(self, c: Constraint) -> Any:
        from llguidance import LLMatcher, LLParserLimits

        key = hashlib.sha256(f"{c.kind}\0{c.text}".encode()).digest()
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            self.hits += 1
            return hit
        self.misses += 1
        limits = LLParserLimits(initial_lexer_fuel=self.config.initial_lexer_fuel,
                                step_lexer_fuel=self.config.step_lexer_fuel, verbose_errors=False)
        compiled = LLMatcher(self._tokenizer(), _grammar(c, self.config.max_depth), log_level=0, limits=limits)
        if not compiled.is_error():  # errors are not cached: a retry gets the same answer, cheaply enough
            self._cache[key] = compiled
            while len(self._cache) > self.config.cache_size:
                self._cache.popitem(last=False)
        return compiled

    def _tokenizer(self) -> Any:
        if self._tok is None:
            import llguidance.hf

            try:
                self._tok = llguidance.hf.from_tokenizer(self._hf, eos_token=self._eos or None)
            except ValueError as exc:  # a slow (Python) tokenizer
                raise InvalidArgument(f"this model's tokenizer cannot be constrained: {exc}",
                                      field="constraint") from None
        return self._tok
