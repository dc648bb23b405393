"""The embedded demo model: a small Llama trained locally, once, then cached.

`LLMConfig.path = "embedded"` serves it, so galacticd works out of the box with no
download. The training text is the Python documentation's topic help shipped inside the
standard library (`pydoc_data.topics`, © Python Software Foundation, PSF License v2),
so it is present on every host and licensed for redistribution. Training takes about two
minutes on two CPU cores; the model is only good enough to stream plausible Python-doc
English, which is all a demo and a smoke test need.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch


@dataclass(frozen=True)
class DemoSpec:
    vocab_size: int = 2048
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    block: int = 128
    batch_size: int = 16
    max_steps: int = 1200
    max_seconds: float = 120.0  # wall-clock cap: the daemon waits on this at first start
    lr: float = 2e-3
    version: str = "v1"


DEMO_SPEC = DemoSpec()


def demo_texts() -> list[str]:
    import pydoc_data.topics

    return [t for t in pydoc_data.topics.topics.values() if t.strip()]


def ensure_demo_model(cache_dir: Path, progress: Callable[[str], None] | None = None, *,
                      spec: DemoSpec = DEMO_SPEC) -> Path:
    """Return the demo model dir under `cache_dir`, training it first if it is not cached."""
    say = progress or (lambda msg: None)
    out = Path(cache_dir).expanduser() / f"demo-llm-{spec.version}-{spec.hidden}x{spec.layers}"
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    # Train into a temporary sibling and rename: a crash never leaves a half-written model.
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        train_demo_model(tmp, spec, say)
        try:
            os.replace(tmp, out)
            say(f"demo model saved to {out}")
        except OSError:  # another process finished first and its dir is in place
            if not (out / "config.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def train_demo_model(out: Path, spec: DemoSpec, progress: Callable[[str], None]) -> Path:
    from tqdm import tqdm
    from transformers import LlamaConfig, LlamaForCausalLM

    from training.llm.data import TextDataModule
    from training.llm.module import CausalLMModule
    from training.llm.tokenizer import train_tokenizer

    texts = demo_texts()
    progress("training the demo tokenizer")
    tok = train_tokenizer(texts, vocab_size=spec.vocab_size)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=spec.hidden, intermediate_size=spec.hidden * 4,
        num_hidden_layers=spec.layers, num_attention_heads=spec.heads, num_key_value_heads=spec.heads,
        max_position_embeddings=2048, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, tie_word_embeddings=True,
    )
    module = CausalLMModule(LlamaForCausalLM(config), lr=spec.lr, warmup_steps=50)
    data = TextDataModule(texts, tok, block=spec.block, batch_size=spec.batch_size)
    data.setup()
    optim = module.configure_optimizers()
    opt, sched = optim["optimizer"], optim["lr_scheduler"]["scheduler"]
    # A plain loop over the LightningModule's own step (no Trainer): the daemon calls this
    # while systemd waits, and we want a bounded wall-clock and a progress line, not logs.
    start, step, loss = time.monotonic(), 0, torch.tensor(float("nan"))
    bar = tqdm(total=spec.max_steps, desc="demo model", unit="step", leave=False)
    progress(f"training the demo model ({spec.max_steps} steps max, {spec.max_seconds:.0f} s max)")
    while step < spec.max_steps and time.monotonic() - start < spec.max_seconds:
        for batch in data.train_dataloader():
            loss = module.loss(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.2f}")
            if step % 25 == 0:  # a few seconds apart: the daemon's stop check rides on it
                progress(f"demo model step {step}, loss {loss.item():.2f}")
            if step >= spec.max_steps or time.monotonic() - start >= spec.max_seconds:
                break
    bar.close()
    module.model.generation_config.eos_token_id = tok.eos_token_id
    module.model.generation_config.pad_token_id = tok.pad_token_id
    module.export(out, tok)
    progress(f"demo model trained ({step} steps, loss {loss.item():.2f})")
    return out
