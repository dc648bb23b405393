"""Scheduling policy on a fake runner: no model, no tensors, an explicit clock.

The fake runner executes a `StepPlan` the way the real one does (rows decode one token
each; a prompt's last chunk yields its first token) and the loop finishes a request after
`max_new_tokens` tokens, as output handling would.
"""

from __future__ import annotations

import itertools

import pytest

from engines.llm.config import SchedulerConfig
from engines.llm.scheduler import Scheduler, Sequence, Status, StepPlan
from engines.llm.types import FinishReason, GenerationRequest, SamplingParams

_order = itertools.count()


def seq(rid: str, prompt: int = 4, new: int = 4, priority: int = 0, t: float = 0.0,
        deadline: float | None = None) -> Sequence:
    req = GenerationRequest(rid, prompt="x", priority=priority, deadline=deadline,
                            sampling=SamplingParams(max_new_tokens=new))
    return Sequence(req, list(range(prompt)), t_enqueue=t, order=next(_order))


class FakeRunner:
    """Counts tokens per request as the model runner would produce them."""

    def __init__(self) -> None:
        self.tokens: dict[str, int] = {}
        self.plans: list[StepPlan] = []

    def execute(self, plan: StepPlan) -> list[Sequence]:
        self.plans.append(plan)
        sampled = list(plan.decode) + [c.seq for c in plan.prefill if c.last]
        for s in sampled:
            self.tokens[s.request.request_id] = self.tokens.get(s.request.request_id, 0) + 1
        return sampled


def step(sched: Scheduler, runner: FakeRunner, now: float) -> StepPlan:
    plan = sched.schedule(now)
    for s in runner.execute(plan):
        if runner.tokens[s.request.request_id] >= s.request.sampling.max_new_tokens:
            sched.finish(s)
    return plan


def config(**kw) -> SchedulerConfig:
    base = dict(max_running=4, max_batch_tokens=1000, max_waiting=64, prefill_chunk_tokens=64,
                max_step_tokens=64, priority_aging_s=10.0, max_prompt_tokens=100)
    base.update(kw)
    return SchedulerConfig(**base)


def ids(seqs) -> list[str]:
    return [s.request.request_id for s in seqs]


def test_admission_by_priority_fifo_among_equals():
    sched = Scheduler(config(max_running=2))
    for s in [seq("a"), seq("b", priority=1), seq("c"), seq("d", priority=1)]:
        assert sched.add(s)
    plan = sched.schedule(0.0)
    assert ids(plan.admitted) == ["b", "d"]
    assert sched.running_count == 2 and sched.waiting_count == 2


def test_aging_lifts_a_low_priority_request_past_new_high_ones():
    sched = Scheduler(config(max_running=1, priority_aging_s=1.0))
    old = seq("old", priority=0, t=0.0)
    sched.add(old)
    sched.add(seq("new", priority=2, t=9.0))
    # At t=10 the old one has aged +10 against the new one's 2 + 1.
    assert ids(sched.schedule(10.0).admitted) == ["old"]


def test_no_aging_yet_means_priority_wins():
    sched = Scheduler(config(max_running=1, priority_aging_s=100.0))
    sched.add(seq("old", priority=0, t=0.0))
    sched.add(seq("new", priority=2, t=9.0))
    assert ids(sched.schedule(10.0).admitted) == ["new"]


def test_row_budget_and_reserved_token_budget():
    sched = Scheduler(config(max_running=8, max_batch_tokens=20, max_prompt_tokens=8))
    for i in range(4):
        sched.add(seq(f"r{i}", prompt=4, new=4))  # reserves 8 each: two fit in 20
    plan = sched.schedule(0.0)
    assert ids(plan.admitted) == ["r0", "r1"]
    assert sched.reserved == 16
    sched.finish(plan.admitted[0])
    assert sched.reserved == 8
    assert ids(sched.schedule(0.0).admitted) == ["r2"]


def test_the_best_request_waits_for_room_and_smaller_ones_do_not_jump_it():
    sched = Scheduler(config(max_running=8, max_batch_tokens=40, max_prompt_tokens=30))
    sched.add(seq("small0", prompt=4, new=4))
    sched.schedule(0.0)
    sched.add(seq("big", prompt=20, new=16, t=1.0))  # needs 36, only 32 free
    sched.add(seq("small1", prompt=4, new=4, t=2.0))
    assert sched.schedule(3.0).admitted == []


def test_step_token_budget_counts_decode_rows_and_chunks_long_prompts():
    sched = Scheduler(config(max_running=8, max_step_tokens=16, prefill_chunk_tokens=16))
    runner = FakeRunner()
    for i in range(3):
        sched.add(seq(f"run{i}", prompt=2, new=100))
    step(sched, runner, 0.0)  # three prompts of 2 tokens prefilled
    sched.add(seq("long", prompt=30, new=4))
    chunks = []
    for t in range(1, 5):
        plan = step(sched, runner, float(t))
        assert plan.num_tokens <= 16
        assert ids(plan.decode)[:3] == ["run0", "run1", "run2"]  # running rows never skipped
        chunks += [(c.start, c.length) for c in plan.prefill]
    # 16 - 3 decode rows = 13 prompt tokens per step, then the rest; then it decodes.
    assert chunks == [(0, 13), (13, 13), (26, 4)]
    assert "long" in ids(sched.running)


