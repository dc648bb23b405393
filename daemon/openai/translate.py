"""OpenAI JSON <-> the LLM engine's dataclasses, and nothing else.

A request body becomes one `GenerationRequest` per choice (`n` per prompt); engine outputs
become OpenAI's response objects and stream chunks. Every top-level parameter is one of:

- translated into the engine's request (`SamplingParams`, prompt or chat messages);
- accepted at its default only (`presence_penalty: 0`, `echo: false`, ...): any other
  value would change the answer in a way the engine cannot, so it is refused;
- accepted and ignored (`IGNORED`: `user`, `metadata`, ...), because it cannot change the
  answer;
- anything else: refused.

A refusal is `InvalidArgument` naming the parameter as the client spelled it (400 with
`param`); nothing is silently dropped. Range checks that the engine makes for every
protocol (temperature, top_p, max_new_tokens against the context) stay in the engine; its
errors come back naming OpenAI's parameter through `param_of`.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, Mapping

from daemon.validation import Bounds
from engines.errors import InvalidArgument
from engines.llm.types import ChatMessage, Constraint, FinalOutput, FinishReason, GenerationRequest, SamplingParams, TokenChunk

# Parameters that cannot change the answer: accepted, ignored (README lists them).
# parallel_tool_calls: tools themselves are refused, so it has nothing to act on.
IGNORED = frozenset({"user", "metadata", "store", "service_tier", "safety_identifier", "prompt_cache_key",
                     "parallel_tool_calls"})
# Parameters accepted only at the value that leaves the answer as it is (absent or null
# also does): past that the engine cannot honour them.
AT_DEFAULT_ONLY: dict[str, Mapping[str, Any]] = {
    "completions": {"presence_penalty": 0, "frequency_penalty": 0, "echo": False, "suffix": "",
                    "best_of": 1, "logit_bias": {}},
    "chat": {"presence_penalty": 0, "frequency_penalty": 0, "top_logprobs": 0, "logit_bias": {},
             "tools": [], "functions": [], "tool_choice": "none", "function_call": "none",
             "modalities": ["text"]},
}
# Parameters translated into the engine's request. top_k, repetition_penalty and
# ignore_eos are not OpenAI's: vLLM accepts them in the body, and so do we.
TRANSLATED = {
    "completions": frozenset({"model", "prompt", "max_tokens", "temperature", "top_p", "stop", "seed", "n",
                              "stream", "stream_options", "logprobs", "top_k", "repetition_penalty",
                              "ignore_eos"}),
    "chat": frozenset({"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p",
                       "stop", "seed", "n", "stream", "stream_options", "logprobs", "top_k",
                       "repetition_penalty", "ignore_eos", "response_format"}),
}
# OpenAI's defaults where they differ from the engine's: sampling at temperature 1, and
# 16 tokens for a legacy completion (chat has no fixed default: the engine's applies).
OPENAI_TEMPERATURE = 1.0
COMPLETIONS_MAX_TOKENS = 16
# Engine field -> OpenAI parameter (the max-tokens one is whichever the client sent).
_PARAMS = {"sampling.temperature": "temperature", "sampling.top_p": "top_p", "sampling.top_k": "top_k",
           "sampling.repetition_penalty": "repetition_penalty", "sampling.stop": "stop", "adapter": "model",
           "request_id": None, "constraint": "response_format", "constraint.json_schema": "response_format",
           "constraint.json_object": "response_format", "sampling.ignore_eos": "ignore_eos"}
_FINISH = {FinishReason.EOS: "stop", FinishReason.STOP_SEQUENCE: "stop", FinishReason.LENGTH: "length"}


@dataclass(frozen=True)
class Call:
    """A translated request: what to run, and what the answer must look like."""

    kind: str  # "completions" | "chat"
    model: str  # as the client named it (the base model or an adapter)
    requests: tuple[GenerationRequest, ...]  # choice i is requests[i]
    prompt_of: tuple[int, ...]  # choice i answers prompt prompt_of[i]
    stream: bool
    include_usage: bool
    logprobs: bool
    max_tokens_param: str  # the parameter that set max_new_tokens, for its errors

    def param_of(self, field: str | None) -> str | None:
        """The OpenAI parameter of an engine error's field."""
        if field == "sampling.max_new_tokens":
            return self.max_tokens_param
        if field in ("prompt", "messages"):
            return "messages" if self.kind == "chat" else "prompt"
        return _PARAMS.get(field, field)


