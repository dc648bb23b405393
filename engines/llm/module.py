"""`CausalLMModule`: the one definition of a served and trained causal LM.

A thin `LightningModule` around a Hugging Face causal LM (litgpt style: the network, its
steps and its optimiser in one class). The LLM engine serves an instance of it (its
`forward` is the engine's model call, so serving pays one Python call and nothing else);
`galactic-train` fine-tunes the same class with Lightning's `Trainer`. It lives in
`engines/` because imports point one way: training uses engines, never the reverse.

Batches for training are dicts of `input_ids` (B, T), `attention_mask` (B, T) and
`labels` (B, T) with -100 where no loss is taken (prompt tokens, padding): the loss is the
mean over completion tokens only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch


@dataclass(frozen=True)
class OptimSpec:
    """AdamW with linear warm-up then cosine decay to `min_lr_ratio` of the peak."""

    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 20
    total_steps: int = 1000  # the cosine's length; the trainer's max_steps
    min_lr_ratio: float = 0.1


def lr_lambda(spec: OptimSpec):
    """Multiplier of the peak learning rate at optimizer step `step` (0-based)."""

    def f(step: int) -> float:
        if step < spec.warmup_steps:
            return (step + 1) / spec.warmup_steps
        span = max(1, spec.total_steps - spec.warmup_steps)
        progress = min(1.0, (step - spec.warmup_steps) / span)
        return spec.min_lr_ratio + (1 - spec.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


class CausalLMModule(L.LightningModule):
    """`model` is a Hugging Face causal LM, or a PEFT model wrapping one (LoRA training).

    The constructor leaves the model's train/eval mode alone: the engine serves it in eval
    mode as loaded, and Lightning's `Trainer` switches modes itself around fit/validate.
    """

    def __init__(self, model: Any, optim: OptimSpec | None = None) -> None:
        super().__init__()
        self.model = model
        self.optim = optim or OptimSpec()
        # Checkpoints hold only the trainable tensors (the LoRA weights when fine-tuning): a
        # frozen base (a 4-bit one included) is reloaded from its own files, not copied into
        # every checkpoint. Loading such a partial state dict must then be non-strict.
        self.strict_loading = False

    # ---- serving and inference -------------------------------------------------------

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The model's own forward (HF outputs: `.logits` (B, T, V), `.past_key_values`)."""
        return self.model(*args, **kwargs)

    # ---- training --------------------------------------------------------------------

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean cross-entropy over positions whose label is not -100 (HF shifts inside)."""
        return self.model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                          labels=batch["labels"]).loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=False,
                 batch_size=batch["input_ids"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        # Weight each batch by its completion tokens so the epoch mean is per token, as
        # perplexity needs; sync_dist averages across DDP ranks.
        tokens = int((batch["labels"][:, 1:] != -100).sum())
        loss = self.loss(batch)
        self.log("val_loss", loss, prog_bar=True, on_step=False, on_epoch=True, sync_dist=True,
                 batch_size=max(1, tokens))
        return loss

    def on_validation_epoch_end(self) -> None:
        val = self.trainer.callback_metrics.get("val_loss")
        if val is not None:
            self.log("val_ppl", torch.exp(val.detach().float()), prog_bar=True, sync_dist=False)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trainable = {f"model.{n}" for n, p in self.model.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}

    def configure_optimizers(self) -> Any:
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.optim.lr, weight_decay=self.optim.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(self.optim))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
