"""The KV layouts: one class per way of keeping the running requests' KV cache, each a
`runner.KVLayout`, chosen once at start-up from `LAYOUTS` by `(kv_cache, compile)`.

* `SlotLayout` (`kv_cache = "static"`): a cache slot per admitted request (`slots.py`) and
  ONE forward per step, decode rows and prompt chunks together;
* `DecodeGraphLayout` (`kv_cache = "static"`, `compile = "decode"`): the slot layout whose
  decode-only steps run with static shapes (rows padded to a bucket, attention over the
  cache's fixed capacity), which is what CUDA graphs need;
* `PaddedLayout` (`kv_cache = "dynamic"`): one left-padded `DynamicCache` (`batch.py`), a
  decode forward then prefill forwards, re-packed as rows join and leave; for models whose
  attention does not go through transformers' attention interface.

Greedy output equals solo `generate()` token for token in fp32 in every layout
(`tests/llm/test_llm_layouts.py`).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from engines.llm.batch import DecodeBatch
from engines.llm.config import LLMConfig
from engines.llm.prefix_cache import BlockStore
from engines.llm.runner import KVLayout, Sampled, StepModel, StepResult
from engines.llm.scheduler import PrefillChunk, Sequence, StepPlan
from engines.llm.slots import Chunk, PackedStep, SlotCache


# ---- the padded layout ---------------------------------------------------------------------

class PaddedLayout:
    """Prompts that arrive whole in a step are prefilled together in one left-padded
    forward (a burst costs one pass, not one per request); a prompt split over several
    steps is prefilled alone, chunk by chunk, into its own cache. A row joins the running
    batch in the step its prompt completes, with its first sampled token as its next input,
    and decodes from the next step on; each row keeps its own positions and a padding mask."""

    def __init__(self, model: StepModel) -> None:
        self.model = model
        self.batch: DecodeBatch[Sequence] = DecodeBatch(model.device)
        self._chunked: dict[Sequence, Any] = {}  # DynamicCache of a prompt prefilled over several steps

    @classmethod
    def build(cls, model: StepModel, hf_model: Any, config: LLMConfig, max_positions: int,
              progress: Callable[[str], None]) -> "PaddedLayout":
        return cls(model)

    def execute(self, plan: StepPlan) -> StepResult:
        result = StepResult()
        if plan.decode:
            self._sync_rows(plan.decode)
            self._decode(result)
        whole = [c for c in plan.prefill if c.whole]
        if whole:
            self._prefill_whole(whole, result)
        for chunk in plan.prefill:
            if not chunk.whole:
                self._prefill_chunk(chunk, result)
        return result

    def free(self, seqs: list[Sequence]) -> None:
        gone = set(seqs)
        for seq in gone:
            self._chunked.pop(seq, None)
        if any(r in gone for r in self.batch.rows):
            self.batch.keep([i for i, r in enumerate(self.batch.rows) if r not in gone])

    def clear(self) -> None:
        self.batch = DecodeBatch(self.model.device)
        self._chunked.clear()

    @property
    def kv_tokens(self) -> int:
        return len(self.batch) * self.batch.length

    def _sync_rows(self, rows: list[Sequence]) -> None:
        """The batch must hold exactly the plan's decode rows; rows the engine forgot to free
        would otherwise be decoded for nobody."""
        if len(rows) != len(self.batch) or any(a is not b for a, b in zip(rows, self.batch.rows)):
            wanted = set(rows)
            self.batch.keep([i for i, r in enumerate(self.batch.rows) if r in wanted])
            if len(self.batch) != len(rows):
                raise RuntimeError("decode rows that were never prefilled")

    def _decode(self, result: StepResult) -> None:
        batch = self.batch
        rows = list(batch.rows)
        logits = self.model.forward([s.slot for s in rows], **batch.step_inputs())
        picks = self.model.sample(rows, logits)
        batch.advance(torch.tensor([t for t, _ in picks], dtype=torch.long))
        result.sampled.extend(Sampled(s, t, lp, False) for s, (t, lp) in zip(rows, picks))

    def _prefill_whole(self, chunks: list[PrefillChunk], result: StepResult) -> None:
        from transformers import DynamicCache

        seqs = [c.seq for c in chunks]
        width = max(len(s.prompt_ids) for s in seqs)
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, width - len(s.prompt_ids):] = torch.tensor(s.prompt_ids)
            mask[i, width - len(s.prompt_ids):] = 1
        # Left padding: each row's positions start at 0 at its first real token.
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        cache = DynamicCache()
        dev = self.model.device
        padded = any(len(s.prompt_ids) != width for s in seqs)  # else no mask: the unmasked kernel
        logits = self.model.forward([s.slot for s in seqs], input_ids=ids.to(dev),
                                    attention_mask=mask.to(dev) if padded else None,
                                    position_ids=positions.to(dev),
                                    cache=cache, use_cache=True, logits_to_keep=1)
        picks = self.model.sample(seqs, logits)
        self.batch.join(seqs, cache, mask, [t for t, _ in picks])
        result.sampled.extend(Sampled(s, t, lp, True) for s, (t, lp) in zip(seqs, picks))

    def _prefill_chunk(self, chunk: PrefillChunk, result: StepResult) -> None:
        from transformers import DynamicCache

        seq, start, n = chunk.seq, chunk.start, chunk.length
        cache = self._chunked.setdefault(seq, DynamicCache())
        dev = self.model.device
        ids = torch.tensor([seq.prompt_ids[start: start + n]], device=dev)
        logits = self.model.forward([seq.slot], input_ids=ids,
                                    position_ids=torch.arange(start, start + n, device=dev).view(1, -1),
                                    cache=cache, use_cache=True, logits_to_keep=1)
        if not chunk.last:
            return
        token, logprob = self.model.sample([seq], logits)[0]
        self.batch.join([seq], cache, torch.ones(1, len(seq.prompt_ids), dtype=torch.long), [token])
        del self._chunked[seq]
        result.sampled.append(Sampled(seq, token, logprob, True))


# ---- the slot layout: one forward per step ----------------------------------------------------

class SlotLayout:
    """Decode rows (slots 0..B-1, one token each) and prompt chunks as one (N, 1) batch
    through the attention function `slots.ATTENTION`, which the model must use (`build`
    sets it). `math`: the decode rows' attention as plain matmuls (see `PackedStep.math`;
    default on CUDA)."""

    def __init__(self, model: StepModel, hf_config: Any, slots: int, dtype: torch.dtype = torch.float32,
                 math: bool | None = None, cache: SlotCache | None = None, store: BlockStore | None = None) -> None:
        self.model = model
        self.store = store  # the prefix cache's blocks (`prefix_cache.py`); None when off
        self.device = model.device
        self._math = self.device.type == "cuda" if math is None else math
        cache = cache or SlotCache(hf_config, slots, self.device, dtype)
        self.table = _SlotTable(cache, slots)
        self._next: dict[Sequence, int] = {}  # each decoding row's next input token

    @classmethod
    def build(cls, model: StepModel, hf_model: Any, config: LLMConfig, max_positions: int,
              progress: Callable[[str], None]) -> "SlotLayout":
        return cls(model, _use_slot_attention(hf_model), config.scheduler.max_running, _dtype(hf_model),
                   store=_block_store(config))

    def execute(self, plan: StepPlan) -> StepResult:
        table, cache = self.table, self.table.cache
        table.sync(plan.decode)
        B = table.decoding
        ids: list[int] = []
        pos: list[int] = []
        where: list[int] = []
        lora: list[int] = []
        for i in range(B):
            seq = table.seqs[i]
            ids.append(self._next[seq])
            pos.append(cache.lengths[i])
            where.append(i)
            lora.append(seq.slot)
        chunks: list[tuple[PrefillChunk, Chunk]] = []
        dev = self.device
        for pc in plan.prefill:
            seq, start, n = pc.seq, pc.start, pc.length
            hit = seq.cached and seq not in table.slot  # its first chunk: copy the cached prefix in
            slot = table.assign(seq)
            if hit:
                self.store.load(cache, slot, seq.block_hashes[: seq.cached // self.store.block])
            c = Chunk(at=len(ids), n=n, slot=slot, start=start)
            if start:  # earlier chunks are cached: row i of the chunk sees columns <= start + i
                cols = torch.arange(start + n, device=dev)
                c.mask = cols.view(1, -1) <= torch.arange(start, start + n, device=dev).view(-1, 1)
            chunks.append((pc, c))
            ids.extend(seq.prompt_ids[start: start + n])
            pos.extend(range(start, start + n))
            where.extend([slot] * n)
            lora.extend([seq.slot] * n)
        cache.ensure(max(p + 1 for p in pos))
        width = max(pos[:B]) + 1 if B else 0
        mask = None
        if B and min(pos[:B]) + 1 != width:  # rows of different lengths: hide each row's unused columns
            lengths = torch.tensor(pos[:B], device=dev)
            mask = (torch.arange(width, device=dev).view(1, -1) <= lengths.view(-1, 1)).view(B, 1, 1, width)
        pos_t = torch.tensor(pos, dtype=torch.long, device=dev)
        step = PackedStep(cache, B, width, mask, torch.tensor(where, dtype=torch.long, device=dev), pos_t,
                          [c for _, c in chunks], math=self._math)
        # Logits only where a token is sampled: the decode rows and each completed prompt's
        # last token (vLLM's logits indices). Every other prompt token would cost a vocab-
        # sized row (a 2048-token chunk of a 128k-vocab model: 0.5 GB in bf16) for nothing.
        done = [(pc.seq, c.at + c.n - 1) for pc, c in chunks if pc.last]
        keep = torch.zeros(len(ids), 1, dtype=torch.bool)
        keep[:B] = True
        keep[[i for _, i in done]] = True
        logits = self.model.forward(lora, input_ids=torch.tensor(ids, dtype=torch.long, device=dev).view(-1, 1),
                                    position_ids=pos_t.view(-1, 1), use_cache=False, galactic_step=step,
                                    logits_to_keep=keep.to(dev))  # (B + len(done), V)
        for i in range(B):
            cache.lengths[i] += 1
        result = StepResult()
        if B:
            self._sample_rows(table.seqs[:B], logits[:B], False, result)
        for _, c in chunks:
            cache.lengths[c.slot] = c.start + c.n
        if done:
            seqs = [s for s, _ in done]
            self._sample_rows(seqs, logits[B:], True, result)
            for seq in seqs:
                if self.store is not None and seq.block_hashes:
                    self.store.save(cache, table.slot[seq], seq.block_hashes)
                table.start_decoding(seq)
        if self.store is not None:
            self.store.evict(plan.evicted)
        return result

    def free(self, seqs: list[Sequence]) -> None:
        for seq in seqs:
            self._next.pop(seq, None)
            self.table.release(seq)

    def clear(self) -> None:
        self._next.clear()
        self.table.clear()
        if self.store is not None:  # the scheduler's index is cleared with it
            self.store.clear()

    @property
    def kv_tokens(self) -> int:
        return sum(self.table.cache.lengths)

    def _sample_rows(self, seqs: list[Sequence], logits: torch.Tensor, first: bool, result: StepResult) -> None:
        for seq, (t, lp) in zip(seqs, self.model.sample(seqs, logits)):
            self._next[seq] = t
            result.sampled.append(Sampled(seq, t, lp, first))


class DecodeGraphLayout(SlotLayout):
    """The slot layout with static shapes for decode-only steps: B rows padded to a bucket
    (`decode_buckets`), attention over the cache's whole capacity under a mask, the cache
    allocated once at `max_len` positions with one scratch slot more (padding rows write
    there), its buffers marked static. `compiled`: through `torch.compile` (CUDA graphs on
    CUDA, warmed per bucket by `warm_up`); otherwise the same padded step runs eagerly (so
    the CPU tests check the exact layout the GPU compiles). Steps that prefill stay eager."""

    def __init__(self, model: StepModel, hf_config: Any, slots: int, max_len: int,
                 dtype: torch.dtype = torch.float32, compiled: bool = True, math: bool | None = None,
                 store: BlockStore | None = None) -> None:
        # A captured graph keeps the buffers' addresses: the capacity is fixed at its maximum.
        cache = SlotCache(hf_config, slots + 1, model.device, dtype, capacity=max_len, max_capacity=max_len)
        super().__init__(model, hf_config, slots, dtype, math, cache, store)
        self.buckets = decode_buckets(slots)
        self._graph: Callable[..., Any] = self._compile(cache) if compiled else model.model

    @classmethod
    def build(cls, model: StepModel, hf_model: Any, config: LLMConfig, max_positions: int,
              progress: Callable[[str], None]) -> "DecodeGraphLayout":
        sched = config.scheduler
        layout = cls(model, _use_slot_attention(hf_model), sched.max_running,
                     min(max_positions, sched.max_prompt_tokens + sched.max_new_tokens_limit), _dtype(hf_model),
                     store=_block_store(config))
        progress(f"compiling the decode step for batch sizes {layout.buckets} (torch.compile)")
        layout.warm_up()
        return layout

    def execute(self, plan: StepPlan) -> StepResult:
        if plan.prefill or not plan.decode:
            return super().execute(plan)
        table, cache = self.table, self.table.cache
        table.sync(plan.decode)
        B = table.decoding
        rows = table.seqs[:B]
        cache.ensure(max(cache.lengths[:B]) + 1)  # raises past the fixed capacity
        pad = next(b for b in self.buckets if b >= B) - B
        # Padding rows read slots B.. (harmless: their outputs are dropped) and write only
        # the scratch slot.
        logits = self._run_graph([self._next[s] for s in rows] + [0] * pad,
                                 cache.lengths[:B] + [0] * pad,
                                 list(range(B)) + [cache.slots - 1] * pad,
                                 [s.slot for s in rows] + [0] * pad)[:B]
        for i in range(B):
            cache.lengths[i] += 1
        result = StepResult()
        self._sample_rows(rows, logits, False, result)
        if self.store is not None:
            self.store.evict(plan.evicted)
        return result

    def warm_up(self) -> None:
        """Run the decode-only step at every batch bucket (three times: CUDA graphs record on
        a later call than the first), writing only to the scratch slot; otherwise the first
        requests to reach each batch size would pay a compilation."""
        cache = self.table.cache
        with torch.no_grad():
            for rows in self.buckets:
                for _ in range(3):
                    self._run_graph([0] * rows, [0] * rows, [cache.slots - 1] * rows, [0] * rows)
        self.table.clear()

    def _compile(self, cache: SlotCache) -> Callable[..., Any]:
        """torch.compile for the decode-only step. The cache buffers are marked static, so
        CUDA graphs write them in place instead of copying them in and out every step."""
        import torch._dynamo

        for buf in cache.k + cache.v:
            torch._dynamo.mark_static_address(buf)
        # One graph per batch bucket (and per LoRA on/off): more than dynamo's default
        # recompile limit of 8 would silently fall back to eager.
        limit = 4 * len(self.buckets) + 8
        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), limit))
        mode = "reduce-overhead" if self.device.type == "cuda" else None  # CUDA graphs need CUDA
        return torch.compile(self.model.model, mode=mode, dynamic=False)

    def _run_graph(self, ids: list[int], pos: list[int], where: list[int], lora: list[int]) -> torch.Tensor:
        cache, dev = self.table.cache, self.device
        pos_t = torch.tensor(pos, dtype=torch.long, device=dev)
        cols = torch.arange(cache.capacity, device=dev).view(1, -1)
        mask = (cols <= pos_t.view(-1, 1)).view(len(ids), 1, 1, -1)
        step = PackedStep(cache, len(ids), cache.capacity, mask, torch.tensor(where, dtype=torch.long, device=dev),
                          pos_t, math=self._math)
        return self.model.forward(lora, call=self._graph,
                                  input_ids=torch.tensor(ids, dtype=torch.long, device=dev).view(-1, 1),
                                  position_ids=pos_t.view(-1, 1), use_cache=False, galactic_step=step)


LayoutBuilder = Callable[[StepModel, Any, LLMConfig, int, Callable[[str], None]], KVLayout]

# (kv_cache, compile) -> the layout. `LLMConfig` refuses the pairs missing here.
LAYOUTS: dict[tuple[str, str], LayoutBuilder] = {
    ("static", "off"): SlotLayout.build,
    ("static", "decode"): DecodeGraphLayout.build,
    ("dynamic", "off"): PaddedLayout.build,
}


def _use_slot_attention(hf_model: Any) -> Any:
    """Route the model's attention through `slots.packed_attention`; returns its config."""
    from engines.llm import slots

    slots.register()
    hf_model.config._attn_implementation = slots.ATTENTION
    return hf_model.config


