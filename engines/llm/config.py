"""Typed, frozen configuration of the LLM engine (the `[llm]` TOML table).

Built with `engines.config.from_mapping(LLMConfig, table, "llm")`; each class checks its
own invariants in `__post_init__`, so a bad value fails at start-up naming its key.
Host-dependent checks (is there a CUDA device for nf4?) happen in `load()`, not here:
this module does no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from engines.config import check


@dataclass(frozen=True)
class SchedulerConfig:
    max_running: int = 32  # requests decoding (or prefilling) at once: the batch's rows
    max_batch_tokens: int = 16384  # sum over running requests of prompt + max_new_tokens (reserved up front)
    max_waiting: int = 256  # bounded waiting queue; beyond it generate() raises ResourceExhausted
    # At most this many prompt tokens prefilled per step. Steps with streams decoding take
    # less (max_step_tokens); this bounds the large step of a burst into a quiet engine:
    # 2048 takes 32 prompts of 64 tokens at once (vLLM's default token budget for online
    # serving), so the burst's last stream starts with its first, not many steps later.
    prefill_chunk_tokens: int = 2048
    # Tokens one step computes while streams are decoding: one per decoding row plus the
    # prompt tokens prefilled with them. Bounds how long arrivals stall running streams
    # (ITL) against how fast a burst is prefilled (TTFT); see engines/llm/README.md.
    # 0 = 2 x max_running (64 at 32 rows): on a CPU, where a step's cost grows with its
    # tokens, a step then stays within ~1.3-1.5x a full decode step. On a GPU a decode step
    # is bound by memory, not FLOPs: a larger budget (512+) costs running streams little.
    max_step_tokens: int = 0
    # A step with at most this share of max_running decoding (4 rows at 32) may prefill
    # prefill_chunk_tokens, as one with none does: a burst into a quiet engine then stalls
    # those few streams for one large step, instead of every stream that joins it over many
    # budgeted steps (TGI's waiting_served_ratio makes the same trade). 0 = only a step with
    # no row decoding.
    burst_stall_fraction: float = 0.125
    priority_aging_s: float = 10.0  # a waiting request gains +1 priority per this many seconds
    max_prompt_tokens: int = 4096  # longer prompts are rejected (InvalidArgument on `prompt`)
    max_new_tokens_limit: int = 4096  # upper bound accepted for sampling.max_new_tokens

    @property
    def step_tokens(self) -> int:
        """`max_step_tokens` resolved (0 = 2 x max_running). Derived here, not written back
        in `__post_init__`, so that `replace(config, max_running=...)` derives it anew."""
        return self.max_step_tokens or 2 * self.max_running

    def __post_init__(self) -> None:
        check(self.max_running >= 1, "max_running", "must be >= 1")
        check(self.max_batch_tokens >= 2, "max_batch_tokens", "must be >= 2")
        check(self.max_waiting >= 1, "max_waiting", "must be >= 1 (every request passes through the waiting queue)")
        check(self.prefill_chunk_tokens >= 1, "prefill_chunk_tokens", "must be >= 1")
        check(self.max_step_tokens >= 0, "max_step_tokens", "must be >= 0 (0 = 2 x max_running)")
        check(self.step_tokens > self.max_running, "max_step_tokens",
              "must exceed max_running, or a full batch would leave no room to prefill arrivals")
        check(0 <= self.burst_stall_fraction < 1, "burst_stall_fraction", "must be in [0, 1)")
        check(self.priority_aging_s > 0, "priority_aging_s", "must be > 0")
        check(self.max_prompt_tokens >= 1, "max_prompt_tokens", "must be >= 1")
        check(
            self.max_prompt_tokens < self.max_batch_tokens,
            "max_prompt_tokens",
            "must be < max_batch_tokens, or no request with that prompt could ever run",
        )
        check(self.max_new_tokens_limit >= 1, "max_new_tokens_limit", "must be >= 1")


@dataclass(frozen=True)
class AdapterConfig:
    root: Path = Path("~/.local/share/galactic/adapters")  # load_adapter paths must lie inside it
    max_loaded: int = 8  # adapters resident at once; idle unpinned ones are evicted LRU beyond this
    # A request naming an adapter that is not loaded loads `root/<name>` on first use (one
    # load however many requests wait on it); LoadAdapter pins, on-demand loads do not.
    on_demand: bool = True
    # A failed on-demand load answers requests naming it with its error for this long
    # before it is tried again (0 = retry on every request).
    negative_cache_s: float = 10.0
    preload: dict[str, str] = field(default_factory=dict)  # name -> path, loaded at start-up
    # Refuse adapters without galactic_adapter.json (whose base model cannot be checked);
    # off by default so adapters trained elsewhere load, with a warning.
    require_metadata: bool = False

    def __post_init__(self) -> None:
        check(self.max_loaded >= 1, "max_loaded", "must be >= 1")
        check(self.negative_cache_s >= 0, "negative_cache_s", "must be >= 0 (0 = no negative cache)")
        check(
            len(self.preload) <= self.max_loaded,
            "preload",
            f"{len(self.preload)} adapters exceed max_loaded={self.max_loaded}",
        )
        for name in self.preload:
            check(bool(name.strip()), "preload", "adapter names must be non-empty")

    def resolved_root(self) -> Path:
        return self.root.expanduser().resolve()


@dataclass(frozen=True)
class PrefixCacheConfig:
    """Prompt KV reused across requests with the same adapter (`prefix_cache.py`)."""

    enabled: bool = True
    # Tokens of prompt KV kept for reuse, beyond the running requests' own cache; the least
    # recently used blocks go first. Per token: 2 x layers x kv_heads x head_dim x dtype
    # bytes (32 KiB for the 30M demo model in fp32: 8192 tokens = 256 MiB).
    max_tokens: int = 8192
    # Prompts are cached in full blocks of this many tokens (a prefix ending mid-block
    # reuses the blocks before it and computes the rest).
    block_tokens: int = 16

    def __post_init__(self) -> None:
        check(self.block_tokens >= 1, "block_tokens", "must be >= 1")
        check(self.max_tokens >= 0, "max_tokens", "must be >= 0")


@dataclass(frozen=True)
class ConstraintConfig:
    """Structured output (`constraints.py`): bounds on what a request may ask for."""

    max_bytes: int = 65536  # longest constraint text (JSON schema, regex, grammar) accepted
    cache_size: int = 128  # compiled grammars kept, least recently used dropped beyond this
    max_depth: int = 32  # deepest nesting of a JSON schema's own JSON (objects and arrays)
    # llguidance's parser fuel per grammar build and per mask step: a pathological grammar
    # fails (INVALID_ARGUMENT at admission, or its request at the step) instead of stalling
    # the batch. Its defaults: 1_000_000 and 200_000 (~20 ms and ~14 ms of work).
    initial_lexer_fuel: int = 1_000_000
    step_lexer_fuel: int = 200_000
    # Admission compiles a constraint off the event loop (`constraints.Compiler`); past this
    # bound the request is INVALID_ARGUMENT, so a schema that compiles slowly (fuel spent in
    # steps the lexer fuel does not meter) cannot hold its caller, or anyone else, for long.
    compile_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        check(self.max_bytes >= 1, "max_bytes", "must be >= 1")
        check(self.cache_size >= 1, "cache_size", "must be >= 1")
        check(self.max_depth >= 1, "max_depth", "must be >= 1")
        check(self.initial_lexer_fuel >= 1, "initial_lexer_fuel", "must be >= 1")
        check(self.step_lexer_fuel >= 1, "step_lexer_fuel", "must be >= 1")
        check(self.compile_timeout_s > 0, "compile_timeout_s", "must be > 0")


@dataclass(frozen=True)
class LLMConfig:
    name: str = "galactic-demo"  # model name clients address
    path: str = "embedded"  # a local Hugging Face causal-LM dir, or "embedded" for the shipped demo model
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto => cuda when available (device_map="auto")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto => bf16 on CUDA, fp32 on CPU
    quantization: Literal["none", "int8", "nf4", "int8-dynamic"] = "none"  # int8/nf4: bitsandbytes, CUDA; int8-dynamic: CPU
    # Attention kernel: auto = eager on CUDA (SDPA given a padding mask was ~4x slower there,
    # and the running batch always carries a mask), sdpa on CPU (as fast, matches generate()).
    attention: Literal["auto", "sdpa", "eager"] = "auto"
    trust_remote_code: bool = False  # run Python shipped with the model dir; only for dirs you trust
    # "decode": decode-only steps run with static shapes (rows padded to batch buckets, the
    # KV cache allocated once at its maximum) through torch.compile, with CUDA graphs on a
    # GPU (mode reduce-overhead), warmed at every bucket before ready (slow start-up; needs
    # kv_cache = "static"; layouts.DecodeGraphLayout). Steps that prefill stay eager. On the
    # CPU keep "off": compiling does not pay there (benchmarks/results/HISTORY.md).
    compile: Literal["off", "decode"] = "off"
    # KV cache layout: "static" = one slot per request and one forward per step, decode rows
    # and prompt chunks together (layouts.SlotLayout); "dynamic" = a padded DynamicCache,
    # a decode forward then separate prefill forwards (layouts.PaddedLayout), for models whose
    # attention does not go through transformers' attention interface.
    kv_cache: Literal["static", "dynamic"] = "static"
    # "process": the model, its LoRA bank and the step runner live in a child process and
    # the daemon's process keeps the scheduler, detokenizer and gRPC (engines/llm/process.py:
    # the forward no longer waits for the GIL behind the event loop). "thread": all in the
    # daemon's process, on the engine's worker thread (faster start-up; what unit tests use).
    runner: Literal["process", "thread"] = "process"
    # With runner = "process": plan and send step k+1 before applying step k's tokens, so
    # the forward never waits for the daemon's output handling (detokenizing, stop strings,
    # streams); a request that ends on EOS or a stop string is computed once more for nobody.
    # auto = on when the model runs on CUDA, where the forward leaves the CPU idle (the
    # overlap schedulers of TensorRT-LLM and vLLM, on by default there); off on the CPU,
    # where the forward uses every core and overlapping measured a loss (HISTORY.md).
    # The thread runner runs the forward on the engine's own thread: nothing to overlap
    # ("on" is refused there; "auto" is off).
    overlap_steps: Literal["auto", "on", "off"] = "auto"
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    adapters: AdapterConfig = field(default_factory=AdapterConfig)
    # Used by the static KV layouts (kv_cache = "static", with or without compile); the
    # padded layout has no per-request slot to copy a prefix into: there it is off.
    prefix_cache: PrefixCacheConfig = field(default_factory=PrefixCacheConfig)
    constraints: ConstraintConfig = field(default_factory=ConstraintConfig)

    @property
    def prefix_caching(self) -> bool:
        """Whether prompts are looked up in and added to the prefix cache."""
        pc = self.prefix_cache
        return pc.enabled and self.kv_cache == "static" and pc.max_tokens >= pc.block_tokens

    def __post_init__(self) -> None:
        check(bool(self.name.strip()), "name", "must be non-empty")
        check(bool(self.path.strip()), "path", "must be a model dir or 'embedded'")
        check(
            not (self.quantization == "int8-dynamic" and self.device == "cuda"),
            "quantization",
            "int8-dynamic is a CPU path (torch dynamic quantization); on CUDA choose 'int8' or 'nf4'",
        )
        check(
            not (self.quantization in ("int8", "nf4") and self.device == "cpu"),
            "quantization",
            f"{self.quantization} (bitsandbytes) needs CUDA; on the CPU choose 'int8-dynamic' or 'none'",
        )
        check(not (self.overlap_steps == "on" and self.runner != "process"), "overlap_steps",
              "'on' overlaps the model process's forward with the daemon's output work; it needs runner = \"process\"")
        check(not (self.compile == "decode" and self.kv_cache != "static"), "compile",
              "'decode' compiles the static KV layout's decode step; it needs kv_cache = \"static\"")


DEFAULT_TOML = """\
[llm]
name = "galactic-demo"            # model name clients address
path = "embedded"                 # local Hugging Face causal-LM dir, or "embedded" (the demo model shipped with the engine)
device = "auto"                   # auto | cpu | cuda   (auto => cuda when available, device_map="auto" across GPUs)
dtype = "auto"                    # auto | float32 | bfloat16 | float16   (auto => bf16 on CUDA, fp32 on CPU)
quantization = "none"             # none | int8 | nf4 (bitsandbytes, CUDA only) | int8-dynamic (CPU only)
attention = "auto"                # auto | sdpa | eager   (auto => eager on CUDA: SDPA with a padding mask is ~4x slower there)
trust_remote_code = false         # run Python shipped with the model dir; only for dirs you trust
compile = "off"                   # off | decode (torch.compile + CUDA graphs for decode steps, warmed before ready)
kv_cache = "static"               # static (one forward per step: decode rows + prompt chunks) | dynamic (padded cache)
runner = "process"                # process (the model in a child process, free of the front end's GIL) | thread
overlap_steps = "auto"            # auto | on | off: process runner sends step k+1 before applying step k (auto => on with CUDA)

