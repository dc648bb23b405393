"""The model runner's KV layouts give the same tokens: the padded `DynamicCache` layout, the
static slot layout (one forward per step, decode rows and prompt chunks together), and the
static layout's decode step with static shapes (rows padded to buckets, attention over the
whole capacity): the step CUDA graphs capture, run here uncompiled.

Driven by the real scheduler with small budgets, so prompts are split into chunks, arrive
while others decode, and rows leave mid-batch (slots are compacted)."""

from __future__ import annotations

import random
import time

import pytest
import torch

from engines.llm.config import SchedulerConfig
from engines.llm.layouts import DecodeGraphLayout, PaddedLayout, SlotLayout, decode_buckets
from engines.llm.prefix_cache import BlockStore, PrefixIndex
from engines.llm.runner import ModelRunner, StepModel
from engines.llm.scheduler import Scheduler, Sequence
from engines.llm.types import GenerationRequest, SamplingParams


def _workload(vocab: int) -> list[tuple[list[int], int]]:
    rng = random.Random(3)
    return [([rng.randrange(3, vocab) for _ in range(rng.randrange(1, 40))], rng.randrange(1, 24)) for _ in range(11)]


def _padded(model) -> ModelRunner:
    step_model = StepModel(model, torch.device("cpu"))
    return ModelRunner(PaddedLayout(step_model), step_model)


def _serve(runner: ModelRunner, work: list[tuple[list[int], int]], prefix: PrefixIndex | None = None) -> list[list[int]]:
    """Arrivals every other step; each request ends after its token count."""
    sched = Scheduler(SchedulerConfig(max_running=4, max_step_tokens=9, prefill_chunk_tokens=7,
                                      max_batch_tokens=4000, max_prompt_tokens=100), prefix)
    seqs = [Sequence(GenerationRequest(f"r{i}", prompt="x", sampling=SamplingParams(max_new_tokens=n, ignore_eos=True)),
                     prompt, order=i, cache_key="") for i, (prompt, n) in enumerate(work)]
    out: dict[Sequence, list[int]] = {s: [] for s in seqs}
    pending, t = list(seqs), 0
    with torch.no_grad():
        while pending or sched.has_work():
            if pending and t % 2 == 0:
                sched.add(pending.pop(0))
            t += 1
            plan = sched.schedule(time.monotonic())
            if not plan:
                continue
            done = []
            for x in runner.execute(plan).sampled:
                out[x.seq].append(x.token)
                if len(out[x.seq]) == x.seq.request.sampling.max_new_tokens:
                    done.append(x.seq)
            runner.free(done)
            for s in done:
                sched.finish(s)
    return [out[s] for s in seqs]


@pytest.fixture(scope="module")
def model_pair(tiny_dir):
    """The reference model (sdpa) and a copy switched to the static layout's attention."""
    from transformers import AutoModelForCausalLM

    from engines.llm import slots

    ref = AutoModelForCausalLM.from_pretrained(tiny_dir, local_files_only=True).eval()
    static = AutoModelForCausalLM.from_pretrained(tiny_dir, local_files_only=True).eval()
    slots.register()
    static.config._attn_implementation = slots.ATTENTION
    return ref, static


@pytest.mark.parametrize("layout", ["static", "static-decode-graph", "static-decode-graph-math"])
def test_static_layouts_equal_the_dynamic_cache_and_generate(model_pair, layout):
    """`-math`: the decode group's attention as matmuls (the CUDA default), not SDPA."""
    ref, static = model_pair
    work = _workload(ref.config.vocab_size)
    dynamic = _serve(_padded(ref), work)
    step_model = StepModel(static, torch.device("cpu"))
    math = layout.endswith("-math")
    if layout == "static":
        runner = ModelRunner(SlotLayout(step_model, static.config, 4, math=math), step_model)
    else:  # the step CUDA graphs capture, uncompiled
        graph = DecodeGraphLayout(step_model, static.config, 4, max_len=128, compiled=False, math=math)
        graph.warm_up()
        runner = ModelRunner(graph, step_model)
    got = _serve(runner, work)
    with torch.no_grad():  # generate() stops at EOS, the runner does not: compare up to it
        want = [ref.generate(torch.tensor([p]), max_new_tokens=n, do_sample=False)[0, len(p):].tolist()
                for p, n in work]
    assert [d[: len(w)] for d, w in zip(dynamic, want)] == want
    assert got == dynamic
    assert runner.kv_tokens == 0  # every slot was freed


