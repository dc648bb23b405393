"""Generation data on the client side: the request builder and the frames that come back.

`Chunk` and `Final` are plain dataclasses so that callers never handle protobuf for the
common path; `build_generate_request` is the one place that maps keyword parameters onto a
`GenerateRequest` (unset stays unset, so the daemon's defaults apply).
"""

from __future__ import annotations

import json

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from galactic.v1 import generation_pb2

__all__ = ["Chunk", "Final", "build_generate_request"]


@dataclass(frozen=True, slots=True)
class Chunk:
    """Newly generated tokens of one request."""

    token_ids: tuple[int, ...]
    text: str
    logprobs: tuple[float, ...] = ()


@dataclass(frozen=True, slots=True)
class Final:
    """The end of one request: why it ended, token counts and the daemon's timings (ms)."""

    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    queue_ms: float
    ttft_ms: float
    total_ms: float
    cached_prompt_tokens: int = 0  # of prompt_tokens, reused from the daemon's prefix cache


def chunk_from_pb(pb: generation_pb2.TokenChunk) -> Chunk:
    return Chunk(tuple(pb.token_ids), pb.text, tuple(pb.logprobs))


def final_from_pb(pb: generation_pb2.Final) -> Final:
    return Final(
        finish_reason=generation_pb2.FinishReason.Name(pb.finish_reason),
        prompt_tokens=pb.usage.prompt_tokens,
        completion_tokens=pb.usage.completion_tokens,
        queue_ms=pb.timings.queue_ms,
        ttft_ms=pb.timings.time_to_first_token_ms,
        total_ms=pb.timings.total_ms,
        cached_prompt_tokens=pb.usage.cached_prompt_tokens,
    )


def build_generate_request(
    prompt: str | None = None,
    *,
    messages: Iterable[Mapping[str, str] | tuple[str, str]] | None = None,
    model: str = "",
    adapter: str | None = None,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float | None = None,
    seed: int | None = None,
    stop: Sequence[str] = (),
    logprobs: bool = False,
    priority: int = 0,
    ignore_eos: bool = False,
    json_schema: str | Mapping[str, Any] | None = None,
    json_object: bool = False,
    regex: str | None = None,
    grammar: str | None = None,
) -> generation_pb2.GenerateRequest:
    """A GenerateRequest; parameters left None stay unset so the daemon's defaults apply.

    Structured output: at most one of `json_schema` (a schema as a dict or JSON text),
    `json_object`, `regex`, `grammar` (llguidance's Lark dialect). The text then matches it
    when the Final's finish_reason is "EOS"; at "LENGTH" it is incomplete."""
    if (prompt is None) == (messages is None):
        raise ValueError("pass exactly one of prompt or messages")
    request = generation_pb2.GenerateRequest(model=model, logprobs=logprobs, priority=priority)
    if prompt is not None:
        request.prompt = prompt
    else:
        turns = [
            generation_pb2.ChatMessage(role=m["role"], content=m["content"])
            if isinstance(m, Mapping)
            else generation_pb2.ChatMessage(role=m[0], content=m[1])
            for m in messages
        ]
        request.messages.messages.extend(turns)
    if adapter is not None:
        request.adapter = adapter
    sampling = {
        "temperature": temperature,
        "top_k": top_k,
        "top_p": top_p,
        "repetition_penalty": repetition_penalty,
        "seed": seed,
    }
    for name, value in sampling.items():
        if value is not None:
            setattr(request.sampling, name, value)
    if max_new_tokens is not None:
        request.stopping.max_new_tokens = max_new_tokens
    request.stopping.stop.extend(stop)
    if ignore_eos:  # run to max_new_tokens even past end-of-sequence (benchmarks, load tests)
        request.stopping.ignore_eos = True
    constraints = {"json_schema": json_schema, "json_object": json_object or None, "regex": regex, "grammar": grammar}
    given = {k: v for k, v in constraints.items() if v is not None}
    if len(given) > 1:
        raise ValueError(f"pass at most one constraint, got {', '.join(given)}")
    for kind, value in given.items():
        if kind == "json_schema" and not isinstance(value, str):
            value = json.dumps(value)
        setattr(request.constraint, kind, value)
    return request
