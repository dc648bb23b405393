"""Fine-tuning data: JSON lines -> token ids with a loss mask -> Lightning batches.

Three line formats, one per line, mixed freely:

- `{"prompt": str, "completion": str}`: the loss counts the completion (and the EOS after it);
  prompt and completion are tokenized apart, exactly as the daemon tokenizes a prompt and
  then generates, so what is learned is what greedy decoding reproduces.
- `{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}`: rendered
  through the tokenizer's chat template; the loss counts assistant turns only.
- `{"text": str}`: plain language modelling, every token counts.

A bad line is a `DataError` naming the file, the line number and what is wrong; nothing is
skipped silently. Batches are right-padded (Llama derives positions from the cache, so left
padding would shift them) with labels -100 on prompt tokens and padding.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

IGNORE = -100
ROLES = ("system", "user", "assistant")


class DataError(ValueError):
    """The data file is malformed; the message names the line."""


@dataclass(frozen=True)
class Example:
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]  # IGNORE where no loss is taken
    line: int


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def read_records(path: Path, max_errors: int = 20) -> list[tuple[int, dict[str, Any]]]:
    """(line number, record) for every non-blank line; raises DataError listing bad lines."""
    rows: list[tuple[int, dict[str, Any]]] = []
    errors: list[str] = []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            _check_record(record)
        except (json.JSONDecodeError, ValueError) as exc:
            errors.append(f"{path}:{number}: {exc}")
            if len(errors) >= max_errors:
                break
            continue
        rows.append((number, record))
    if errors:
        raise DataError("bad training data:\n  " + "\n  ".join(errors))
    if not rows:
        raise DataError(f"{path}: no examples (every line is blank)")
    return rows


def _check_record(record: Any) -> None:
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    kinds = [k for k in ("prompt", "messages", "text") if k in record]
    if len(kinds) != 1:
        raise ValueError('expected exactly one of {"prompt", "completion"}, {"messages"} or {"text"}, '
                         f"got keys {sorted(record)}")
    if kinds[0] == "prompt":
        for key in ("prompt", "completion"):
            if not isinstance(record.get(key), str):
                raise ValueError(f'"{key}" must be a string')
        if not record["completion"]:
            raise ValueError('"completion" is empty: nothing to learn')
    elif kinds[0] == "text":
        if not isinstance(record["text"], str) or not record["text"]:
            raise ValueError('"text" must be a non-empty string')
    else:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise ValueError('"messages" must be a non-empty list')
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise ValueError(f"messages[{i}] must be {{\"role\": one of {list(ROLES)}, \"content\": string}}")
        if not any(m["role"] == "assistant" for m in messages):
            raise ValueError("no assistant message: nothing to learn")


def tokenize(record: dict[str, Any], tokenizer: Any, line: int, max_length: int) -> tuple[Example, bool]:
    """(example, truncated). Segments are tokenized apart and joined, each with or without loss."""
    eos = tokenizer.eos_token_id
    segments: list[tuple[list[int], bool]]  # (ids, counts toward the loss)
    if "prompt" in record:
        segments = [(_ids(tokenizer, record["prompt"]), False), (_ids(tokenizer, record["completion"]) + [eos], True)]
    elif "text" in record:
        segments = [(_ids(tokenizer, record["text"]) + [eos], True)]
    else:
        segments = _chat_segments(record["messages"], tokenizer, line)
    ids: list[int] = []
    labels: list[int] = []
    for seg, learn in segments:
        ids += seg
        labels += seg if learn else [IGNORE] * len(seg)
    truncated = len(ids) > max_length
    ids, labels = ids[:max_length], labels[:max_length]
    if all(t == IGNORE for t in labels[1:]):
        raise DataError(f"line {line}: no completion token within max_length={max_length} "
                        "(the prompt alone fills it); shorten the prompt or raise max_length")
    return Example(tuple(ids), tuple(labels), line), truncated


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _chat_segments(messages: list[dict[str, str]], tokenizer: Any, line: int) -> list[tuple[list[int], bool]]:
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(f"line {line}: a messages example needs a chat template, and the base tokenizer has none")
    segments: list[tuple[list[int], bool]] = []
    done = ""  # the rendered text so far
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prefix = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        upto = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not prefix.startswith(done) or not upto.startswith(prefix):
            raise DataError(f"line {line}: the chat template does not render turns as a growing prefix; "
                            "assistant tokens cannot be located")
        segments.append((_ids(tokenizer, prefix[len(done):]), False))
        segments.append((_ids(tokenizer, upto[len(prefix):]) + [tokenizer.eos_token_id], True))
        done = upto
    return segments


def split(examples: list[Example], val_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """A seeded shuffle, then the last `val_fraction` (at least one when there are two or more)."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = 0 if val_fraction == 0 or len(examples) < 2 else max(1, round(len(examples) * val_fraction))
    train = [examples[i] for i in order[: len(order) - n_val]]
    val = [examples[i] for i in order[len(order) - n_val:]]
    return train, val


def collate(rows: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(r.input_ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, T)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
    for i, r in enumerate(rows):
        n = len(r.input_ids)
        ids[i, :n] = torch.tensor(r.input_ids)
        labels[i, :n] = torch.tensor(r.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class SFTDataModule(L.LightningDataModule):
    """Supervised fine-tuning data from one JSON-lines file, split into train and validation."""

    def __init__(self, path: Path, tokenizer: Any, *, batch_size: int, max_length: int, val_fraction: float,
                 seed: int) -> None:
        super().__init__()
        self.path, self.tokenizer = Path(path), tokenizer
        self.batch_size, self.max_length, self.val_fraction, self.seed = batch_size, max_length, val_fraction, seed
        self.train: list[Example] = []
        self.val: list[Example] = []
        self.truncated = 0
        pad = tokenizer.pad_token_id
        self.pad_id = tokenizer.eos_token_id if pad is None else pad

    def prepare(self) -> None:
        """Parse and tokenize (idempotent); raises DataError on the first bad file."""
        if self.train:
            return
        examples = []
        for line, record in read_records(self.path):
            example, cut = tokenize(record, self.tokenizer, line, self.max_length)
            examples.append(example)
            self.truncated += cut
        self.train, self.val = split(examples, self.val_fraction, self.seed)

    def setup(self, stage: str | None = None) -> None:
        self.prepare()

    def _loader(self, rows: list[Example], shuffle: bool) -> DataLoader:
        return DataLoader(rows, batch_size=self.batch_size, shuffle=shuffle,
                          collate_fn=lambda b: collate(b, self.pad_id))

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val, shuffle=False)