class _CountingIndex(PrefixIndex):
    hits = 0

    def match(self, hashes, prompt_len):
        n = super().match(hashes, prompt_len)
        self.hits += n
        return n


@pytest.mark.parametrize("layout", ["static", "static-decode-graph"])
@pytest.mark.parametrize("max_tokens", [400, 12])  # room for every prompt; three blocks (evicting)
def test_prefix_cache_in_the_static_layouts_equals_the_dynamic_cache(model_pair, layout, max_tokens):
    """Prompts sharing prefixes of every length (mid-block, a whole prompt again), served
    with the prefix cache (4-token blocks) while others decode: the tokens of the padded
    layout with no cache, and blocks were reused."""
    ref, static = model_pair
    rng = random.Random(5)
    shared = [rng.randrange(3, ref.config.vocab_size) for _ in range(30)]
    work = [(shared[: rng.randrange(1, 31)] + [rng.randrange(3, ref.config.vocab_size) for _ in range(rng.randrange(0, 9))],
             rng.randrange(1, 12)) for _ in range(10)]
    work += [work[3], work[7]]  # prompts seen whole before
    dynamic = _serve(_padded(ref), work)
    step_model = StepModel(static, torch.device("cpu"))
    store = BlockStore(4)
    if layout == "static":
        runner = ModelRunner(SlotLayout(step_model, static.config, 4, store=store), step_model)
    else:
        graph = DecodeGraphLayout(step_model, static.config, 4, max_len=128, compiled=False, store=store)
        graph.warm_up()
        runner = ModelRunner(graph, step_model)
    index = _CountingIndex(max_tokens, 4)
    assert _serve(runner, work, index) == dynamic
    assert index.hits > 0
    assert len(store) == index.tokens // 4 <= max_tokens // 4  # the store holds what the index says
    assert runner.kv_tokens == 0


def test_a_packed_step_computes_logits_only_for_the_rows_it_samples(model_pair):
    """Prompt tokens that complete no prompt need no vocab-sized logits row: the LM head
    sees the decode rows and each completed prompt's last token, nothing else."""
    ref, static = model_pair
    work = _workload(ref.config.vocab_size)
    step_model = StepModel(static, torch.device("cpu"))
    runner = ModelRunner(SlotLayout(step_model, static.config, 4), step_model)
    head_rows: list[int] = []
    hook = static.lm_head.register_forward_hook(lambda mod, args, out: head_rows.append(args[0].shape[0]))
    sampled: list[int] = []
    prefill_tokens: list[int] = []
    execute = runner.execute

    def counting(plan):
        result = execute(plan)
        sampled.append(len(result.sampled))
        prefill_tokens.append(plan.prefill_tokens)
        return result

    runner.execute = counting
    try:
        got = _serve(runner, work)
    finally:
        hook.remove()
    assert head_rows == sampled
    assert any(p > 1 for p in prefill_tokens)  # prompt chunks did run, and were not projected
    assert got == _serve(_padded(ref), work)


def test_generate_on_the_switched_model_still_masks_padding(model_pair):
    """The static layout's attention falls back to SDPA with its masks outside a step."""
    ref, static = model_pair
    ids = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        a = ref.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
        b = static.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert a.tolist() == b.tolist()


def test_decode_buckets_cover_every_batch_size_with_little_padding():
    assert decode_buckets(32) == [1, 2, 4, 8, 16, 24, 32]
    assert decode_buckets(3) == [1, 2, 3]
    for rows in range(1, 41):
        b = decode_buckets(40)
        assert next(x for x in b if x >= rows) - rows <= 7


def test_every_mode_the_config_accepts_has_its_class():
    """`llm.runner` and each (`kv_cache`, `compile`) pair the config accepts name one entry
    of a registry, and the config refuses every pair without one."""
    import itertools
    import typing

    from engines.config import ConfigError, from_mapping
    from engines.llm.config import LLMConfig
    from engines.llm.core import RUNNERS
    from engines.llm.layouts import LAYOUTS

    hints = typing.get_type_hints(LLMConfig)
    assert set(RUNNERS) == set(typing.get_args(hints["runner"]))
    for pair in itertools.product(typing.get_args(hints["kv_cache"]), typing.get_args(hints["compile"])):
        try:
            from_mapping(LLMConfig, {"kv_cache": pair[0], "compile": pair[1]}, "llm")
        except ConfigError:
            assert pair not in LAYOUTS
        else:
            assert pair in LAYOUTS
