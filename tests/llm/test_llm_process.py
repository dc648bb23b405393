"""The model in its own process (`llm.runner = "process"`, the daemon's default): the same
tokens as the worker-thread runner, adapters and errors across the boundary, a child that
dies mid-stream, and a child that outlives neither the engine nor a SIGTERM meant for it."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal

import pytest
import torch

from engines.errors import InvalidArgument, Unavailable
from engines.llm.types import GenerationRequest, SamplingParams, TokenChunk
from fault_injection import Held
from llm_helpers import PROMPTS, collect, greedy_reference, make_config, running

REQUESTS = [  # (prompt, adapter, sampling): greedy, per-row LoRA, seeded sampling, penalty
    (PROMPTS[0], None, SamplingParams(max_new_tokens=8)),
    (PROMPTS[1], "alpha", SamplingParams(max_new_tokens=8)),
    (PROMPTS[2], "beta", SamplingParams(max_new_tokens=6, temperature=0.9, top_p=0.9, seed=7)),
    (PROMPTS[5], None, SamplingParams(max_new_tokens=6, repetition_penalty=1.3)),
    (PROMPTS[4], "alpha", SamplingParams(max_new_tokens=5, temperature=0.7, top_k=20, seed=3)),
]


async def _engine(tiny_dir, adapters_root, runner: str, overlap: str = "on"):
    from engines.llm.engine import LLMEngine

    eng = LLMEngine(make_config(tiny_dir, adapters_root, runner=runner,
                                llm={"overlap_steps": overlap} if runner == "process" else None))
    await asyncio.to_thread(eng.load, lambda msg: None)
    await eng.start(asyncio.get_running_loop())
    for name in ("alpha", "beta"):
        await eng.load_adapter(name, name)
    return eng


async def _run_all(eng, tag: str) -> list[list[int]]:
    results = await asyncio.gather(*(collect(eng, GenerationRequest(f"{tag}{i}", prompt=p, adapter=a, sampling=s))
                                     for i, (p, a, s) in enumerate(REQUESTS)))
    return [ids for ids, _, _ in results]


@pytest.fixture(scope="module", params=["on", "off"])
async def proc_engine(request, tiny_dir, adapters_root):
    """The model process with steps overlapped (the default with CUDA) and in turn (on the CPU)."""
    eng = await _engine(tiny_dir, adapters_root, "process", request.param)
    from engines.llm.process import OverlappedProcessRunner

    assert isinstance(eng.runner, OverlappedProcessRunner) is (request.param == "on")
    yield eng
    await eng.stop(5)


async def test_llm_process_runner_streams_what_the_thread_runner_does(proc_engine, tiny_dir, adapters_root,
                                                                    reference):
    thread_engine = await _engine(tiny_dir, adapters_root, "thread")
    try:
        expected = await _run_all(thread_engine, "t")
    finally:
        await thread_engine.stop(5)
    got = await _run_all(proc_engine, "p")
    assert got == expected
    assert got[0] == greedy_reference(reference, PROMPTS[0], 8)
    assert got[1] != greedy_reference(reference, PROMPTS[1], 8)  # the adapter really applied, in the child
    info = proc_engine.info()
    assert info.parameters == sum(p.numel() for p in reference[0].parameters()) and info.device == "cpu"
    # Every request's slot freed in the child too (once the last step, which may have
    # computed a row for a request that ended on EOS, has come back).
    await proc_engine.wait_until(lambda e: e.stats()["kv_cache_tokens"] == 0, timeout=30)


@pytest.mark.parametrize("proc_engine", ["on"], indirect=True)  # not about overlap: one mode
async def test_llm_process_adapter_errors_keep_their_status_and_field(proc_engine, adapters_root):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    # Same module names as the served model, other shapes: refused by the child's bank check.
    other = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2))
    # Written into the session's adapters root, and taken out again: later tests list the root.
    wrong = adapters_root / "wrong-shape"
    get_peft_model(other, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(wrong)
    try:
        with pytest.raises(InvalidArgument) as err:
            await proc_engine.load_adapter("wrong", "wrong-shape")
    finally:
        shutil.rmtree(wrong)
    assert err.value.field == "path" and "do not match" in err.value.message
    assert {a.name for a in proc_engine.list_adapters()} == {"alpha", "beta"}


@pytest.mark.parametrize("proc_engine", ["on"], indirect=True)  # not about overlap: one mode
async def test_llm_process_child_death_fails_the_stream_then_a_new_child_serves(proc_engine, monkeypatch):
    before = await _run_all(proc_engine, "b")
    pid = proc_engine.runner.process.pid
    held = Held(monkeypatch, after_first_token=True)  # running in the child, and cannot finish
    held.permit(1)  # with overlapped steps a first token is applied once the next step is sent
    long = await running(proc_engine, GenerationRequest(
        "doomed", prompt=PROMPTS[0], sampling=SamplingParams(max_new_tokens=400, ignore_eos=True)))
    await held.reached()
    os.kill(pid, signal.SIGKILL)
    held.release()  # its next step meets the dead child
    with pytest.raises(Unavailable, match="model process exited"):
        await long
    # The next step spawns a new child with both adapters back in their slots.
    after = await _run_all(proc_engine, "a")
    assert after == before and proc_engine.runner.process.pid != pid


async def test_llm_process_child_ignores_sigterm_and_ends_with_the_engine(tiny_dir, adapters_root):
    eng = await _engine(tiny_dir, adapters_root, "process")
    proc = eng.runner.process._proc
    try:
        # systemd's stop signals every process of the unit: the child must keep serving the drain.
        os.kill(proc.pid, signal.SIGTERM)
        ids, _, final = await collect(eng, GenerationRequest("x", prompt=PROMPTS[0],
                                                             sampling=SamplingParams(max_new_tokens=4)))
        assert final.completion_tokens == 4 and proc.is_alive()
    finally:
        await eng.stop(5)
    assert not proc.is_alive() and proc.exitcode == 0
    with pytest.raises(Unavailable):
        eng.generate(GenerationRequest("late", prompt=PROMPTS[0]))


async def test_llm_process_overlapped_steps_end_streams_as_the_thread_runner_does(proc_engine, tiny_dir,
                                                                              adapters_root, monkeypatch):
    """The engine applies step k's tokens while the child computes step k+1: a request
    that a stop string ends is computed once more for nobody, and that token must never
    reach its stream; a cancel mid-stream still ends with CANCELLED and frees its slot."""
    from engines.llm.types import FinishReason

    def stop_request(stop: tuple[str, ...]) -> GenerationRequest:
        return GenerationRequest("s", prompt=PROMPTS[3], sampling=SamplingParams(max_new_tokens=16, stop=stop))

    thread_engine = await _engine(tiny_dir, adapters_root, "thread")
    try:
        _, text, _ = await collect(thread_engine, stop_request(()))
        stop = (text[len(text) // 2: len(text) // 2 + 3],)
        expected = await collect(thread_engine, stop_request(stop))
    finally:
        await thread_engine.stop(5)
    assert expected[2].finish_reason is FinishReason.STOP_SEQUENCE and expected[2].completion_tokens < 16
    before = proc_engine.stats()
    got = await collect(proc_engine, stop_request(stop))
    assert (got[0], got[1], got[2].finish_reason, got[2].completion_tokens) == \
        (expected[0], expected[1], expected[2].finish_reason, expected[2].completion_tokens)
    # Idle: the step computed for nobody has come back and the request's slot is free.
    await proc_engine.wait_until(lambda e: e.stats()["kv_cache_tokens"] == 0, timeout=30)
    after = proc_engine.stats()  # the extra token was not counted, nor the request finished twice
    assert after["generated_tokens_total"] - before["generated_tokens_total"] == len(got[0])
    assert after["requests_finished_total"] - before["requests_finished_total"] == 1

    # Steps run one per token received, so the request is mid-stream when cancelled on any
    # machine (one permit ahead: with overlap a step's token is applied once the next is sent).
    held = Held(monkeypatch, after_first_token=True)
    held.permit(1)
    stream = proc_engine.generate(GenerationRequest("c", prompt=PROMPTS[0],
                                                    sampling=SamplingParams(max_new_tokens=400, ignore_eos=True)))
    chunks = 0
    async for item in stream:
        if isinstance(item, TokenChunk):
            chunks += 1
            if chunks == 3:
                assert proc_engine.cancel("c")
            else:
                held.permit(1)
        else:
            final = item
    assert final.finish_reason is FinishReason.CANCELLED and final.completion_tokens == chunks < 400
    await proc_engine.wait_until(lambda e: e.running_count == 0 and e.stats()["kv_cache_tokens"] == 0, timeout=30)


def test_llm_process_start_method_forks_from_a_server_only_where_cuda_cannot_be_used(tiny_dir, adapters_root,
                                                                                     monkeypatch):
    """A forked CUDA context is unusable: with CUDA possible the child is spawned; on a CPU
    it is forked from the fork server, which imported torch and engines.llm once. (No GPU
    here: a CUDA build of torch is patched in for the `auto` case; no child is started.)"""
    from dataclasses import replace

    from engines.llm import process

    cpu = make_config(tiny_dir, adapters_root, "process")
    assert process._context(cpu).get_start_method() == "forkserver"
    assert process._context(replace(cpu, device="cuda")).get_start_method() == "spawn"
    auto = replace(cpu, device="auto")
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: False)
    assert process._context(auto).get_start_method() == "forkserver"
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: True)
    assert process._context(auto).get_start_method() == "spawn"


async def test_llm_process_children_fork_from_one_server(tiny_dir, adapters_root):
    """Two engines' children share one fork server: the imports are paid once per daemon."""
    engines = [await _engine(tiny_dir, adapters_root, "process") for _ in range(2)]
    try:
        parents = set()
        for eng in engines:
            with open(f"/proc/{eng.runner.process.pid}/stat") as f:
                parents.add(int(f.read().rsplit(")", 1)[1].split()[2]))  # field 4: ppid
        assert len(parents) == 1 and os.getpid() not in parents
    finally:
        for eng in engines:
            await eng.stop(5)


