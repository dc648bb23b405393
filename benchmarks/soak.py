"""Soak: many concurrent clients over every RPC for N seconds, then look for leaks.

    python benchmarks/soak.py --seconds 600 --clients 24 --json var/soak.json

Starts its own galacticd (a subprocess on loopback, a tiny Llama built here unless
--model-dir names one, and the embedded coordination model) and drives it with a mix of
good calls, cancels mid-stream, dropped connections, short deadlines and bad requests
(unparsable bytes, out-of-range fields, unknown models). Each action has the statuses it
may document; any other answer is `unexpected`. After the run it waits for the daemon to
go idle and reports what is left: threads, asyncio tasks, open file descriptors and
engine slots against a baseline taken before the load, and resident memory at 20 % of
the run against the end. One JSON object:

    requests, statuses{name: count}, unexpected, unexpected_examples, p50_ms, p99_ms,
    rss_mb_start, rss_mb_end, rss_growth_pct, threads_left, tasks_left, fds_left,
    slots_left, seconds, clients, loadavg_start, loadavg_end
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "clients" / "python"))

from google.protobuf import json_format  # noqa: E402

from galactic.v1 import (admin_pb2, admin_pb2_grpc, coordination_pb2, coordination_pb2_grpc,  # noqa: E402
                         generation_pb2, generation_pb2_grpc, inference_pb2, inference_pb2_grpc)
from galactic_client.tensors import to_tensor  # noqa: E402

C = grpc.StatusCode
EXAMPLE = ROOT / "training" / "data" / "example_request.json"
N_FEATURES = 21


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_tiny_model(out: Path) -> Path:
    """A 2-layer Llama with a byte-level BPE tokenizer (as the tests build it)."""
    import pydoc_data.topics

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(ROOT))
    from training.llm.tokenizer import train_tokenizer

    tok = train_tokenizer(list(pydoc_data.topics.topics.values())[:40], vocab_size=384)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


class Daemon:
    """galacticd as a subprocess; /proc gives its threads, fds and resident memory."""

    def __init__(self, model_dir: Path, work: Path) -> None:
        self.port, self.metrics_port = free_port(), free_port()
        cfg = work / "galactic.toml"
        cfg.write_text(f"""
