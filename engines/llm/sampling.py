"""Per-row sampling inside a shared batch.

Each request keeps its own parameters and its own `torch.Generator`, so a seeded request
draws the same random numbers whatever else shares its batch. Greedy rows take the argmax
of the raw logits, exactly as `generate(do_sample=False)` does (repetition penalty, when
set, is applied first, as in transformers' processor order).
"""

from __future__ import annotations

import torch

from engines.llm.types import SamplingParams


def make_generator(params: SamplingParams) -> torch.Generator | None:
    if params.temperature <= 0:
        return None
    gen = torch.Generator(device="cpu")
    if params.seed is not None:
        gen.manual_seed(params.seed)
    else:
        gen.seed()
    return gen


def sample_row(
    logits: torch.Tensor,  # (V,) float32 on CPU
    params: SamplingParams,
    seen: torch.Tensor | None,  # (n,) int64 prompt + generated ids, for repetition penalty
    gen: torch.Generator | None,
    allowed: torch.Tensor | None = None,  # (V',) bool, a constrained row's mask (constraints.py)
) -> tuple[int, float | None]:
    """Choose the next token for one row; return it and its log-probability if asked."""
    raw = logits
    if params.repetition_penalty != 1.0 and seen is not None and seen.numel():
        logits = logits.clone()
        picked = logits[seen]
        picked = torch.where(picked < 0, picked * params.repetition_penalty, picked / params.repetition_penalty)
        logits[seen] = picked
    if allowed is not None:
        logits = apply_mask(logits, allowed)
    if params.temperature <= 0 or gen is None:
        token = int(torch.argmax(logits))
    else:
        logits = logits / params.temperature
        if params.top_k > 0 and params.top_k < logits.numel():
            kth = torch.topk(logits, params.top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if params.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, descending=True)
            cum = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
            # Drop tokens once the mass before them already reaches top_p; always keep one.
            drop = (cum - torch.softmax(sorted_logits, dim=-1)) >= params.top_p
            drop[0] = False
            logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        token = int(torch.multinomial(probs, 1, generator=gen))
    logprob = float(torch.log_softmax(raw, dim=-1)[token]) if params.logprobs else None
    return token, logprob


def apply_mask(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """`logits` (V,) with every token `allowed` (V',) refuses at -inf. The model's vocabulary
    may be padded past the tokenizer's (V > V'): that tail is refused too."""
    n = min(allowed.numel(), logits.numel())
    keep = torch.zeros(logits.numel(), dtype=torch.bool)
    keep[:n] = allowed[:n]
    return logits.masked_fill(~keep, float("-inf"))


def sample_batch(
    logits: torch.Tensor,  # (B, V) on the model's device
    # (params, seen, gen, allowed) per row: allowed is a constrained row's (V',) bool mask, else None
    rows: list[tuple[SamplingParams, torch.Tensor | None, torch.Generator | None, torch.Tensor | None]],
) -> list[tuple[int, float | None]]:
    """Next token (and logprob) per row.

    Plain greedy rows take one batched argmax where the logits are, so only B ints cross
    to the host; rows that sample, penalise, want logprobs or are constrained get their
    logits row copied to the host and go through `sample_row` with their own generator
    (a row's mask touches only that row: the others sample exactly as without it)."""
    picks: list[tuple[int, float | None]] = [(0, None)] * len(rows)
    plain = [i for i, (p, _, _, allowed) in enumerate(rows)
             if p.temperature <= 0 and p.repetition_penalty == 1.0 and not p.logprobs and allowed is None]
    if plain:
        for i, token in zip(plain, logits[plain].argmax(-1).tolist()):
            picks[i] = (token, None)
    plain_set = set(plain)
    rest = [i for i in range(len(rows)) if i not in plain_set]
    if rest:
        host = logits[rest].float().cpu()  # one device->host copy for these rows
        for j, i in enumerate(rest):
            params, seen, gen, allowed = rows[i]
            picks[i] = sample_row(host[j], params, seen, gen, allowed)
    return picks
