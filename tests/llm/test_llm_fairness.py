"""Fair admission across tenants, on the scheduler alone (no model): while one tenant
floods the waiting queue, another tenant's single request is admitted at the next
admission, whatever the flood's priorities."""

from __future__ import annotations

import itertools

from engines.llm.config import SchedulerConfig
from engines.llm.scheduler import Scheduler, Sequence
from engines.llm.types import GenerationRequest, SamplingParams

_order = itertools.count()


def seq(rid: str, tenant: str, priority: int = 0, t: float = 0.0) -> Sequence:
    req = GenerationRequest(rid, prompt="x", priority=priority, tenant=tenant, sampling=SamplingParams(max_new_tokens=2))
    return Sequence(req, [1, 2, 3], t_enqueue=t, order=next(_order))


def test_a_flood_holds_another_tenant_back_by_one_admission_at_most():
    sched = Scheduler(SchedulerConfig(max_running=1, max_batch_tokens=1000, max_waiting=256, prefill_chunk_tokens=64,
                                      max_step_tokens=64, priority_aging_s=10.0, max_prompt_tokens=100))
    flood = [seq(f"a{i}", "team-a", priority=5) for i in range(100)]
    for s in flood[:50]:
        assert sched.add(s)
    admitted: list[str] = []
    for step in range(12):
        if step == 3:
            assert sched.add(seq("b0", "team-b"))  # one request, lowest priority, mid-flood
        if step == 4:
            for s in flood[50:]:
                assert sched.add(s)  # the flood goes on
        plan = sched.schedule(float(step))
        admitted += [s.request.request_id for s in plan.admitted]
        for s in plan.admitted:
            sched.finish(s)  # one request per step: max_running = 1
    i = admitted.index("b0")
    assert i == 3
    assert admitted[:i] == ["a0", "a1", "a2", "a3"][:i]
    assert all(r.startswith("a") for r in admitted[i + 1:])  # then the flood, in order


def test_one_tenant_keeps_priority_order():
    sched = Scheduler(SchedulerConfig(max_running=2, max_batch_tokens=1000, max_waiting=64, prefill_chunk_tokens=64,
                                      max_step_tokens=64, priority_aging_s=10.0, max_prompt_tokens=100))
    for s in [seq("a", ""), seq("b", "", priority=1), seq("c", ""), seq("d", "", priority=1)]:
        assert sched.add(s)
    assert [s.request.request_id for s in sched.schedule(0.0).admitted] == ["b", "d"]