[server]
listen = "127.0.0.1:{self.port}"
grace_period_s = 10.0
[openai]
enabled = false
[telemetry]
log_format = "json"
log_level = "warning"
metrics_listen = "127.0.0.1:{self.metrics_port}"
[llm]
name = "tiny"
path = "{model_dir}"
device = "cpu"
[llm.scheduler]
max_running = 16
max_waiting = 256
max_prompt_tokens = 256
max_new_tokens_limit = 64
[coordination]
[coordination.batching]
max_queue_delay_ms = 2.0
""")
        self.log = open(work / "daemon.log", "w")
        env = {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false"}
        self.proc = subprocess.Popen([sys.executable, "-m", "daemon.main", "serve", "--config", str(cfg)],
                                     cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 300) -> None:
        channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        from grpc_health.v1 import health_pb2, health_pb2_grpc
        stub = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:  # a start-up probe, bounded; Watch needs the port up first
                if self.proc.poll() is not None:
                    raise RuntimeError(f"galacticd exited with {self.proc.returncode}")
                try:
                    if stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.5)
            raise TimeoutError("galacticd did not become SERVING")
        finally:
            channel.close()

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def threads(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/task"))

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def metric(self, name: str, labels: str = "") -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and (not labels or labels in line):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def slots(self) -> float:
        return self.metric("galactic_engine_running_requests") + self.metric("galactic_engine_waiting_requests")

    def stop(self) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(60)
        finally:
            self.log.close()


class Load:
    """The client side: each action returns the status it got; each has its documented set."""

    def __init__(self, port: int, deadline: float, seed: int) -> None:
        self.target = f"127.0.0.1:{port}"
        self.deadline = deadline
        self.rng = random.Random(seed)
        self.statuses: collections.Counter = collections.Counter()
        self.unexpected: list[str] = []
        self.latencies: list[float] = []
        self.coord = json_format.Parse(EXAMPLE.read_text(), coordination_pb2.CoordinateRequest())

    def _record(self, action: str, code: C, allowed: set[C], started: float) -> None:
        self.statuses[code.name] += 1
        if code not in allowed:
            self.unexpected.append(f"{action}: {code.name}")
        elif code is C.OK:
            self.latencies.append((time.perf_counter() - started) * 1e3)

    @staticmethod
    def gen_request(n: int = 8, **sampling) -> generation_pb2.GenerateRequest:
        return generation_pb2.GenerateRequest(
            prompt=random.choice(["def add(a, b):", "The quick brown fox", "import os\n"]),
            sampling=generation_pb2.SamplingParams(**sampling),
            stopping=generation_pb2.StoppingParams(max_new_tokens=n, ignore_eos=True))

    def infer_request(self, rid: str = "", dtype=np.float32) -> inference_pb2.InferRequest:
        rows = self.rng.randint(1, 8)
        return inference_pb2.InferRequest(model="coordination", request_id=rid, inputs=[
            to_tensor("features", np.zeros((rows, N_FEATURES), dtype)), to_tensor("site", np.zeros(rows, np.int64))])

    async def run_client(self, i: int) -> None:
        channel = grpc.aio.insecure_channel(self.target)
        try:
            while time.monotonic() < self.deadline:
                action = self.rng.choice(ACTIONS)
                started = time.perf_counter()
                if action is Load.disconnect:  # the whole connection goes away mid-stream
                    await channel.close(grace=None)
                    channel = grpc.aio.insecure_channel(self.target)
                    await self.disconnect(grpc.aio.insecure_channel(self.target), started)
                    continue
                await action(self, channel, started)
        finally:
            await channel.close()

    async def _call(self, name: str, allowed: set[C], started: float, coro) -> None:
        try:
            await coro
            code = C.OK
        except grpc.aio.AioRpcError as err:
            code = err.code()
        except asyncio.CancelledError:
            raise
        self._record(name, code, allowed, started)

    # ---- actions -------------------------------------------------------------------
    async def generate(self, ch, started) -> None:
        async def go():
            async for _ in generation_pb2_grpc.GenerationStub(ch).Generate(self.gen_request(), timeout=60):
                pass
        await self._call("generate", {C.OK, C.RESOURCE_EXHAUSTED}, started, go())

    async def generate_cancel(self, ch, started) -> None:
        call = generation_pb2_grpc.GenerationStub(ch).Generate(self.gen_request(48), timeout=60)
        try:
            await call.read()
            call.cancel()
            code = C.CANCELLED
        except grpc.aio.AioRpcError as err:
            code = err.code()
        self._record("generate_cancel", code, {C.CANCELLED, C.RESOURCE_EXHAUSTED}, started)

    async def generate_short_deadline(self, ch, started) -> None:
        async def go():
            async for _ in generation_pb2_grpc.GenerationStub(ch).Generate(self.gen_request(48), timeout=0.05):
                pass
        await self._call("generate_deadline", {C.OK, C.DEADLINE_EXCEEDED, C.RESOURCE_EXHAUSTED}, started, go())

    async def generate_bad(self, ch, started) -> None:
        async def go():
            async for _ in generation_pb2_grpc.GenerationStub(ch).Generate(self.gen_request(top_p=2.0), timeout=30):
                pass
        await self._call("generate_bad", {C.INVALID_ARGUMENT}, started, go())

    async def session(self, ch, started) -> None:
        frames = [generation_pb2.SessionRequest(submit=generation_pb2.Submit(request_id=f"r{k}", request=self.gen_request(6)))
                  for k in range(3)]
        frames.insert(2, generation_pb2.SessionRequest(cancel=generation_pb2.Cancel(request_id="r0")))
        bad = 0

        async def go():
            nonlocal bad
            async for frame in generation_pb2_grpc.GenerationStub(ch).Session(iter(frames), timeout=60):
                if frame.WhichOneof("frame") == "error" and frame.error.code not in (C.NOT_FOUND.value[0],
                                                                                    C.RESOURCE_EXHAUSTED.value[0]):
                    bad += 1
        await self._call("session", {C.OK}, started, go())
        if bad:
            self.unexpected.append(f"session: {bad} unexpected error frames")

    async def unparsable(self, ch, started) -> None:
        method = self.rng.choice(["/galactic.v1.Admin/GetModel", "/galactic.v1.Inference/Infer",
                                  "/galactic.v1.Coordination/Coordinate"])
        await self._call("unparsable", {C.INVALID_ARGUMENT}, started,
                         ch.unary_unary(method)(b"\x0a\x05ab", timeout=30))

    async def infer(self, ch, started) -> None:
        await self._call("infer", {C.OK, C.RESOURCE_EXHAUSTED}, started,
                         inference_pb2_grpc.InferenceStub(ch).Infer(self.infer_request(), timeout=30))

    async def infer_bad(self, ch, started) -> None:
        await self._call("infer_bad", {C.INVALID_ARGUMENT}, started,
                         inference_pb2_grpc.InferenceStub(ch).Infer(self.infer_request(dtype=np.float64), timeout=30))

    async def infer_stream(self, ch, started) -> None:
        reqs = [self.infer_request(f"i{k}") for k in range(3)]

        async def go():
            async for _ in inference_pb2_grpc.InferenceStub(ch).InferStream(iter(reqs), timeout=30):
                pass
        await self._call("infer_stream", {C.OK}, started, go())

    async def coordinate(self, ch, started) -> None:
        await self._call("coordinate", {C.OK, C.RESOURCE_EXHAUSTED}, started,
                         coordination_pb2_grpc.CoordinationStub(ch).Coordinate(self.coord, timeout=30))

    async def coordinate_stream(self, ch, started) -> None:
        frames = [coordination_pb2.CoordinateStreamRequest(request=self.coord) for _ in range(2)]

        async def go():
            async for _ in coordination_pb2_grpc.CoordinationStub(ch).CoordinateStream(iter(frames), timeout=30):
                pass
        await self._call("coordinate_stream", {C.OK}, started, go())

    async def admin(self, ch, started) -> None:
        stub = admin_pb2_grpc.AdminStub(ch)
        which = self.rng.randrange(3)
        if which == 0:
            await self._call("list_models", {C.OK}, started, stub.ListModels(admin_pb2.ListModelsRequest(), timeout=30))
        elif which == 1:
            await self._call("get_stats", {C.OK}, started, stub.GetStats(admin_pb2.GetStatsRequest(), timeout=30))
        else:
            await self._call("get_model_missing", {C.NOT_FOUND}, started,
                             stub.GetModel(admin_pb2.GetModelRequest(name="nope"), timeout=30))

    async def disconnect(self, ch, started) -> None:
        call = generation_pb2_grpc.GenerationStub(ch).Generate(self.gen_request(48), timeout=60)
        try:
            await call.read()
        except grpc.aio.AioRpcError as err:
            self._record("disconnect", err.code(), {C.RESOURCE_EXHAUSTED}, started)
        await ch.close(grace=None)  # the connection drops with the stream live
        self.statuses["DISCONNECTED"] += 1


ACTIONS = [Load.generate, Load.generate, Load.generate_cancel, Load.generate_short_deadline, Load.generate_bad,
           Load.session, Load.unparsable, Load.infer, Load.infer_bad, Load.infer_stream, Load.coordinate,
           Load.coordinate_stream, Load.admin, Load.disconnect]


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


async def soak(seconds: float, clients: int, daemon: Daemon, seed: int) -> dict:
    await asyncio.sleep(0)
    # Idle baselines: fds and asyncio tasks before any load; threads and memory at 20 % of
    # the run, once thread pools and caches have grown to the load (growth after that is a leak).
    base = {"fds": daemon.fds(), "tasks": daemon.metric("galactic_asyncio_tasks")}
    start = time.monotonic()
    load = Load(daemon.port, start + seconds, seed)
    rss_start: list[float] = []

    async def sample_rss() -> None:
        await asyncio.sleep(seconds * 0.2)
        rss_start.append(daemon.rss_mb())
        base["threads"] = daemon.threads()

    sampler = asyncio.create_task(sample_rss())
    load_avg_start = loadavg()
    await asyncio.gather(*(load.run_client(i) for i in range(clients)))
    await sampler
    # Idle: every call answered (our clients have all returned), the engines' slots free.
    # Sockets the last clients closed may take a moment to go on the daemon's side too.
    idle_deadline = time.monotonic() + 60
    while (daemon.slots() or daemon.metric("galactic_rpc_in_flight") > 0 or daemon.fds() > base["fds"]) \
            and time.monotonic() < idle_deadline:
        await asyncio.sleep(0.5)  # a bounded wait for the daemon to settle, then measure
    rss_end = daemon.rss_mb()
    lat = sorted(load.latencies)

    def pct(p: float) -> float:
        return round(lat[min(len(lat) - 1, int(p * len(lat)))], 2) if lat else 0.0

    requests = sum(v for k, v in load.statuses.items() if k != "DISCONNECTED")
    return {
        "seconds": seconds, "clients": clients, "requests": requests,
        "statuses": dict(sorted(load.statuses.items())),
        "unexpected": len(load.unexpected), "unexpected_examples": load.unexpected[:20],
        "p50_ms": pct(0.5), "p99_ms": pct(0.99),
        "rss_mb_start": round(rss_start[0], 1), "rss_mb_end": round(rss_end, 1),
        "rss_growth_pct": round(100 * (rss_end - rss_start[0]) / rss_start[0], 2),
        "threads_left": daemon.threads() - base["threads"],
        "tasks_left": int(daemon.metric("galactic_asyncio_tasks") - base["tasks"]),
        "fds_left": daemon.fds() - base["fds"],
        "slots_left": int(daemon.slots()),
        "loadavg_start": load_avg_start, "loadavg_end": loadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--clients", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model-dir", type=Path, help="an HF model dir (default: a tiny Llama built here)")
    p.add_argument("--json", type=Path, help="write the result here (and print it)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="galactic-soak-") as tmp:
        work = Path(tmp)
        model_dir = args.model_dir or build_tiny_model(work / "tiny")
        daemon = Daemon(model_dir, work)
        try:
            daemon.wait_ready()
            result = asyncio.run(soak(args.seconds, args.clients, daemon, args.seed))
        finally:
            result_rc = daemon.stop()
        log_lines = (work / "daemon.log").read_text().splitlines()
        plain = [line for line in log_lines if line.strip() and not line.startswith("{")]
        result.update(exit_code=result_rc, log_lines=len(log_lines), non_json_log_lines=len(plain),
                      non_json_examples=plain[:5])
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0 if result["unexpected"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
