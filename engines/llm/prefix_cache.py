"""Prefix caching: prompt KV reused across requests (vLLM's automatic prefix caching).

Two halves, on either side of the runner boundary:

* `PrefixIndex` (the scheduler's side, no tensors): a prompt is cut into full blocks of
  `block_tokens`; block i is named by a hash chained from the request's cache key (the
  adapter's name and load generation: a different or replaced adapter never matches), block
  i-1's hash and block i's token ids. On admission the scheduler asks for the longest run
  of leading blocks the index holds (`match`) and starts the prompt's prefill after them;
  when a prompt's last chunk is planned its full blocks are registered (`insert`). The index
  is the single authority on what the cache holds: it evicts least recently used blocks
  beyond `max_tokens`, and drops a cache key's blocks when its adapter is removed; those
  hashes travel with the next plan (`StepPlan.evicted`).
* `BlockStore` (the layout's side, next to the KV cache, in the model process with the
  default runner): block hash -> the block's K/V for every layer. The layout copies a hit's
  blocks into the request's slot before the step's forward (`load`), saves a completed
  prompt's new blocks after it (`save`), then applies the plan's evictions, in that order:
  a block the index evicts in the same step as a request matched it is still loaded first.

A copy per hit, not shared pages: the slot layout keeps each request's KV contiguous in its
slot, so no request holds a cached block after its first step, and any block may be evicted.
At least the prompt's last token is always computed (its logits give the first token).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any


def block_hashes(key: str, prompt_ids: list[int], block: int, limit: int | None = None) -> tuple[bytes, ...]:
    """Chained hashes of the prompt's first `limit` full blocks under `key` (blake2b: a
    collision would hand one prompt another's KV, so not Python's 64-bit `hash`)."""
    out: list[bytes] = []
    parent = hashlib.blake2b(key.encode(), digest_size=16).digest()
    n = len(prompt_ids) // block
    for i in range(n if limit is None else min(n, limit)):
        h = hashlib.blake2b(parent, digest_size=16)
        h.update(b"".join(t.to_bytes(4, "little", signed=True) for t in prompt_ids[i * block: (i + 1) * block]))
        parent = h.digest()
        out.append(parent)
    return tuple(out)


class PrefixIndex:
    """Which blocks the cache holds, in LRU order; not thread-safe (the engine's lock)."""

    def __init__(self, max_tokens: int, block_tokens: int) -> None:
        self.block = block_tokens
        self.capacity = max_tokens // block_tokens  # blocks
        self._blocks: OrderedDict[bytes, str] = OrderedDict()  # hash -> cache key, oldest first
        self._evicted: list[bytes] = []  # not yet sent to the store

    @property
    def tokens(self) -> int:
        return len(self._blocks) * self.block

    def hashes(self, key: str, prompt_ids: list[int]) -> tuple[bytes, ...]:
        """The prompt's leading blocks that the cache could hold: the layout saves exactly
        these, so the store never holds a block the index does not know."""
        return block_hashes(key, prompt_ids, self.block, self.capacity)

    def match(self, hashes: tuple[bytes, ...], prompt_len: int) -> int:
        """Prompt tokens cached as leading blocks, leaving at least the last token to compute."""
        usable = (prompt_len - 1) // self.block
        n = 0
        while n < min(usable, len(hashes)) and hashes[n] in self._blocks:
            n += 1
        self._touch(hashes[:n])
        return n * self.block

    def insert(self, key: str, hashes: tuple[bytes, ...]) -> None:
        """The prompt with these block hashes is cached once its step has run: register its
        blocks (most recently used), evicting the least recently used beyond capacity. Only
        the leading blocks that fit are kept (`hashes`): a block is useless without those before it."""
        for h in hashes:
            self._blocks.setdefault(h, key)
        self._touch(hashes)
        while len(self._blocks) > self.capacity:
            h, _ = self._blocks.popitem(last=False)
            self._evicted.append(h)

    def _touch(self, hashes: tuple[bytes, ...]) -> None:
        """Most recently used, a prompt's first block last: its tail is evicted before its head."""
        for h in reversed(hashes):
            self._blocks.move_to_end(h)

    def drop(self, key: str) -> None:
        """Forget every block cached under `key` (its adapter was unloaded or replaced)."""
        gone = [h for h, k in self._blocks.items() if k == key]
        for h in gone:
            del self._blocks[h]
        self._evicted.extend(gone)

    def take_evicted(self) -> list[bytes]:
        out, self._evicted = self._evicted, []
        return out

    def clear(self) -> None:
        """After a failed step or a new model process: the store is emptied too."""
        self._blocks.clear()
        self._evicted.clear()


class BlockStore:
    """Block hash -> K/V of one block for every layer, (layers, 2, Hkv, block, D)."""

    def __init__(self, block_tokens: int) -> None:
        self.block = block_tokens
        self._blocks: dict[bytes, Any] = {}

    def __len__(self) -> int:
        return len(self._blocks)

    def load(self, cache: Any, slot: int, hashes: tuple[bytes, ...]) -> None:
        """Copy the blocks into `slot`'s first positions (the index matched them, so they
        are here; a miss means the two halves disagree: the step fails and both are reset)."""
        import torch

        if not hashes:
            return
        n = len(hashes) * self.block
        cache.ensure(n)
        kv = [self._blocks[h] for h in hashes]  # KeyError: out of step with the index
        for layer, (k, v) in enumerate(zip(cache.k, cache.v)):
            k[slot, :, :n] = torch.cat([b[layer, 0] for b in kv], dim=1)  # (Hkv, n, D)
            v[slot, :, :n] = torch.cat([b[layer, 1] for b in kv], dim=1)
        cache.lengths[slot] = n

    def save(self, cache: Any, slot: int, hashes: tuple[bytes, ...]) -> None:
        """Copy the blocks of `slot`'s prompt that are not stored yet out of the cache."""
        import torch

        B = self.block
        for i, h in enumerate(hashes):
            if h in self._blocks:
                continue
            a, b = i * B, (i + 1) * B
            self._blocks[h] = torch.stack([torch.stack([k[slot, :, a:b], v[slot, :, a:b]])
                                           for k, v in zip(cache.k, cache.v)])

    def evict(self, hashes: list[bytes]) -> None:
        for h in hashes:
            self._blocks.pop(h, None)

    def clear(self) -> None:
        self._blocks.clear()