def _block_store(config: LLMConfig) -> BlockStore | None:
    return BlockStore(config.prefix_cache.block_tokens) if config.prefix_caching else None


def _dtype(hf_model: Any) -> torch.dtype:
    return hf_model.get_input_embeddings().weight.dtype


def decode_buckets(max_rows: int) -> list[int]:
    """Batch sizes the static decode step is padded to: 1, 2, 4, 8, then every 8, and
    `max_rows` (at most 7 rows of padding, a handful of graphs)."""
    sizes = {b for b in (1, 2, 4, 8) if b < max_rows} | set(range(8, max_rows, 8)) | {max_rows}
    return sorted(sizes)


class _SlotTable:
    """Which request holds which cache slot. Decoding rows hold slots 0..decoding-1 (so the
    decode group reads a view of the cache); prompts being prefilled hold free slots above.
    Slots past `usable` (the decode graph's scratch slot) are never handed out."""

    def __init__(self, cache: SlotCache, usable: int) -> None:
        self.cache = cache
        self.usable = usable
        self.seqs: list[Sequence | None] = [None] * usable
        self.slot: dict[Sequence, int] = {}
        self.decoding = 0

    def assign(self, seq: Sequence) -> int:
        s = self.slot.get(seq)
        if s is None:
            s = next(i for i in range(self.decoding, len(self.seqs)) if self.seqs[i] is None)
            self.seqs[s], self.slot[seq] = seq, s
            self.cache.lengths[s] = 0
        return s

    def start_decoding(self, seq: Sequence) -> None:
        """`seq`'s prompt is cached: it takes slot `decoding` (moving whoever is there)."""
        s, d = self.slot[seq], self.decoding
        if s != d:
            other = self.seqs[d]
            if other is None:
                self.cache.move(s, d)
            else:
                self.cache.swap(s, d)
                self.seqs[s], self.slot[other] = other, s
            self.seqs[d], self.slot[seq] = seq, d
            if other is None:
                self.seqs[s] = None
        self.decoding += 1

    def release(self, seq: Sequence) -> None:
        s = self.slot.pop(seq, None)
        if s is None:
            return
        self.seqs[s] = None
        self.cache.lengths[s] = 0
        if s < self.decoding:  # keep decoding rows compact: the last one fills the hole
            last = self.decoding - 1
            if s != last:
                moved = self.seqs[last]
                self.cache.move(last, s)
                self.seqs[s], self.seqs[last], self.slot[moved] = moved, None, s
            self.decoding -= 1

    def sync(self, rows: list[Sequence]) -> None:
        """The decoding slots must hold exactly the plan's decode rows."""
        live = self.seqs[: self.decoding]
        if len(live) != len(rows) or set(live) != set(rows):
            wanted = set(rows)
            for seq in [s for s in live if s not in wanted]:
                self.release(seq)
            if self.decoding != len(rows):
                raise RuntimeError("decode rows that were never prefilled")

    def clear(self) -> None:
        self.seqs = [None] * self.usable
        self.slot.clear()
        self.decoding = 0
        self.cache.lengths = [0] * self.cache.slots