def test_prefill_chunk_cap_applies_below_the_step_budget():
    sched = Scheduler(config(max_step_tokens=64, prefill_chunk_tokens=5))
    sched.add(seq("p", prompt=12))
    lengths = [sched.schedule(float(t)).prefill_tokens for t in range(3)]
    assert lengths == [5, 5, 2]


def test_burst_is_prefilled_fifo_over_budgeted_steps_without_stalling_running_rows():
    """Eight streams decoding (more than burst_stall_fraction of 32): a burst waits for
    budgeted steps and never stalls them beyond the step budget."""
    cfg = config(max_running=32, max_step_tokens=48, prefill_chunk_tokens=512, max_batch_tokens=10000)
    sched, runner = Scheduler(cfg), FakeRunner()
    for i in range(8):
        sched.add(seq(f"first{i}", prompt=8, new=200))
    step(sched, runner, 0.0)
    burst = [seq(f"b{i:02d}", prompt=8, new=200, t=1.0) for i in range(24)]
    for s in burst:
        sched.add(s)
    admitted, t = [], 1.0
    while sched.waiting_count or sched.prefilling:
        running_before = list(sched.running)
        plan = step(sched, runner, t)
        assert plan.decode == running_before  # every running row decodes every step
        assert plan.num_tokens <= 48 or plan.prefill_tokens == 1
        admitted += plan.admitted
        t += 0.01
    assert ids(admitted) == ids(burst)  # FIFO among equal priorities
    # Each request got its first token (runner count) in order: no one overtaken.
    assert all(runner.tokens[s.request.request_id] >= 1 for s in burst)
    # The clock is fixed, so the plan is known: each step fills its 48 tokens, less one per
    # running row, with 8-token prompts (the last of them chunked into the next step).
    assert [len(p.admitted) for p in runner.plans] == [8, 5, 5, 4, 3, 3, 3, 1]


@pytest.mark.parametrize("fraction, one_step", [(0.125, True), (0.0, False)])
def test_a_burst_into_a_quiet_engine_is_prefilled_in_one_step(fraction, one_step):
    """One stream decoding (at most burst_stall_fraction of max_running): the whole burst
    is prefilled in the next step, which stalls that one stream once; with the fraction at
    0 the burst is spread over budgeted steps instead."""
    cfg = config(max_running=32, max_step_tokens=48, prefill_chunk_tokens=512, max_batch_tokens=10000,
                 burst_stall_fraction=fraction)
    sched, runner = Scheduler(cfg), FakeRunner()
    sched.add(seq("first", prompt=8, new=200))
    step(sched, runner, 0.0)
    burst = [seq(f"b{i:02d}", prompt=8, new=200, t=1.0) for i in range(31)]
    for s in burst:
        sched.add(s)
    plan = step(sched, runner, 1.0)
    assert ids(plan.decode) == ["first"]  # the running stream still decodes in that step
    assert (ids(plan.admitted) == ids(burst) and plan.prefill_tokens == 31 * 8) is one_step
    if not one_step:
        assert plan.num_tokens <= 48
    nxt = step(sched, runner, 1.01)
    assert len(nxt.decode) == (32 if one_step else 1 + sum(c.last for c in plan.prefill))


def test_deadline_expiry_in_every_set():
    sched = Scheduler(config(max_running=2, max_step_tokens=8, prefill_chunk_tokens=8))
    runner = FakeRunner()
    running = seq("running", prompt=2, new=100, deadline=5.0)
    prefilling = seq("prefilling", prompt=40, new=4, deadline=5.0)
    waiting = seq("waiting", prompt=2, new=4, deadline=5.0)
    for s in (running, prefilling, waiting):
        sched.add(s)
    step(sched, runner, 0.0)
    step(sched, runner, 1.0)
    assert running.status is Status.RUNNING and prefilling.status is Status.PREFILLING
    assert waiting.status is Status.WAITING
    plan = sched.schedule(5.0)
    assert {(s.request.request_id, r) for s, r in plan.dropped} == {
        ("running", FinishReason.DEADLINE), ("prefilling", FinishReason.DEADLINE), ("waiting", FinishReason.DEADLINE)}
    assert not plan and sched.reserved == 0 and sched.running_count == 0 and not sched.has_work()


def test_cancel_drops_before_the_step_and_frees_room():
    sched = Scheduler(config(max_running=1))
    runner = FakeRunner()
    a, b = seq("a", new=100), seq("b")
    sched.add(a)
    sched.add(b)
    step(sched, runner, 0.0)
    a.cancelled = True
    plan = sched.schedule(1.0)
    assert plan.dropped == [(a, FinishReason.CANCELLED)]
    assert a not in plan.decode and ids(plan.admitted) == ["b"]
    assert a.done