def to_call(kind: str, body: Any, adapter: str | None, bounds: Bounds, max_choices: int,
            chat_max_tokens: int = SamplingParams.max_new_tokens) -> Call:
    """A parsed JSON body -> Call. `adapter` is the adapter the body's `model` names (None
    for the base model; the caller resolved it). Raises InvalidArgument naming the parameter."""
    if not isinstance(body, dict):
        raise InvalidArgument("the request body must be a JSON object", field=None)
    _refuse_unknown(kind, body)
    model = _get(body, "model", str)
    if model is None:
        raise InvalidArgument("model is required", field="model")
    if kind == "chat":
        prompts: list[str | tuple[ChatMessage, ...]] = [_messages(body, bounds)]
        max_param = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
        default_max = chat_max_tokens
        logprobs = bool(_get(body, "logprobs", bool))
    else:
        prompts = list(_prompts(body, bounds))
        max_param, default_max = "max_tokens", COMPLETIONS_MAX_TOKENS
        # The legacy `logprobs` is a count of alternatives per token; the engine gives the
        # sampled token's log-probability only, which is `logprobs: 0`.
        count = _get(body, "logprobs", int)
        if count not in (None, 0):
            raise InvalidArgument("only 0 is supported (the sampled token's log-probability, no alternatives)",
                                  field="logprobs")
        logprobs = count == 0
    n = _get(body, "n", int)
    n = 1 if n is None else n
    if not 1 <= n * len(prompts) <= max_choices:
        raise InvalidArgument(f"n times the prompts must be in [1, {max_choices}]", field="n")
    stop = body.get("stop")
    stop = () if stop is None else (stop,) if isinstance(stop, str) else stop
    if not (isinstance(stop, (list, tuple)) and all(isinstance(s, str) for s in stop)):
        raise InvalidArgument("expected a string or a list of strings", field="stop")
    bounds.check_value(list(stop), "stop", "stop")
    seed = _get(body, "seed", int)
    if seed is not None and not 0 <= seed < 1 << 64:
        raise InvalidArgument("must be in [0, 2^64)", field="seed")
    max_tokens = _bounded_int(body, max_param, 1 << 32)
    defaults = SamplingParams()
    sampling = SamplingParams(
        max_new_tokens=default_max if max_tokens is None else max_tokens,
        temperature=_number(body, "temperature", OPENAI_TEMPERATURE),
        top_p=_number(body, "top_p", 1.0),
        top_k=_bounded_int(body, "top_k", 1 << 31) or 0,
        repetition_penalty=_number(body, "repetition_penalty", defaults.repetition_penalty),
        seed=seed,
        stop=tuple(stop),
        logprobs=logprobs,
        ignore_eos=bool(_get(body, "ignore_eos", bool)),
        constraint=_response_format(body) if kind == "chat" else None,
    )
    options = _get(body, "stream_options", dict) or {}
    stream = bool(_get(body, "stream", bool))
    if options and not stream:
        raise InvalidArgument("only allowed with stream: true", field="stream_options")
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool) or set(options) - {"include_usage", "include_obfuscation"}:
        raise InvalidArgument("only include_usage (a boolean) is supported", field="stream_options")
    base_id = uuid.uuid4().hex
    requests, prompt_of = [], []
    for p, prompt in enumerate(prompts):
        for j in range(n):
            # n choices of one seeded request differ as OpenAI's do, and are each reproducible.
            s = sampling if seed is None or j == 0 else dataclasses.replace(sampling, seed=(seed + j) % (1 << 64))
            requests.append(GenerationRequest(
                request_id=f"{base_id}-{len(requests)}",
                prompt=prompt if isinstance(prompt, str) else None,
                messages=prompt if not isinstance(prompt, str) else (),
                adapter=adapter, sampling=s))
            prompt_of.append(p)
    return Call(kind=kind, model=model, requests=tuple(requests), prompt_of=tuple(prompt_of), stream=stream,
                include_usage=include_usage, logprobs=logprobs, max_tokens_param=max_param)


def _response_format(body: Mapping[str, Any]) -> Constraint | None:
    """OpenAI's response_format -> the engine's constraint: "text" is none, "json_object"
    any JSON object, "json_schema" its `json_schema.schema`. The schema is always enforced
    (`strict` true or false alike: decoding is constrained either way)."""
    fmt = _get(body, "response_format", dict)
    kind = None if fmt is None else fmt.get("type")
    if fmt is None or kind == "text":
        return None
    if kind == "json_object":
        return Constraint("json_object")
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise InvalidArgument("json_schema.schema must be a JSON Schema object", field="response_format")
        if not isinstance(spec.get("strict", False), (bool, type(None))):
            raise InvalidArgument("json_schema.strict must be a boolean", field="response_format")
        return Constraint("json_schema", json.dumps(schema))
    raise InvalidArgument("type must be one of text, json_object, json_schema", field="response_format")


