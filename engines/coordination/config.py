"""Typed, frozen configuration of the coordination engine (the `[coordination]` table)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from engines.config import check


@dataclass(frozen=True)
class BatchingConfig:
    enabled: bool = True  # False: every request is its own batch (max_batch_size 1)
    max_batch_size: int = 64  # requests per model step
    max_batch_pairs: int = 400_000  # (target, site) rows per model step, the "token" budget
    max_queue_delay_ms: float = 2.0  # how long the first request waits for company
    # Queued (target, site) pairs at which a step starts at once: a request this big fills a
    # step on its own (a 1,000 x 12 call is 12,000), so waiting for company only adds latency.
    preferred_batch_pairs: int = 4096
    max_queue: int = 1024  # pending requests beyond this get RESOURCE_EXHAUSTED

    def __post_init__(self) -> None:
        check(self.max_batch_size >= 1, "max_batch_size", "must be >= 1")
        check(self.max_batch_pairs >= 1, "max_batch_pairs", "must be >= 1")
        check(self.max_queue_delay_ms >= 0, "max_queue_delay_ms", "must be >= 0")
        check(self.preferred_batch_pairs >= 1, "preferred_batch_pairs", "must be >= 1")
        check(self.max_queue >= 1, "max_queue", "must be >= 1")


@dataclass(frozen=True)
class StreamsConfig:
    """Bounds and timing of Coordination.PlanStream (the stateful plan per stream)."""

    max_streams: int = 64  # open PlanStreams per model; more get RESOURCE_EXHAUSTED
    max_targets: int = 10_000  # targets one stream may hold; more get RESOURCE_EXHAUSTED
    # Default burst window. 0: an alert into an idle stream is planned at once; events that
    # arrive while a plan is being made share the next plan anyway, so bursts under load
    # still coalesce. A client whose bursts arrive spread out asks for a window (PlanOpen).
    coalesce_ms: float = 0.0
    max_coalesce_ms: float = 1000.0  # the most a client may ask for in PlanOpen.coalesce_ms

    def __post_init__(self) -> None:
        check(self.max_streams >= 1, "max_streams", "must be >= 1")
        check(self.max_targets >= 1, "max_targets", "must be >= 1")
        check(self.max_coalesce_ms >= 0, "max_coalesce_ms", "must be >= 0")
        check(0 <= self.coalesce_ms <= self.max_coalesce_ms, "coalesce_ms", "must be within [0, max_coalesce_ms]")


@dataclass(frozen=True)
class ConstraintsConfig:
    """Hard constraints, applied as masks outside the network."""

    min_altitude_deg: float = 25.0
    max_sun_altitude_deg: float = -12.0  # nautical twilight
    min_moon_separation_deg: float = 15.0

    def __post_init__(self) -> None:
        check(0.0 <= self.min_altitude_deg < 90.0, "min_altitude_deg", "must be within [0, 90)")
        check(-90.0 <= self.max_sun_altitude_deg <= 0.0, "max_sun_altitude_deg", "must be within [-90, 0]")
        check(0.0 <= self.min_moon_separation_deg < 180.0, "min_moon_separation_deg", "must be within [0, 180)")


@dataclass(frozen=True)
class CoordinationConfig:
    name: str = "coordination"
    # (`enabled` in the [coordination] table is the daemon's switch: it never reaches here.)
    # A .safetensors path with its .json config beside it. "embedded" (the model shipped in
    # training/data, reproduced by `galactic-train coordination`) is resolved to its path by
    # the daemon (daemon/shipped.py) before the engine sees it: engines never import training.
    checkpoint: str = "embedded"
    # Admin.ReloadModel paths must lie inside this directory (relative ones are taken from
    # it): a stolen admin token cannot make the daemon open arbitrary files.
    reload_root: Path = Path("~/.local/share/galactic/coordination")
    sites_file: Path | None = None  # None: the shipped training/data/sites.toml
    snr_required: float = 10.0
    # Per request; the daemon refuses a request past them before translating it.
    max_targets: int = 100_000
    max_observatories: int = 64
    # Above this many candidate (target, slot) cells the HiGHS transportation LP replaces
    # linear_sum_assignment, whose cost grows as targets x slots^2.
    lsa_max_cells: int = 60_000
    # The decision rule for urgent targets (time-critical, or due within the window): they are
    # placed ahead of all others, but only at sites where P(success) >= this floor; elsewhere they compete by expected value like any target
    # (engines/coordination/solver.py). Without a
    # floor a calibrated model's P ~ 1e-5 for a hopeless urgent pair outranks an ordinary
    # target at P ~ 0.9. 0 restores "any chance at all goes first".
    urgent_min_p_success: float = 0.05
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    streams: StreamsConfig = field(default_factory=StreamsConfig)
    constraints: ConstraintsConfig = field(default_factory=ConstraintsConfig)

    def __post_init__(self) -> None:
        check(bool(self.name), "name", "must not be empty")
        check(bool(self.checkpoint), "checkpoint", "must be 'embedded' or a path")
        check(self.snr_required > 0, "snr_required", "must be positive")
        check(self.max_targets >= 1, "max_targets", "must be >= 1")
        check(self.max_observatories >= 1, "max_observatories", "must be >= 1")
        check(self.lsa_max_cells >= 1, "lsa_max_cells", "must be >= 1")
        check(0.0 <= self.urgent_min_p_success <= 1.0, "urgent_min_p_success", "must be within [0, 1]")


DEFAULT_TOML = """\
[coordination]
# Galactic coordination: assigns targets to observatory sites for the next window.
name = "coordination"
enabled = true
# "embedded" serves the small model shipped with galactic (training/data/coordination.*),
# which `galactic-train coordination` reproduces; or a path to a .safetensors checkpoint
# whose config .json sits beside it. Only safetensors are loaded, never pickles.
checkpoint = "embedded"
# Admin.ReloadModel (`galactic models reload coordination PATH`) loads only from inside
# this directory; a relative PATH is taken from it.
reload_root = "~/.local/share/galactic/coordination"
# sites_file = "/etc/galactic/sites.toml"   # default: the shipped 13-site table
snr_required = 10.0          # an observation counts as a success at this SNR
max_targets = 100000         # per request
max_observatories = 64       # per request
lsa_max_cells = 60000        # beyond this, the HiGHS transportation LP replaces the Hungarian solver
# Urgent targets (time_critical, or due within the window) go ahead of all others only at
# sites where P(success) reaches this floor; elsewhere they compete by value x P like any
# target, so a hopeless urgent placement never takes an ordinary target's slot.
urgent_min_p_success = 0.05

[coordination.batching]
enabled = true
max_batch_size = 64          # requests per model step
max_batch_pairs = 400000     # (target, site) rows per model step
max_queue_delay_ms = 2.0     # how long a lone request waits for others to share its step
preferred_batch_pairs = 4096 # queued pairs that start a step at once (a big request does not wait)
max_queue = 1024             # more pending requests are refused with RESOURCE_EXHAUSTED

[coordination.streams]
# Coordination.PlanStream: a standing plan per stream, updated by alert events.
max_streams = 64             # open plan streams; more are refused with RESOURCE_EXHAUSTED
max_targets = 10000          # targets one stream may hold; more are refused with RESOURCE_EXHAUSTED
coalesce_ms = 0.0            # events this close together share one plan; 0: plan at once (events during a plan still share the next)
max_coalesce_ms = 1000.0     # the longest window a client may ask for (PlanOpen.coalesce_ms)

[coordination.constraints]
min_altitude_deg = 25.0
max_sun_altitude_deg = -12.0
min_moon_separation_deg = 15.0
"""
