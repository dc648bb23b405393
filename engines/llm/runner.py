"""The model runner: executes one `StepPlan` on the model and returns what was sampled.

It owns everything that is a tensor: the model's forward, the running batch's KV cache and
layout (`batch.py`), the per-request prefill caches of prompts that span several steps,
the LoRA context (which bank slot each row reads), per-row sampling state (generators,
repetition-penalty history) and compilation. It never calls back up: the scheduler decides
what runs, the engine applies the result (`output.py`) and tells the runner which requests
to forget (`free`).

The model is used in exactly one place, `_forward`, so a wrapper around the served model
(a LightningModule, a compiled graph) changes one line.

Batch layout: prompts that arrive whole in a step are prefilled together in one left-
padded forward (a burst costs one pass, not one per request); a prompt split over several
steps is prefilled alone, chunk by chunk, into its own cache. A row joins the running batch
in the step its prompt completes, with its first sampled token as its next input, and
decodes from the next step on. Greedy output equals solo `generate()` token for token in
fp32: each row keeps its own positions and a padding mask.

That is the padded layout (`kv_cache = "dynamic"`). The default static layout (`slots.py`)
runs each step as one forward over decode rows and prompt chunks together. On top of it,
`decode_graph` gives decode-only steps static shapes (rows padded to a bucket, attention
over the cache's fixed capacity), which is what CUDA graphs need: "compiled" runs them
through `torch.compile(mode="reduce-overhead")`, "eager" runs the same padded step
uncompiled (so the CPU tests check the exact layout the GPU compiles).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch

from engines.llm.batch import DecodeBatch
from engines.llm.sampling import make_generator, sample_batch
from engines.llm.scheduler import PrefillChunk, Sequence, StepPlan
from engines.llm.slots import Chunk, PackedStep, SlotCache


@dataclass
class Sampled:
    seq: Sequence
    token: int
    logprob: float | None
    first: bool  # the first token of the request (sampled after its prefill)


@dataclass
class StepResult:
    sampled: list[Sampled] = field(default_factory=list)  # decode rows first, then completed prompts
    prefill_tokens: int = 0
    decode_rows: int = 0


@dataclass(eq=False)
class _RowState:
    generator: torch.Generator | None
    seen: torch.Tensor | None  # prompt + generated ids, only with a repetition penalty
    cache: Any = None  # DynamicCache while the prompt is prefilled in chunks (padded layout)
    next_token: int = 0  # the next decode input (static layout)


class ModelRunner:
    """`kv_slots=None`: the padded layout (`batch.py`: a decode forward, then prefill
    forwards). `kv_slots=S`: the static layout (`slots.py`): S cache slots and one forward
    per step; the model's attention must then be `slots.ATTENTION` (the engine sets it)."""

    def __init__(self, model: Any, device: torch.device, lora_ctx: Any = None, *, kv_slots: int | None = None,
                 hf_config: Any = None, dtype: torch.dtype = torch.float32,
                 decode_graph: Literal["off", "eager", "compiled"] = "off", max_len: int | None = None,
                 decode_math: bool | None = None) -> None:
        self.model = model
        self.device = device
        self._lora_ctx = lora_ctx  # LoRABank.ctx: `.index` selects each row's adapter slot
        self._call: Callable[..., Any] = model
        self.batch: DecodeBatch[Sequence] = DecodeBatch(device)
        self._rows: dict[Sequence, _RowState] = {}
        self._static = None
        self._submitted: StepPlan | None = None
        self._math = device.type == "cuda" if decode_math is None else decode_math  # see PackedStep.math
        self._graph: Callable[..., Any] | None = None  # the decode-only step with static shapes
        self.buckets: list[int] = []
        if kv_slots is not None:
            if decode_graph == "off":
                cache = SlotCache(hf_config, kv_slots, device, dtype)
            else:
                # One scratch slot more (padding rows write there), and the capacity fixed at
                # its maximum: a captured graph keeps the buffers' addresses.
                cache = SlotCache(hf_config, kv_slots + 1, device, dtype, capacity=max_len or 1 << 30, max_capacity=max_len)
                self.buckets = decode_buckets(kv_slots)
                self._graph = model
                if decode_graph == "compiled":
                    self._graph = self._compile_decode(cache)
            self._static = _SlotTable(cache, kv_slots)
        elif decode_graph != "off":
            raise ValueError("decode_graph needs the static layout (kv_slots)")

    # ---- the one place the model is called ----------------------------------------------

    def _forward(self, slots: list[int], call: Callable[..., Any] | None = None, **inputs: Any) -> torch.Tensor:
        """One forward pass; returns the last position's logits (B, V), or with a boolean
        `logits_to_keep` (B, 1) the kept rows' logits (K, V), in row order."""
        if self._lora_ctx is not None:
            self._lora_ctx.index = torch.tensor(slots, device=self.device) if any(slots) else None
            keep = inputs.get("logits_to_keep")
            self._lora_ctx.kept = keep.view(-1) if isinstance(keep, torch.Tensor) else None
        logits = (self._call if call is None else call)(**inputs).logits
        return logits if logits.dim() == 2 else logits[:, -1]

    def _compile_decode(self, cache: SlotCache) -> Callable[..., Any]:
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
        return torch.compile(self.model, mode=mode, dynamic=False)

    def warm_up(self) -> None:
        """Run the decode-only step at every batch bucket (three times: CUDA graphs record on
        a later call than the first), writing only to the scratch slot; otherwise the first
        requests to reach each batch size would pay a compilation."""
        if self._graph is None:
            return
        cache = self._static.cache
        with torch.no_grad():
            for rows in self.buckets:
                for _ in range(3):
                    self._run_graph([0] * rows, [0] * rows, [cache.slots - 1] * rows, [0] * rows)
        self._static.clear()

    # ---- the contract ----------------------------------------------------------------------

    # The engine sends a step with `submit` and takes its result with `collect`. Here the
    # forward runs on the caller's thread, in `collect`: nothing can overlap it, so the
    # engine applies each step's tokens before planning the next. The model process's
    # runner overlaps (process.py).
    overlaps = False

    def submit(self, plan: StepPlan) -> None:
        self._submitted = plan

    def collect(self) -> StepResult:
        plan, self._submitted = self._submitted, None
        return self.execute(plan)

    def execute(self, plan: StepPlan) -> StepResult:
        """Run `plan`: free the dropped requests, then one forward over the decode rows and
        the prompt chunks together (static layout; the padded layout runs a decode forward,
        then the chunks); return every token sampled (one per decode row, one per prompt
        completed)."""
        self.free([seq for seq, _ in plan.dropped])
        if self._static is not None:
            return self._execute_packed(plan)
        result = StepResult()
        if plan.decode:
            self._sync_rows(plan.decode)
            result.decode_rows = len(plan.decode)
            self._decode(result)
        whole = [c for c in plan.prefill if c.whole]
        if whole:
            self._prefill_whole(whole, result)
        for chunk in plan.prefill:
            if not chunk.whole:
                self._prefill_chunk(chunk, result)
        result.prefill_tokens = plan.prefill_tokens
        return result

    def free(self, seqs: list[Sequence]) -> None:
        """Forget finished or dropped requests: their batch rows, caches and sampling state."""
        if not seqs:
            return
        gone = set(seqs)
        for seq in gone:
            self._rows.pop(seq, None)
            if self._static is not None:
                self._static.release(seq)
        if any(r in gone for r in self.batch.rows):
            self.batch.keep([i for i, r in enumerate(self.batch.rows) if r not in gone])

    def reset(self) -> None:
        """After a failed step: drop all state (the scheduler aborted every admitted request)."""
        self.batch = DecodeBatch(self.device)
        self._rows.clear()
        if self._static is not None:
            self._static.clear()

    @property
    def kv_tokens(self) -> int:
        if self._static is not None:
            return sum(self._static.cache.lengths)
        return len(self.batch) * self.batch.length

    # ---- steps -------------------------------------------------------------------------------

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
        logits = self._forward([s.slot for s in rows], **batch.step_inputs())
        picks = self._sample(rows, logits)
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
        for s in seqs:
            self._state(s)
        padded = any(len(s.prompt_ids) != width for s in seqs)  # else no mask: the unmasked kernel
        logits = self._forward([s.slot for s in seqs], input_ids=ids.to(self.device),
                               attention_mask=mask.to(self.device) if padded else None,
                               position_ids=positions.to(self.device),
                               cache=cache, use_cache=True, logits_to_keep=1)
        picks = self._sample(seqs, logits)
        self.batch.join(seqs, cache, mask, [t for t, _ in picks])
        result.sampled.extend(Sampled(s, t, lp, True) for s, (t, lp) in zip(seqs, picks))

    def _prefill_chunk(self, chunk: PrefillChunk, result: StepResult) -> None:
        from transformers import DynamicCache

        seq, start, n = chunk.seq, chunk.start, chunk.length
        state = self._state(seq)
        if state.cache is None:
            state.cache = DynamicCache()
        ids = torch.tensor([seq.prompt_ids[start: start + n]], device=self.device)
        logits = self._forward([seq.slot], input_ids=ids,
                               position_ids=torch.arange(start, start + n, device=self.device).view(1, -1),
                               cache=state.cache, use_cache=True, logits_to_keep=1)
        if not chunk.last:
            return
        token, logprob = self._sample([seq], logits)[0]
        self.batch.join([seq], state.cache, torch.ones(1, len(seq.prompt_ids), dtype=torch.long), [token])
        state.cache = None
        result.sampled.append(Sampled(seq, token, logprob, True))

    # ---- the static layout: one forward per step ---------------------------------------------

    def _execute_packed(self, plan: StepPlan) -> StepResult:
        """Decode rows (slots 0..B-1, one token each) and prompt chunks as one (N, 1) batch."""
        table, cache = self._static, self._static.cache
        table.sync(plan.decode)
        B = table.decoding
        if self._graph is not None and B and not plan.prefill:
            return self._decode_graph_step(B)
        ids: list[int] = []
        pos: list[int] = []
        where: list[int] = []
        lora: list[int] = []
        for i in range(B):
            seq = table.seqs[i]
            ids.append(self._rows[seq].next_token)
            pos.append(cache.lengths[i])
            where.append(i)
            lora.append(seq.slot)
        chunks: list[tuple[PrefillChunk, Chunk]] = []
        for pc in plan.prefill:
            seq, start, n = pc.seq, pc.start, pc.length
            self._state(seq)
            slot = table.assign(seq)
            c = Chunk(at=len(ids), n=n, slot=slot, start=start)
            if start:  # earlier chunks are cached: row i of the chunk sees columns <= start + i
                cols = torch.arange(start + n, device=self.device)
                c.mask = cols.view(1, -1) <= torch.arange(start, start + n, device=self.device).view(-1, 1)
            chunks.append((pc, c))
            ids.extend(seq.prompt_ids[start: start + n])
            pos.extend(range(start, start + n))
            where.extend([slot] * n)
            lora.extend([seq.slot] * n)
        cache.ensure(max(p + 1 for p in pos))
        width = max(pos[:B]) + 1 if B else 0
        mask = None
        if B and min(pos[:B]) + 1 != width:  # rows of different lengths: hide each row's unused columns
            lengths = torch.tensor(pos[:B], device=self.device)
            mask = (torch.arange(width, device=self.device).view(1, -1) <= lengths.view(-1, 1)).view(B, 1, 1, width)
        dev = self.device
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
        logits = self._forward(lora, input_ids=torch.tensor(ids, dtype=torch.long, device=dev).view(-1, 1),
                               position_ids=pos_t.view(-1, 1), use_cache=False, galactic_step=step,
                               logits_to_keep=keep.to(dev))  # (B + len(done), V)
        for i in range(B):
            cache.lengths[i] += 1
        result = StepResult(decode_rows=B, prefill_tokens=plan.prefill_tokens)
        if B:
            rows = table.seqs[:B]
            picks = self._sample(rows, logits[:B])
            for seq, (t, lp) in zip(rows, picks):
                self._rows[seq].next_token = t
                result.sampled.append(Sampled(seq, t, lp, False))
        for _, c in chunks:
            cache.lengths[c.slot] = c.start + c.n
        if done:
            seqs = [s for s, _ in done]
            picks = self._sample(seqs, logits[B:])
            for seq, (t, lp) in zip(seqs, picks):
                self._rows[seq].next_token = t
                table.start_decoding(seq)
                result.sampled.append(Sampled(seq, t, lp, True))
        return result

    def _decode_graph_step(self, B: int) -> StepResult:
        """A decode-only step with static shapes: B rows padded to a bucket, attention over
        the whole capacity under a mask. Padding rows read slots B.. (harmless: their
        outputs are dropped) and write only the scratch slot."""
        table, cache = self._static, self._static.cache
        rows = table.seqs[:B]
        cache.ensure(max(cache.lengths[:B]) + 1)  # raises past the fixed capacity
        pad = next(b for b in self.buckets if b >= B) - B
        logits = self._run_graph([self._rows[s].next_token for s in rows] + [0] * pad,
                                 cache.lengths[:B] + [0] * pad,
                                 list(range(B)) + [cache.slots - 1] * pad,
                                 [s.slot for s in rows] + [0] * pad)[:B]
        for i in range(B):
            cache.lengths[i] += 1
        result = StepResult(decode_rows=B)
        for seq, (t, lp) in zip(rows, self._sample(rows, logits)):
            self._rows[seq].next_token = t
            result.sampled.append(Sampled(seq, t, lp, False))
        return result

    def _run_graph(self, ids: list[int], pos: list[int], where: list[int], lora: list[int]) -> torch.Tensor:
        cache, dev = self._static.cache, self.device
        pos_t = torch.tensor(pos, dtype=torch.long, device=dev)
        cols = torch.arange(cache.capacity, device=dev).view(1, -1)
        mask = (cols <= pos_t.view(-1, 1)).view(len(ids), 1, 1, -1)
        step = PackedStep(cache, len(ids), cache.capacity, mask, torch.tensor(where, dtype=torch.long, device=dev),
                          pos_t, math=self._math)
        return self._forward(lora, call=self._graph,
                             input_ids=torch.tensor(ids, dtype=torch.long, device=dev).view(-1, 1),
                             position_ids=pos_t.view(-1, 1), use_cache=False, galactic_step=step)

    def _state(self, seq: Sequence) -> _RowState:
        state = self._rows.get(seq)
        if state is None:
            params = seq.request.sampling
            seen = torch.tensor(seq.prompt_ids, dtype=torch.long) if params.repetition_penalty != 1.0 else None
            state = self._rows[seq] = _RowState(make_generator(params), seen)
        return state

    def _sample(self, seqs: list[Sequence], logits: torch.Tensor) -> list[tuple[int, float | None]]:
        states = [self._state(s) for s in seqs]
        picks = sample_batch(logits, [(s.request.sampling, st.seen, st.generator) for s, st in zip(seqs, states)])
        for st, (token, _) in zip(states, picks):
            if st.seen is not None:
                st.seen = torch.cat([st.seen, torch.tensor([token])])
        return picks


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
