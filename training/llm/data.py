"""`TextDataModule`: local text -> fixed-length token blocks for causal-LM training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset


def read_texts(path: Path) -> list[str]:
    """A .jsonl file ({"text"} or {"prompt","completion"} per line) or plain text (paragraphs)."""
    raw = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        texts = []
        for line in raw.splitlines():
            if line.strip():
                row = json.loads(line)
                texts.append(row["text"] if "text" in row else row["prompt"] + row["completion"])
        return texts
    return [p for p in raw.split("\n\n") if p.strip()]


class TextDataModule(L.LightningDataModule):
    def __init__(self, texts: Iterable[str], tokenizer: Any, block: int = 128, batch_size: int = 16) -> None:
        super().__init__()
        self.texts, self.tokenizer, self.block, self.batch_size = list(texts), tokenizer, block, batch_size
        self.dataset: TensorDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is not None:
            return
        eos = self.tokenizer.eos_token_id
        ids: list[int] = []
        for text in self.texts:  # documents joined with EOS so the model learns to stop
            ids.extend(self.tokenizer(text)["input_ids"] + [eos])
        n = max(1, len(ids) // self.block)
        ids = (ids * (1 + (n * self.block) // max(1, len(ids))))[: n * self.block]
        blocks = torch.tensor(ids, dtype=torch.long).view(n, self.block)  # (N, T)
        self.dataset = TensorDataset(blocks)

    def train_dataloader(self) -> DataLoader:
        def collate(rows: list[tuple[torch.Tensor]]) -> dict[str, torch.Tensor]:
            x = torch.stack([r[0] for r in rows])
            return {"input_ids": x, "attention_mask": torch.ones_like(x), "labels": x}

        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=True, collate_fn=collate, drop_last=False)
