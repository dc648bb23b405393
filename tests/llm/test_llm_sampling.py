"""Per-request sampling, stop strings and UTF-8 streaming inside a shared batch."""

from __future__ import annotations

import asyncio

import pytest

from engines.llm.types import ChatMessage, FinishReason, GenerationRequest, SamplingParams, TokenChunk
from llm_helpers import PROMPTS, collect


def sampled(seed: int, **kw) -> SamplingParams:
    return SamplingParams(max_new_tokens=20, temperature=0.9, top_k=50, top_p=0.95, seed=seed, ignore_eos=True, **kw)


async def test_llm_seeded_sampling_same_alone_and_in_a_crowd(engine):
    alone = await collect(engine, GenerationRequest("s-alone", prompt=PROMPTS[0], sampling=sampled(7)))
    crowd = await asyncio.gather(
        collect(engine, GenerationRequest("s-crowd", prompt=PROMPTS[0], sampling=sampled(7))),
        *(collect(engine, GenerationRequest(f"s-n{i}", prompt=p, sampling=sampled(100 + i)))
          for i, p in enumerate(PROMPTS[1:])))
    assert crowd[0][0] == alone[0]
    assert crowd[0][1] == alone[1]
    assert len({tuple(r[0]) for r in crowd}) > 1


async def test_llm_repetition_penalty_and_logprobs(engine, reference):
    import torch

    model, tok = reference
    prompt_ids = tok(PROMPTS[0])["input_ids"]
    ids, _, _ = await collect(engine, GenerationRequest("rp", prompt=PROMPTS[0], sampling=SamplingParams(
        max_new_tokens=12, repetition_penalty=1.5)))
    with torch.no_grad():
        ref = model.generate(torch.tensor([prompt_ids]), max_new_tokens=12, do_sample=False, repetition_penalty=1.5)
    assert ids == ref[0, len(prompt_ids):].tolist()[: len(ids)] and ids
    # Logprobs are log-softmax of the model's logits at each chosen token.
    chunks = [c async for c in engine.generate(GenerationRequest("lp", prompt=PROMPTS[0], sampling=SamplingParams(
        max_new_tokens=5, logprobs=True)))]
    got_ids = [t for c in chunks if isinstance(c, TokenChunk) for t in c.token_ids]
    lps = [lp for c in chunks if isinstance(c, TokenChunk) for lp in c.logprobs]
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + got_ids])).logits[0]  # (T, V)
    want = [torch.log_softmax(logits[len(prompt_ids) - 1 + i].float(), -1)[t].item() for i, t in enumerate(got_ids)]
    assert len(lps) == len(got_ids) == 5
    assert lps == pytest.approx(want, abs=1e-4)


async def test_llm_stop_sequence_cuts_text(engine):
    full_ids, full_text, _ = await collect(engine, GenerationRequest(
        "full", prompt=PROMPTS[1], sampling=SamplingParams(max_new_tokens=30, ignore_eos=True)))
    assert len(full_text) > 6
    stop = full_text[4:7]
    before = full_text[: full_text.find(stop)]
    ids, text, final = await collect(engine, GenerationRequest(
        "stopper", prompt=PROMPTS[1], sampling=SamplingParams(max_new_tokens=30, ignore_eos=True, stop=(stop,))))
    assert final.finish_reason is FinishReason.STOP_SEQUENCE
    assert text == before
    assert ids == full_ids[: len(ids)] and len(ids) < len(full_ids)


async def test_llm_streamed_text_is_never_broken_utf8(engine, reference):
    """Random weights emit arbitrary byte tokens: no chunk may end in half a character,
    and the streamed text must equal decoding all ids at once (nothing emitted early)."""
    _, tok = reference
    for i in range(3):
        ids, text, _ = await collect(engine, GenerationRequest(
            f"u{i}", prompt="emoji 🚀🌍 東京 Привет", sampling=SamplingParams(
                max_new_tokens=40, temperature=1.5, seed=i, ignore_eos=True)))
        chunks = [c async for c in engine.generate(GenerationRequest(
            f"u{i}b", prompt="emoji 🚀🌍 東京 Привет", sampling=SamplingParams(
                max_new_tokens=40, temperature=1.5, seed=i, ignore_eos=True)))]
        texts = [c.text for c in chunks if isinstance(c, TokenChunk)]
        assert not any(t.endswith("\ufffd") for t in texts)
        assert "".join(texts) == text
        assert text == tok.decode(ids, skip_special_tokens=True).rstrip("\ufffd")


async def test_llm_incremental_decoder_holds_multibyte_chars(reference):
    from engines.llm.detok import IncrementalDecoder

    _, tok = reference
    text = "naïve 東京 🚀 done"
    ids = tok(text)["input_ids"]
    dec = IncrementalDecoder(tok, [], ())
    pieces = [dec.push(i) for i in ids] + [dec.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


async def test_llm_chat_messages_use_the_template(engine, reference):
    _, tok = reference
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    want = len(tok(rendered, add_special_tokens=False)["input_ids"])
    ids, _, final = await collect(engine, GenerationRequest("chat", messages=(
        ChatMessage("system", "be brief"), ChatMessage("user", "hello")), sampling=SamplingParams(max_new_tokens=4)))
    assert final.prompt_tokens == want and len(ids) == final.completion_tokens


def test_llm_sampling_filters_reduce_to_greedy_at_their_limits():
    import torch

    from engines.llm.sampling import make_generator, sample_row

    logits = torch.randn(300, generator=torch.Generator().manual_seed(3))
    best = int(logits.argmax())
    for params in (SamplingParams(temperature=1.0, top_k=1, seed=1), SamplingParams(temperature=1.0, top_p=1e-6, seed=1)):
        for _ in range(5):
            token, _ = sample_row(logits, params, None, make_generator(params))
            assert token == best
    # A repetition penalty pushes a seen top token down under greedy.
    token, _ = sample_row(logits, SamplingParams(repetition_penalty=1e6), torch.tensor([best]), None)
    assert token != best