def test_the_fork_server_preloads_every_module_a_child_imports_to_build_its_model(tiny_dir, adapters_root):
    """A module that `build_core` imports and the fork server did not preload is imported
    again by every child, at each start and each respawn (lightning alone took 3.8 s). In a
    fresh interpreter: import the preload list, build the core, and see what was new (ours
    and lightning's; transformers imports each architecture's modules lazily, by model)."""
    import subprocess
    import sys

    script = (
        "import sys, pickle\n"
        "from engines.llm import process\n"
        "for name in process._PRELOAD: __import__(name)\n"
        "before = set(sys.modules)\n"
        "from engines.llm.core import build_core\n"
        "build_core(pickle.loads(sys.stdin.buffer.read()), lambda msg: None)\n"
        "heavy = ('engines', 'lightning', 'pytorch_lightning', 'lightning_fabric', 'llguidance')\n"
        "print(sorted(m for m in set(sys.modules) - before if m.split('.')[0] in heavy))\n")
    import pickle
    config = pickle.dumps(make_config(tiny_dir, adapters_root, "process"))
    out = subprocess.run([sys.executable, "-c", script], input=config, capture_output=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    assert out.stdout.decode().strip().splitlines()[-1] == "[]"


def test_llm_process_errors_rebuilt_with_their_class():
    from engines.llm.process import _decode_error, _encode_error

    e = _decode_error(*_encode_error(InvalidArgument("bad", field="path"))[1:])
    assert isinstance(e, InvalidArgument) and e.field == "path" and e.message == "bad"
    assert isinstance(_decode_error(*_encode_error(torch.OutOfMemoryError("oom"))[1:]), torch.OutOfMemoryError)
    other = _decode_error(*_encode_error(KeyError("k"))[1:])
    assert type(other) is RuntimeError and "KeyError" in str(other)


def test_overlapped_runner_hands_each_step_back_from_the_next_submit():
    """The `StepRunner` contract as the engine relies on it, over a fake pipe: the in-turn
    runner returns a step from `collect`; the overlapped one holds it and returns it from
    the next `submit` (after sending that step), or from an empty plan's once idle. Frees
    asked for while a step is in flight travel with the next step."""
    from engines.llm.process import OverlappedProcessRunner, ProcessRunner
    from engines.llm.scheduler import PrefillChunk, Sequence, StepPlan

    class Pipe:
        def __init__(self) -> None:
            self.sent: list[str] = []
            self.replies: list[tuple] = []

        def send(self, op, *args) -> None:
            self.sent.append(op)

        def receive(self):
            return self.replies.pop(0)

        def call(self, op, *args):
            self.sent.append(op)
            return 0

    a = Sequence(GenerationRequest("a", prompt="x"), [1, 2, 3], order=7)

    def tokens(result) -> list[int]:
        return [s.token for s in result.sampled]

    pipe = Pipe()
    in_turn = ProcessRunner(pipe)
    assert in_turn.submit(StepPlan(prefill=[PrefillChunk(a, 0, 3)])) is None
    pipe.replies.append(([(7, 11, None, True)], 3, 0.0))
    assert tokens(in_turn.collect()) == [11]

    pipe = Pipe()
    runner = OverlappedProcessRunner(pipe)
    assert runner.submit(StepPlan(prefill=[PrefillChunk(a, 0, 3)])) is None
    pipe.replies.append(([(7, 11, None, True)], 3, 0.0))
    assert runner.collect() is None  # held for the next submit
    held = runner.submit(StepPlan(decode=[a]))
    assert tokens(held) == [11] and pipe.sent == ["execute", "execute"]  # step 2 sent before step 1 is applied
    runner.free([a])  # step 2 in flight: the free waits for the next message
    assert pipe.sent == ["execute", "execute"]
    pipe.replies.append(([(7, 12, None, False)], 4, 0.0))
    assert runner.collect() is None
    held = runner.submit(StepPlan())  # idle: the held step comes back, the free goes at once
    assert tokens(held) == [12] and pipe.sent == ["execute", "execute", "free"]
    assert runner.submit(StepPlan()) is None