def _refuse_unknown(kind: str, body: dict) -> None:
    at_default = AT_DEFAULT_ONLY[kind]
    for key, value in body.items():
        if key in TRANSLATED[kind] or key in IGNORED or value is None:
            continue
        if key not in at_default:
            raise InvalidArgument(f"unsupported parameter {key!r}", field=key)
        default = at_default[key]
        if value != default and not (default in ({}, []) and not value):
            raise InvalidArgument(f"only {default!r} is supported: other values would change the answer "
                                  "in a way this server cannot", field=key)


def _get(body: Mapping[str, Any], key: str, kind: type) -> Any:
    """body[key] if present and not null, checked to be of `kind` (a bool is no int)."""
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidArgument(f"expected {_TYPE_NAMES[kind]}, got {type(value).__name__}", field=key)
    return value


_TYPE_NAMES = {str: "a string", int: "an integer", bool: "a boolean", dict: "an object", float: "a number"}


# JSON numbers are unbounded where the native protocol's are not (float, int32, uint32):
# past what gRPC could carry, a value is refused here, so it cannot reach a tensor as inf
# or overflow one. The engine checks the meaningful ranges for both protocols.
_FLOAT_MAX = 3.4028234663852886e38


def _number(body: Mapping[str, Any], key: str, default: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not abs(value) <= _FLOAT_MAX:
        raise InvalidArgument("expected a finite number", field=key)
    return float(value)


def _bounded_int(body: Mapping[str, Any], key: str, limit: int) -> int | None:
    value = _get(body, key, int)
    if value is not None and abs(value) >= limit:
        raise InvalidArgument(f"must be below {limit}", field=key)
    return value


def _prompts(body: Mapping[str, Any], bounds: Bounds) -> list[str]:
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not (isinstance(prompts, list) and prompts and all(isinstance(p, str) for p in prompts)):
        # Token-id prompts (lists of integers) too: the engine takes text.
        raise InvalidArgument("expected a string or a non-empty list of strings", field="prompt")
    for i, p in enumerate(prompts):
        bounds.check_value(p, "prompt", "prompt" if isinstance(prompt, str) else f"prompt[{i}]")
    return prompts


def _messages(body: Mapping[str, Any], bounds: Bounds) -> tuple[ChatMessage, ...]:
    messages = body.get("messages")
    if not (isinstance(messages, list) and messages):
        raise InvalidArgument("expected a non-empty list of messages", field="messages")
    bounds.check_value(messages, "messages", "messages")
    out = []
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise InvalidArgument("expected an object with role and content", field=where)
        for key, value in msg.items():
            # tool calls, names and audio would all change the prompt the model sees
            if key not in ("role", "content") and value is not None:
                raise InvalidArgument(f"unsupported message field {key!r}", field=f"{where}.{key}")
        role, content = msg.get("role"), msg.get("content")
        if not isinstance(role, str) or not role:
            raise InvalidArgument("expected a role", field=f"{where}.role")
        bounds.check_value(role, "id", f"{where}.role")
        if isinstance(content, list):  # content parts: text only
            texts = []
            for k, part in enumerate(content):
                if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                    raise InvalidArgument("only text content parts are supported", field=f"{where}.content[{k}]")
                texts.append(part["text"])
            content = "".join(texts)
        if not isinstance(content, str):
            raise InvalidArgument("expected a string or a list of text parts", field=f"{where}.content")
        bounds.check_value(content, "prompt", f"{where}.content")
        out.append(ChatMessage(role, content))
    return tuple(out)


# ---- engine outputs -> OpenAI objects -------------------------------------------------


def finish_reason(final: FinalOutput) -> str | None:
    """OpenAI's finish_reason; None for an end it has no word for (cancelled, expired)."""
    return _FINISH.get(final.finish_reason)


class Answer:
    """The objects of one call's answer: ids, chunks, the whole response and usage."""

    def __init__(self, call: Call, decode_token) -> None:
        self.call = call
        self._decode = decode_token  # token id -> its text, for logprobs
        self.id = ("chatcmpl-" if call.kind == "chat" else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.object = "chat.completion" if call.kind == "chat" else "text_completion"
        self._around: dict[int, tuple[bytes, bytes]] = {}  # choice -> its text events' constant bytes

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.call.model}

    def logprobs(self, token_ids: list[int], logprobs: list[float]) -> dict[str, Any] | None:
        if not self.call.logprobs:
            return None
        tokens = [self._decode(t) for t in token_ids]
        if self.call.kind == "chat":
            return {"content": [{"token": tok, "logprob": lp, "bytes": list(tok.encode()), "top_logprobs": []}
                                for tok, lp in zip(tokens, logprobs)]}
        return {"tokens": tokens, "token_logprobs": list(logprobs), "top_logprobs": None, "text_offset": None}

    def chunk(self, index: int, chunk: TokenChunk | None, final: FinalOutput | None, first: bool) -> dict[str, Any]:
        """One stream chunk of choice `index`: its new text (`chunk`), or its end (`final`)."""
        text = chunk.text if chunk is not None else ""
        lp = self.logprobs(list(chunk.token_ids), list(chunk.logprobs or ())) if chunk is not None else None
        reason = finish_reason(final) if final is not None else None
        if self.call.kind == "chat":
            delta: dict[str, Any] = {"role": "assistant"} if first else {}
            if chunk is not None:
                delta["content"] = text
            choice = {"index": index, "delta": delta, "logprobs": lp, "finish_reason": reason}
            out = self._head("chat.completion.chunk")
        else:
            choice = {"index": index, "text": text, "logprobs": lp, "finish_reason": reason}
            out = self._head("text_completion")
        out["choices"] = [choice]
        if self.call.include_usage:
            out["usage"] = None
        return out

    def text_event(self, index: int, text: str) -> bytes:
        """The server-sent event of `chunk(index, <a chunk of text>, None, first=False)` in a
        call without logprobs, byte for byte as `json.dumps(chunk, separators=(",", ":"))`
        writes it. Such events differ only in their text: the JSON around it is built once
        per choice and only the text is encoded, since encoding the whole object for every
        token was most of what a stream cost the daemon per token."""
        around = self._around.get(index)
        if around is None:
            chat = self.call.kind == "chat"
            head = json.dumps(self._head("chat.completion.chunk" if chat else "text_completion"), separators=(",", ":"))
            prefix = f'{head[:-1]},"choices":[{{"index":{index},' + ('"delta":{"content":' if chat else '"text":')
            suffix = ("}" if chat else "") + ',"logprobs":null,"finish_reason":null}]'
            suffix += ',"usage":null}' if self.call.include_usage else "}"
            around = self._around[index] = (b"data: " + prefix.encode(), suffix.encode() + b"\n\n")
        return around[0] + json.dumps(text).encode() + around[1]

    def usage(self, finals: Mapping[int, FinalOutput]) -> dict[str, Any]:
        """OpenAI's usage: each prompt counted once, however many choices it has; its
        cached tokens (the prefix cache) as the same choice reported them."""
        prompt = {self.call.prompt_of[i]: (f.prompt_tokens, f.cached_prompt_tokens) for i, f in finals.items()}
        completion = sum(f.completion_tokens for f in finals.values())
        total = sum(p for p, _ in prompt.values())
        return {"prompt_tokens": total, "completion_tokens": completion, "total_tokens": total + completion,
                "prompt_tokens_details": {"cached_tokens": sum(c for _, c in prompt.values())}}

    def usage_chunk(self, finals: Mapping[int, FinalOutput]) -> dict[str, Any]:
        out = self._head("chat.completion.chunk" if self.call.kind == "chat" else "text_completion")
        out["choices"] = []
        out["usage"] = self.usage(finals)
        return out

    def whole(self, texts: Mapping[int, str], token_ids: Mapping[int, list[int]],
              logprobs: Mapping[int, list[float]], finals: Mapping[int, FinalOutput]) -> dict[str, Any]:
        """The non-streaming response."""
        choices = []
        for i in sorted(finals):
            lp = self.logprobs(token_ids[i], logprobs[i])
            reason = finish_reason(finals[i])
            if self.call.kind == "chat":
                choices.append({"index": i, "message": {"role": "assistant", "content": texts[i]},
                                "logprobs": lp, "finish_reason": reason})
            else:
                choices.append({"index": i, "text": texts[i], "logprobs": lp, "finish_reason": reason})
        out = self._head(self.object)
        out["choices"] = choices
        out["usage"] = self.usage(finals)
        return out