[llm.scheduler]
max_running = 32                  # requests in the running batch at once
max_batch_tokens = 16384          # sum of prompt + max_new_tokens over running requests (reserved on admission)
max_waiting = 256                 # bounded waiting queue; beyond it requests fail with RESOURCE_EXHAUSTED
prefill_chunk_tokens = 2048       # at most this many prompt tokens prefilled per step (all of a step when few or none decode)
max_step_tokens = 0               # per step while streams decode: their rows + prompt tokens (0 = 2 x max_running); lower = smoother ITL, slower burst TTFT (GPU: 512+)
burst_stall_fraction = 0.125      # with at most this share of max_running decoding, a step may prefill prefill_chunk_tokens (0 = only with none)
priority_aging_s = 10.0           # a waiting request gains +1 priority per this many seconds waited
max_prompt_tokens = 4096          # longer prompts are rejected (INVALID_ARGUMENT on `prompt`)
max_new_tokens_limit = 4096       # largest sampling.max_new_tokens accepted

[llm.adapters]
root = "~/.local/share/galactic/adapters"  # LoadAdapter paths must be relative to or inside this dir
max_loaded = 8                    # resident adapters; idle unpinned ones are evicted least-recently-used beyond this
on_demand = true                  # a request naming an unloaded adapter loads root/<name> on first use (LoadAdapter pins)
negative_cache_s = 10.0           # a failed on-demand load answers with its error this long before it is retried
# preload = { support = "support-v3" }     # name -> path, loaded at start-up
require_metadata = false          # refuse adapters without galactic_adapter.json (base model unverifiable)

[llm.prefix_cache]
enabled = true                    # reuse prompt KV across requests with the same adapter (kv_cache = "static" only)
max_tokens = 8192                 # prompt tokens kept for reuse; least recently used blocks are evicted beyond it
block_tokens = 16                 # prompts are cached in full blocks of this many tokens

[llm.constraints]
max_bytes = 65536                 # longest constraint (JSON schema, regex, grammar) a request may send
cache_size = 128                  # compiled grammars kept (LRU by the constraint's hash)
max_depth = 32                    # deepest nesting of a JSON schema (objects and arrays)
initial_lexer_fuel = 1000000      # llguidance fuel to build a grammar's lexer (bounds compile time)
step_lexer_fuel = 200000          # llguidance fuel per mask step (bounds a step's mask time)
compile_timeout_s = 5.0           # a constraint compiling longer is INVALID_ARGUMENT (compiles run off the event loop)
"""
