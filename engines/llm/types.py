"""Plain dataclasses in and out of the LLM engine; the gRPC servicer maps protobuf to these.

Nothing here imports torch, so the daemon can build and validate requests cheaply.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class ChatMessage:
    role: str  # "system" | "user" | "assistant" (whatever the chat template knows)
    content: str


@dataclass(frozen=True)
class Constraint:
    """What the answer must match (structured output, `constraints.py`). Sampling is masked
    to tokens that keep the text a prefix of a match; when the match is complete only EOS is
    allowed, so the request ends with `FinishReason.EOS`. At `max_new_tokens` first it ends
    with LENGTH and the text is incomplete (not valid JSON, not a full match)."""

    kind: str  # "json_schema" | "json_object" | "regex" | "grammar" (llguidance's Lark dialect)
    text: str = ""  # the schema (JSON text), regex or grammar; "" for json_object


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 => greedy (argmax), other knobs then only affect logprobs
    top_k: int = 0  # 0 => off
    top_p: float = 1.0  # 1.0 => off
    repetition_penalty: float = 1.0  # 1.0 => off; CTRL-style, over prompt + generated ids
    seed: int | None = None  # same seed => same text, whatever else shares the batch
    stop: tuple[str, ...] = ()  # text is cut before the first stop string found
    logprobs: bool = False  # per-token log-probabilities under the model (raw logits)
    ignore_eos: bool = False  # keep going past EOS until max_new_tokens / stop
    constraint: Constraint | None = None  # structured output; None = free text


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    prompt: str | None = None  # exactly one of prompt / messages
    messages: tuple[ChatMessage, ...] = ()
    adapter: str | None = None  # a loaded LoRA adapter's name; None => base model
    sampling: SamplingParams = field(default_factory=SamplingParams)
    priority: int = 0  # higher first; waiting requests age upward (scheduler.priority_aging_s)
    deadline: float | None = None  # absolute time.monotonic() seconds; None = no expiry
    trace_context: object | None = None  # an opentelemetry Context to parent/link spans
    tenant: str = ""  # who asked (the daemon's bearer-token tenant): fair admission across them
    # Called with a token count as tokens are used: the prompt once the request is queued, then
    # each sampled token (on the worker thread). The daemon's tenant budget; None = unmetered.
    # Metering as work happens, not at the end, leaves no way around it: a request that is
    # cancelled, expires or fails has been charged for every token it cost.
    meter: Callable[[int], None] | None = None


class FinishReason(enum.Enum):
    LENGTH = "length"  # max_new_tokens reached
    EOS = "eos"  # the model emitted an end-of-sequence token
    STOP_SEQUENCE = "stop_sequence"  # a SamplingParams.stop string appeared
    CANCELLED = "cancelled"  # consumer went away, cancel(), or forced adapter unload
    DEADLINE = "deadline"  # GenerationRequest.deadline passed inside the scheduler


@dataclass(frozen=True)
class TokenChunk:
    """One scheduler step's output for one request.

    Every sampled token id appears in exactly one chunk (EOS and stop-completing tokens
    included); `text` is the newly releasable text, possibly "" while a multi-byte
    character or a possible stop-string prefix is held back.
    """

    token_ids: tuple[int, ...]
    text: str
    logprobs: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Timings:
    queue_ms: float  # enqueue -> admitted to prefill
    ttft_ms: float  # enqueue -> first token sampled
    total_ms: float  # enqueue -> finished


@dataclass(frozen=True)
class FinalOutput:
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    timings: Timings
    cached_prompt_tokens: int = 0  # of prompt_tokens, how many were reused from the prefix cache


@dataclass(frozen=True)
class AdapterInfo:
    name: str
    path: str
    rank: int
    loaded_at: float  # time.time() wall clock
    in_use: int  # requests queued or running with this adapter
    last_used: float  # time.time() wall clock of the last request that named it
    pinned: bool = False  # loaded by LoadAdapter or preload: never evicted by on-demand loads
