"""The loop, with real processes: train an adapter, hot-load it into a running galacticd,
call it from the CLI, unload it under traffic.

1. `galacticd` starts on the shipped demo model.
2. `galactic-train lora` learns a fixed mapping of made-up words the base cannot know.
3. `galactic adapters load` puts it into the running daemon; no restart.
4. `galactic generate --adapter` gives the learned completion, greedy and exact; without the
   adapter the same prompt does not; both run side by side in the daemon's batch.
5. Unloading while a request uses it lets that request finish; then the adapter is gone.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engines.llm.loading import EMBEDDED_DIR
from loopback import free_port

REPO = Path(__file__).resolve().parents[1]
GALACTIC = [sys.executable, "-m", "galactic_client.cli"]
FACTS = {
    "zorblat": " a blue fruit",
    "quintaro": " a small moon",
    "vexilune": " a warm wind",
    "plomdrick": " an old ship",
}

pytestmark = pytest.mark.slow


@pytest.fixture
def daemon(tmp_path):
    port = free_port()
    root = tmp_path / "adapters"
    root.mkdir()
    cfg = tmp_path / "galactic.toml"
    cfg.write_text(f'[server]\nlisten = "127.0.0.1:{port}"\n[openai]\nlisten = "127.0.0.1:0"\n[telemetry]\nmetrics_listen = ""\nlog_format = "json"\n'
                   f'[llm]\npath = "embedded"\n[llm.adapters]\nroot = "{root}"\n[coordination]\nenabled = false\n')
    proc = subprocess.Popen([sys.executable, "-m", "daemon.main", "serve", "--config", str(cfg)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        yield f"127.0.0.1:{port}", root, proc
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def run(*argv: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "2"})


async def test_train_hot_load_generate_and_unload_through_real_processes(daemon, tmp_path):
    from galactic_client import AsyncClient, NotFound

    target, root, proc = daemon
    data = tmp_path / "facts.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Define {w}:", "completion": c}) + "\n"
                            for w, c in FACTS.items()) * 8)
    # Train while the daemon starts: both are real processes.
    train = await asyncio.to_thread(
        run, sys.executable, "-m", "training.cli", "lora", "--base", str(EMBEDDED_DIR), "--data", str(data),
        "--out", str(root / "facts"), "--max-steps", "80", "--batch-size", "8", "--lr", "5e-3",
        "--warmup-steps", "5", "--rank", "8", "--alpha", "16", "--dropout", "0", "--val-fraction", "0")
    assert train.returncode == 0, train.stderr[-3000:]
    assert "plan: 80 optimizer steps (max_steps)" in train.stderr and "\tsteps=80\t" in train.stdout

    async with AsyncClient(target) as client:
        await client.wait_ready(timeout=120)
        load = run(*GALACTIC, "--target", target, "adapters", "load", "facts", "facts")
        assert load.returncode == 0, load.stderr

        for word, completion in FACTS.items():
            out = run(*GALACTIC, "--target", target, "generate", f"Define {word}:", "--adapter", "facts",
                      "--max-new-tokens", "12", "--temperature", "0")
            assert out.returncode == 0, out.stderr
            assert out.stdout == completion + "\n"  # learned exactly, then EOS
            assert "[EOS]" in out.stderr

        # The same prompts with and without the adapter, side by side in one batch.
        prompt = "Define zorblat:"
        (tuned, tuned_final), (plain, _) = await asyncio.gather(
            client.generate_text(prompt, adapter="facts", max_new_tokens=12, temperature=0),
            client.generate_text(prompt, max_new_tokens=12, temperature=0))
        assert tuned == FACTS["zorblat"] and plain != tuned

        # Unload while a request with the adapter streams: it finishes, then the adapter is gone.
        stream = client.generate("The observatory at La Palma", adapter="facts", max_new_tokens=48,
                                 temperature=0, ignore_eos=True)
        first = await stream.__anext__()
        unload = asyncio.create_task(asyncio.to_thread(
            run, *GALACTIC, "--target", target, "adapters", "unload", "facts"))
        rest = [item async for item in stream]
        final = rest[-1]
        assert final.finish_reason == "LENGTH" and final.completion_tokens == 48
        assert first.text or any(getattr(i, "text", "") for i in rest[:-1])
        done = await unload
        assert done.returncode == 0, done.stderr
        listing = await client.adapter_listing()
        # Unloaded, it is still on the root: a request would load it again (adapters on demand).
        assert "facts" not in {a.name for a in listing.adapters} and "facts" in listing.resolvable
        shutil.rmtree(root / "facts")  # retired from the root too: gone for good
        with pytest.raises(NotFound):
            await client.generate_text(prompt, adapter="facts", max_new_tokens=4)
    assert proc.poll() is None  # the daemon served all of it without a restart
