"""`CausalLMModule`: a thin LightningModule around a Hugging Face causal LM.

One class holds the network, its training step and its optimiser. It trains the embedded
demo model from scratch and fine-tunes LoRA adapters (PEFT) on any local base model;
`export()` writes exactly what the LLM engine loads: a HF model dir, or a PEFT adapter dir
(adapter_config.json + adapter_model.safetensors).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch


@dataclass(frozen=True)
class LoRASpec:
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    dropout: float = 0.0


class CausalLMModule(L.LightningModule):
    def __init__(self, model: Any, lr: float = 3e-4, weight_decay: float = 0.01, lora: LoRASpec | None = None,
                 warmup_steps: int = 20) -> None:
        super().__init__()
        if lora is not None:
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(
                r=lora.rank, lora_alpha=lora.alpha, target_modules=list(lora.targets), lora_dropout=lora.dropout,
                task_type="CAUSAL_LM"))
        self.model = model
        self.model.train()  # from_pretrained returns eval mode
        self.lr, self.weight_decay, self.warmup_steps = lr, weight_decay, warmup_steps
        self.is_lora = lora is not None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits  # (B, T, V)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        # labels = input_ids; HF shifts them inside and ignores -100 (padding).
        return self.model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                          labels=batch["labels"]).loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.log("train_loss", loss, prog_bar=True, on_step=True)
        return loss

    def configure_optimizers(self) -> Any:
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / self.warmup_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def export(self, out: Path, tokenizer: Any | None = None) -> Path:
        """Write the engine-loadable artefact (safetensors) to `out` and return it."""
        out.mkdir(parents=True, exist_ok=True)
        self.model.eval()
        self.model.save_pretrained(out, safe_serialization=True)
        if tokenizer is not None and not self.is_lora:
            tokenizer.save_pretrained(out)
        return out
