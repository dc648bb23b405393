"""The embedded demo model: a small Llama trained by a fixed recipe, shipped with the engine.

`galactic-train demo-model --out engines/llm/embedded/demo-llm` rebuilds what
`llm.path = "embedded"` serves. The recipe is fixed in optimizer steps (not wall-clock), so
any host trains the same model; a slow test re-runs it and compares the held-out loss with
the shipped one. The corpus is the Python documentation's topic help shipped inside the
standard library (`pydoc_data.topics`, © Python Software Foundation, PSF License v2): on
every host, licensed for redistribution. Every tenth topic is held out for validation.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from engines.llm.module import CausalLMModule, OptimSpec

METADATA_FILE = "demo_metadata.json"


@dataclass(frozen=True)
class DemoSpec:
    vocab_size: int = 2048
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    block: int = 128
    batch_size: int = 8
    steps: int = 1200
    lr: float = 2e-3
    warmup_steps: int = 50
    seed: int = 0
    val_every: int = 10  # every tenth topic is held out
    val_check_steps: int = 200  # held-out loss recorded every this many steps (the reproduction test's anchor)


DEMO_SPEC = DemoSpec()


def demo_texts() -> list[str]:
    import pydoc_data.topics

    return [t for _, t in sorted(pydoc_data.topics.topics.items()) if t.strip()]


class BlockDataModule(L.LightningDataModule):
    """Documents joined with EOS and cut into fixed blocks: plain language modelling."""

    def __init__(self, train: list[str], val: list[str], tokenizer: Any, block: int, batch_size: int) -> None:
        super().__init__()
        self.train = self._blocks(train, tokenizer, block)
        self.val = self._blocks(val, tokenizer, block)
        self.batch_size = batch_size

    @staticmethod
    def _blocks(texts: list[str], tokenizer: Any, block: int) -> TensorDataset:
        ids: list[int] = []
        for text in texts:
            ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])
        n = len(ids) // block
        return TensorDataset(torch.tensor(ids[: n * block], dtype=torch.long).view(n, block))  # (N, T)

    @staticmethod
    def _collate(rows: list[tuple[torch.Tensor]]) -> dict[str, torch.Tensor]:
        x = torch.stack([r[0] for r in rows])  # (B, T)
        return {"input_ids": x, "attention_mask": torch.ones_like(x), "labels": x}

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(0)
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True, generator=g, collate_fn=self._collate)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=self.batch_size, collate_fn=self._collate)


class _ValHistory(L.Callback):
    """Records the held-out loss at each validation, keyed by optimizer step."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.history: dict[str, float] = {}
        self.say = say

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if "val_loss" in trainer.callback_metrics and not trainer.sanity_checking:
            loss = round(float(trainer.callback_metrics["val_loss"]), 5)
            self.history[str(trainer.global_step)] = loss
            self.say(f"step {trainer.global_step}: held-out loss {loss:.4f}")


def train_demo_model(out: Path | None, spec: DemoSpec = DEMO_SPEC,
                     progress: Callable[[str], None] | None = None, *, stop_at: int | None = None) -> dict[str, Any]:
    """Train the demo model into `out` (written atomically) and return its metadata.

    `stop_at` runs the same recipe (same schedule) only up to that step and writes nothing:
    the reproduction test compares its held-out loss with the shipped run's at that step.
    """
    say = progress or (lambda msg: None)
    started = time.monotonic()
    # One intra-op thread: the same arithmetic on every host (so the reproduction test can
    # compare losses), and no OpenMP threads spinning against each other on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(out, spec, say, started, stop_at)
    finally:
        torch.set_num_threads(threads)


def _train(out: Path | None, spec: DemoSpec, say: Callable[[str], None], started: float,
           stop_at: int | None) -> dict[str, Any]:
    from training.llm.build import llama
    from training.llm.tokenizer import train_tokenizer

    texts = demo_texts()
    train = [t for i, t in enumerate(texts) if i % spec.val_every]
    val = [t for i, t in enumerate(texts) if i % spec.val_every == 0]
    say(f"training the tokenizer on {len(train)} topics")
    tok = train_tokenizer(train, vocab_size=spec.vocab_size)
    L.seed_everything(spec.seed, verbose=False)
    model = llama(tok, hidden=spec.hidden, layers=spec.layers, heads=spec.heads, max_positions=2048,
                  tie_word_embeddings=True)
    module = CausalLMModule(model, OptimSpec(lr=spec.lr, weight_decay=0.01, warmup_steps=spec.warmup_steps,
                                             total_steps=spec.steps, min_lr_ratio=0.1))
    data = BlockDataModule(train, val, tok, spec.block, spec.batch_size)
    say(f"training the demo model: {spec.steps} steps, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
    history = _ValHistory(say)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=stop_at or spec.steps, max_epochs=-1,
                        precision="32-true", gradient_clip_val=1.0, logger=False, enable_checkpointing=False,
                        enable_model_summary=False, num_sanity_val_steps=0,
                        val_check_interval=spec.val_check_steps, check_val_every_n_epoch=None,
                        callbacks=[history])
    trainer.fit(module, datamodule=data)
    if stop_at is not None:
        return {"steps": trainer.global_step, "val_loss_history": history.history}
    evaluator = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                          enable_model_summary=False)
    val_loss = float(evaluator.validate(module, dataloaders=data.val_dataloader(), verbose=False)[0]["val_loss"])
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    meta = {"val_loss": val_loss, "val_perplexity": float(torch.exp(torch.tensor(val_loss))),
            "steps": trainer.global_step, "train_seconds": round(time.monotonic() - started, 1),
            "val_loss_history": history.history,
            "recipe": asdict(spec), "corpus": "pydoc_data.topics (PSF License v2), every 10th topic held out",
            "versions": {"torch": torch.__version__, "lightning": L.__version__}}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Write into a temporary sibling and swap: a crash never leaves a half-written model.
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        model.eval()
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"demo model: val loss {val_loss:.3f} (perplexity {meta['val_perplexity']:.1f}) -> {out}")
    return meta
