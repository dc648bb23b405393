"""Request validation: every error names the field at fault, as the proto spells it.

Runs on the event loop before a request is queued, so a bad request costs no scheduler
step; tokenizing here also lets the prompt-length limits be checked up front.
"""

from __future__ import annotations

import math
from typing import Any

from engines.errors import InvalidArgument
from engines.llm.config import SchedulerConfig
from engines.llm.types import GenerationRequest


def validate_and_tokenize(req: GenerationRequest, tokenizer: Any, sched: SchedulerConfig, max_positions: int,
                          grammars: Any = None) -> list[int]:
    """Check a request field by field (errors name the proto field) and return its prompt ids.
    A constraint is prechecked here (`grammars`, a `constraints.Grammars`): what is refused
    without compiling it; the engine compiles it off the event loop."""
    s = req.sampling
    if not req.request_id:
        raise InvalidArgument("request_id must be set", field="request_id")
    if not (math.isfinite(s.temperature) and s.temperature >= 0):
        raise InvalidArgument("must be >= 0 (0 = greedy)", field="sampling.temperature")
    if s.top_k < 0:
        raise InvalidArgument("must be >= 0 (0 = off)", field="sampling.top_k")
    if not (0.0 < s.top_p <= 1.0):
        raise InvalidArgument("must be in (0, 1]", field="sampling.top_p")
    if not (1 <= s.max_new_tokens <= sched.max_new_tokens_limit):
        raise InvalidArgument(f"must be in [1, {sched.max_new_tokens_limit}]", field="sampling.max_new_tokens")
    if not (math.isfinite(s.repetition_penalty) and s.repetition_penalty > 0):
        raise InvalidArgument("must be > 0 (1 = off)", field="sampling.repetition_penalty")
    if any(not stop for stop in s.stop):
        raise InvalidArgument("stop strings must be non-empty", field="sampling.stop")
    if s.constraint is not None:
        if s.ignore_eos:
            raise InvalidArgument("a constrained request ends with EOS when its grammar completes; "
                                  "ignore_eos cannot be set with a constraint", field="sampling.ignore_eos")
        if grammars is None:
            raise InvalidArgument("this model does not take constraints", field="constraint")
        grammars.precheck(s.constraint)
    if (req.prompt is None) == (not req.messages):
        raise InvalidArgument("set exactly one of prompt or messages", field="prompt")
    # Tokenizing runs on the event loop: bound the text first, so a 64 MiB prompt is refused
    # at once instead of stalling every stream (and the systemd watchdog) while it encodes.
    # No tokenizer we serve packs more than 32 characters into one token on real text.
    chars = len(req.prompt or "") + sum(len(m.content) + len(m.role) for m in req.messages)
    if chars > 32 * sched.max_prompt_tokens:
        raise InvalidArgument(f"{chars} characters cannot fit max_prompt_tokens={sched.max_prompt_tokens}",
                              field="messages" if req.messages else "prompt")
    if req.messages:
        field = "messages"
        if not getattr(tokenizer, "chat_template", None):
            raise InvalidArgument("this model has no chat template; send a prompt", field="messages")
        for msg in req.messages:
            if not msg.role:
                raise InvalidArgument("every message needs a role", field="messages")
        try:
            text = tokenizer.apply_chat_template(
                [{"role": msg.role, "content": msg.content} for msg in req.messages],
                tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # the template rejected the conversation (jinja raise_exception)
            raise InvalidArgument(f"the chat template refused these messages: {exc}", field="messages") from None
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        field = "prompt"
        ids = tokenizer(req.prompt)["input_ids"]
    if not ids:
        raise InvalidArgument("prompt is empty", field=field)
    if len(ids) > sched.max_prompt_tokens:
        raise InvalidArgument(f"{len(ids)} tokens exceed max_prompt_tokens={sched.max_prompt_tokens}", field=field)
    limit = min(sched.max_batch_tokens, max_positions)
    if len(ids) + s.max_new_tokens > limit:
        raise InvalidArgument(
            f"prompt ({len(ids)} tokens) + max_new_tokens exceeds {limit}", field="sampling.max_new_tokens")
    return ids