def test_cancel_while_waiting_never_reaches_the_runner():
    sched = Scheduler(config())
    s = seq("w")
    sched.add(s)
    s.cancelled = True
    plan = sched.schedule(0.0)
    assert plan.dropped == [(s, FinishReason.CANCELLED)] and not plan.prefill


def test_waiting_queue_bound():
    sched = Scheduler(config(max_waiting=2))
    assert sched.add(seq("a")) and sched.add(seq("b"))
    assert not sched.add(seq("c"))
    assert sched.waiting_count == 2


def test_abort_all_frees_admitted_requests_and_keeps_the_waiting():
    sched = Scheduler(config(max_running=2))
    for i in range(3):
        sched.add(seq(f"s{i}"))
    sched.schedule(0.0)
    victims = sched.abort_all()
    assert ids(victims) == ["s0", "s1"] and sched.reserved == 0 and sched.running_count == 0
    assert sched.waiting_count == 1


def test_every_request_finishes_with_its_token_count_under_random_traffic():
    import random

    rng = random.Random(7)
    sched, runner = Scheduler(config(max_running=6, max_step_tokens=24, prefill_chunk_tokens=16)), FakeRunner()
    made, t = [], 0.0
    for _ in range(400):
        if len(made) < 60 and rng.random() < 0.3:
            s = seq(f"q{len(made)}", prompt=rng.randint(1, 40), new=rng.randint(1, 12), priority=rng.randint(0, 2), t=t)
            if sched.add(s):
                made.append(s)
        step(sched, runner, t)
        t += 0.1
    while sched.has_work():
        step(sched, runner, t)
        t += 0.1
    assert all(s.done for s in made)
    assert all(runner.tokens[s.request.request_id] == s.request.sampling.max_new_tokens for s in made)
    assert sched.reserved == 0 and sched.running_count == 0


def test_overlapped_steps_never_decode_a_request_past_its_length():
    """The model process's order: step k+1 is planned before step k's tokens are applied.
    Every request must still be computed exactly max_new_tokens tokens, not one more."""
    import random

    rng = random.Random(11)
    sched, runner = Scheduler(config(max_running=6, max_step_tokens=24, prefill_chunk_tokens=16)), FakeRunner()
    made, t, pending = [], 0.0, []

    def overlapped_step() -> None:
        nonlocal pending
        plan = sched.schedule(t)
        previous, pending = pending, runner.execute(plan)  # sent; the previous step is applied meanwhile
        for s in previous:
            if runner.tokens[s.request.request_id] >= s.request.sampling.max_new_tokens:
                sched.finish(s)

    for _ in range(400):
        if len(made) < 60 and rng.random() < 0.3:
            s = seq(f"o{len(made)}", prompt=rng.randint(1, 40), new=rng.randint(1, 12), t=t)
            if sched.add(s):
                made.append(s)
        overlapped_step()
        t += 0.1
    while sched.has_work() or pending:
        overlapped_step()
        t += 0.1
    assert all(s.done for s in made)
    assert {s.request.request_id: runner.tokens[s.request.request_id] for s in made} == \
        {s.request.request_id: s.request.sampling.max_new_tokens for s in made}
    assert sched.reserved == 0 and sched.running_count == 0


@pytest.mark.parametrize("bad", [dict(max_step_tokens=4, max_running=4), dict(max_step_tokens=2, max_running=8)])
def test_step_budget_must_leave_room_for_prefill(bad):
    from engines.config import ConfigError

    with pytest.raises(ConfigError, match="max_step_tokens"):
        config(**bad)


def test_a_step_with_no_decoding_row_may_prefill_a_whole_chunk():
    """Nobody waits on a step without decode rows: it prefills up to prefill_chunk_tokens,
    beyond max_step_tokens; once rows decode, the step budget applies again."""
    sched, runner = Scheduler(config(max_running=4, max_step_tokens=8, prefill_chunk_tokens=64)), FakeRunner()
    for i in range(3):
        sched.add(seq(f"p{i}", prompt=10, new=50))
    first = step(sched, runner, 0.0)
    assert first.prefill_tokens == 30 and not first.decode
    sched.add(seq("late", prompt=10, new=5))
    later = step(sched, runner, 1.0)
    assert len(later.decode) == 3 and later.num_tokens == 8


def test_default_step_budget_is_two_tokens_per_running_row():
    from dataclasses import replace

    assert SchedulerConfig(max_running=32).step_tokens == 64
    assert SchedulerConfig(max_running=1).step_tokens == 2  # must exceed max_running
    assert SchedulerConfig(max_running=32, max_step_tokens=512).step_tokens == 512
    # Derived, not stored: a copy with more rows gets its own default budget, and the
    # configuration reported (ListModels, /statusz) keeps what the operator wrote.
    assert replace(SchedulerConfig(max_running=32), max_running=64).step_tokens == 128
    assert SchedulerConfig(max_running=32).max_step_tokens == 0
