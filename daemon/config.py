"""The daemon's configuration: one TOML file, `GALACTIC_*` overrides, one frozen object.

Built once in `daemon.main` and passed down; nothing else reads files or the environment.
Sections: `[server]`, `[openai]`, `[telemetry]`, `[security]`, `[limits]`, plus one table per engine kind named in
`daemon/registry.py` (`[llm]`, `[coordination]`), each typed by its engine's own config
class. An engine table with `enabled = false` (or absent) serves nothing.

Environment overrides use a double underscore between levels, e.g.
`GALACTIC_SERVER__LISTEN=0.0.0.0:50051`, `GALACTIC_LLM__SCHEDULER__MAX_RUNNING=64`,
`GALACTIC_COORDINATION__ENABLED=false`. Every error names the dotted key.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Mapping

from engines.config import ConfigError, _parse_scalar, check, from_mapping, replace_path

from daemon import registry
from daemon.tenants import TenantLimits, parse_line

ENV_PREFIX = "GALACTIC_"


@dataclass(frozen=True)
class ServerConfig:
    # host:port to listen on; port 0 picks a free port (tests).
    listen: str = "127.0.0.1:50051"
    # Largest request message accepted. Tensors and 10k-target coordination calls are big;
    # gRPC's own default (4 MiB) is too small for them and silently caps clients.
    max_receive_message_bytes: int = 64 * 1024 * 1024
    # Largest response message sent.
    max_send_message_bytes: int = 64 * 1024 * 1024
    # On SIGTERM/SIGINT: seconds in-flight calls get to finish before they are cancelled.
    grace_period_s: float = 30.0
    # Calls handled at once; more wait in gRPC's queue (0 = unlimited).
    max_concurrent_rpcs: int = 0
    # Seconds between HTTP/2 keepalive pings to clients (detects dead peers on long streams).
    keepalive_time_s: float = 30.0
    # Serve grpc.reflection (lets grpcurl and similar tools list services).
    reflection: bool = True
    # torch's intra-op threads for the whole process (torch.set_num_threads); 0 keeps torch's
    # default, one per core. Process-wide: torch has one pool for every engine. On a host
    # where the event loop, gRPC and other processes share the cores, fewer threads than
    # cores avoids OpenMP workers waiting on a descheduled peer (README, "Measured").
    intra_op_threads: int = 0

    def __post_init__(self) -> None:
        host, sep, port = self.listen.rpartition(":")
        check(bool(sep) and bool(host) and port.isdigit() and int(port) < 65536, "listen",
              f"expected HOST:PORT, got {self.listen!r}")
        check(self.max_receive_message_bytes >= 1024, "max_receive_message_bytes", "must be >= 1024")
        check(self.max_send_message_bytes >= 1024, "max_send_message_bytes", "must be >= 1024")
        check(self.grace_period_s >= 0, "grace_period_s", "must be >= 0")
        check(self.max_concurrent_rpcs >= 0, "max_concurrent_rpcs", "must be >= 0")
        check(self.keepalive_time_s > 0, "keepalive_time_s", "must be > 0")
        check(self.intra_op_threads >= 0, "intra_op_threads", "must be >= 0 (0 = one per core)")


@dataclass(frozen=True)
class OpenAIConfig:
    """The OpenAI-compatible HTTP listener (daemon/openai/), in the daemon's own process and
    event loop, in front of the same engines, tokens and tenants as gRPC; TLS comes from
    `[security]`, the same certificate as gRPC."""

    # Serve /v1/models, /v1/completions and /v1/chat/completions.
    enabled: bool = True
    # host:port to listen on; port 0 picks a free port (tests).
    listen: str = "127.0.0.1:8000"
    # Largest request body accepted; past it, 413 before the body is read.
    max_body_bytes: int = 8 * 1024 * 1024
    # Seconds a client has to send its whole body once its headers arrived; past it, 408
    # (a slow or stalled client holds no handler, tenant slot or drain for longer).
    body_timeout_s: float = 30.0
    # Largest `n` (choices per prompt) times prompts of one request: each is an engine request.
    max_choices: int = 16

    def __post_init__(self) -> None:
        host, sep, port = self.listen.rpartition(":")
        check(bool(sep) and bool(host) and port.isdigit() and int(port) < 65536, "listen",
              f"expected HOST:PORT, got {self.listen!r}")
        check(self.max_body_bytes >= 1024, "max_body_bytes", "must be >= 1024")
        check(self.body_timeout_s > 0, "body_timeout_s", "must be > 0")
        check(self.max_choices >= 1, "max_choices", "must be >= 1")


@dataclass(frozen=True)
class TelemetryConfig:
    # debug | info | warning | error
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # auto = pretty on a terminal, JSON lines otherwise (journald, files).
    log_format: Literal["auto", "json", "console"] = "auto"
    # Where spans go: none, console (stderr), or otlp (gRPC to otlp_endpoint).
    tracing: Literal["none", "console", "otlp"] = "none"
    # OTLP/gRPC collector address, for tracing = "otlp".
    otlp_endpoint: str = "http://127.0.0.1:4317"
    # service.name resource attribute on every span.
    service_name: str = "galacticd"
    # host:port for Prometheus' /metrics; empty disables the HTTP endpoint.
    metrics_listen: str = "127.0.0.1:9464"

    def __post_init__(self) -> None:
        if self.metrics_listen:
            host, sep, port = self.metrics_listen.rpartition(":")
            check(bool(sep) and port.isdigit(), "metrics_listen", f"expected HOST:PORT or empty, got {self.metrics_listen!r}")


@dataclass(frozen=True)
class SecurityConfig:
    # PEM server certificate and key; both empty = plaintext (loopback / inside a mesh).
    tls_cert: str = ""
    tls_key: str = ""
    # PEM CA bundle; when set, clients must present a certificate it signed (mTLS).
    tls_client_ca: str = ""
    # File with one bearer token per line; when set, every call except health must send
    # `authorization: Bearer <token>` (UNAUTHENTICATED otherwise). After a token, optional
    # per-tenant limits (daemon/tenants.py): `tenant=NAME concurrency=N rps=X tokens_per_min=X`.
    api_keys_file: str = ""
    # File of admin tokens; when set, LoadAdapter and UnloadAdapter need one of these
    # (PERMISSION_DENIED otherwise), and an admin token also passes where api keys apply.
    admin_keys_file: str = ""

    def __post_init__(self) -> None:
        check(bool(self.tls_cert) == bool(self.tls_key), "tls_cert",
              "tls_cert and tls_key must be set together")
        check(not self.tls_client_ca or bool(self.tls_cert), "tls_client_ca", "needs tls_cert and tls_key")
        for name in ("tls_cert", "tls_key", "tls_client_ca", "api_keys_file", "admin_keys_file"):
            value = getattr(self, name)
            check(not value or Path(value).is_file(), name, f"no such file: {value}")
        # A key file with no keys must not silently turn authentication off.
        check(not self.api_keys_file or bool(self.api_keys()), "api_keys_file",
              "holds no tokens (blank and # lines only); authentication would be off")
        check(not self.admin_keys_file or bool(self.admin_keys()), "admin_keys_file",
              "holds no tokens (blank and # lines only); admin calls would be refused to everyone")
        self.tenants()  # a bad limit after a token fails here, naming the file's key

    def api_keys(self) -> frozenset[str]:
        """The bearer tokens in api_keys_file, one per line; blank and # lines skipped."""
        return _read_keys(self.api_keys_file)

    def admin_keys(self) -> frozenset[str]:
        return _read_keys(self.admin_keys_file)

    def tenants(self) -> dict[str, tuple[str, TenantLimits]]:
        """token -> (tenant name, its limits), from the lines of api_keys_file."""
        out = {}
        for line in _key_lines(self.api_keys_file):
            token, name, limits = parse_line(line, "api_keys_file")
            out[token] = (name, limits)
        return out


def _key_lines(path: str) -> list[str]:
    if not path:
        return []
    lines = (line.strip() for line in Path(path).read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _read_keys(path: str) -> frozenset[str]:
    # The token is a line's first word; what follows it is per-tenant limits.
    return frozenset(line.split()[0] for line in _key_lines(path))


@dataclass(frozen=True)
class LimitsConfig:
    """Bounds on every string and repeated field of a request, checked by the daemon before
    any filesystem, tokenizer or model work (`daemon/validation.py`). Past one: INVALID_ARGUMENT
    naming the field and the limit."""

    # Model, adapter and tensor names: at most this many characters of [A-Za-z0-9._-],
    # starting with a letter or digit.
    max_name_chars: int = 128
    # Request ids, site and target ids, versions, chat roles.
    max_id_chars: int = 256
    # A prompt, or one chat message's content.
    max_prompt_chars: int = 1_000_000
    # Messages in one chat conversation.
    max_messages: int = 1024
    # Stop strings per request, and characters in each.
    max_stop_strings: int = 16
    max_stop_chars: int = 256
    # A structured-output constraint's text (Constraint.json_schema, .regex, .grammar).
    max_constraint_chars: int = 65536
    # Adapter directory paths (LoadAdapter.path).
    max_path_chars: int = 1024
    # Tensors in one Infer request, dimensions of one, elements of one.
    max_tensors: int = 64
    max_tensor_dims: int = 8
    max_tensor_elements: int = 1 << 28
    # (Targets and observatories per coordination request are the [coordination] table's.)
    # Any other repeated field.
    max_repeated: int = 4096
    # What an error message or a log line quotes from a request is cut to this length.
    max_echo_chars: int = 64

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            check(getattr(self, f.name) >= 1, f.name, "must be >= 1")


@dataclass(frozen=True)
class GalacticConfig:
    server: ServerConfig = field(default_factory=ServerConfig)
    openai: OpenAIConfig = field(default_factory=OpenAIConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    # Engine kind -> that engine's typed, frozen config; only enabled engines appear.
    engines: Mapping[str, Any] = field(default_factory=dict)


# The daemon's own sections (beside one per engine kind).
_SECTIONS = ("server", "openai", "telemetry", "security", "limits")


def default_toml() -> str:
    """The commented default configuration (what `galacticd config --print-default` writes):
    the daemon's own sections, then each engine kind's `DEFAULT_TOML`, kept beside its
    config class so a default and its documentation cannot drift apart."""
    parts = [(Path(__file__).parent / "default.toml").read_text()]
    parts += [kind.default_toml() for kind in registry.KINDS.values()]
    return "\n".join(p.rstrip("\n") + "\n" for p in parts)


def load(path: Path | None = None, env: Mapping[str, str] | None = None,
         overrides: Mapping[str, str] | None = None) -> GalacticConfig:
    """Parse TOML (the embedded default when `path` is None), apply env and CLI overrides.

    Raises ConfigError naming the dotted key at fault.
    """
    if path is None:
        text, origin = default_toml(), "<default>"
    else:
        try:
            text, origin = Path(path).read_text(), str(path)
        except OSError as exc:
            raise ConfigError("", f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"{origin} is not valid TOML: {exc}") from None
    items = _env_items(env or {}) + list((overrides or {}).items())
    # `enabled` is the daemon's switch, not the engine's; apply overrides to it here so an
    # environment variable can turn a whole engine on or off.
    for key, raw in items:
        section, _, rest = key.partition(".")
        if rest == "enabled":
            data.setdefault(section, {})["enabled"] = _parse_scalar(bool, raw, key)
    config = build(data)
    for key, raw in items:
        section, _, rest = key.partition(".")
        if rest == "enabled":
            continue
        if section in config.engines:
            engines = dict(config.engines)
            engines[section] = replace_path(engines[section], rest, raw, f"{section}.") if rest else _fail(key)
            config = replace(config, engines=engines)
        elif section in registry.KINDS:
            continue  # an override for a disabled engine changes nothing
        else:
            config = replace_path(config, key, raw)
    return config


def build(data: Mapping[str, Any]) -> GalacticConfig:
    """Validate a parsed TOML document into GalacticConfig."""
    # `[training]` belongs to galactic-train (training/config.py validates it); one file may
    # configure both, so the daemon passes over it.
    plain = {k: v for k, v in data.items() if k not in registry.KINDS and k != "training"}
    engines: dict[str, Any] = {}
    for kind, table in data.items():
        if kind not in registry.KINDS:
            continue
        if not isinstance(table, dict):
            raise ConfigError(kind, "expected a table")
        table = dict(table)
        enabled = table.pop("enabled", True)
        if not isinstance(enabled, bool):
            raise ConfigError(f"{kind}.enabled", f"expected a boolean, got {enabled!r}")
        if enabled:
            engines[kind] = from_mapping(registry.KINDS[kind].config_class(), table, kind)
    unknown = set(plain) - set(_SECTIONS)
    if unknown:
        known = ", ".join([*_SECTIONS, *registry.KINDS])
        raise ConfigError(sorted(unknown)[0], f"unknown section (known: {known})")
    names: dict[str, str] = {}
    for kind, cfg in engines.items():
        if cfg.name in names:
            raise ConfigError(f"{kind}.name", f"{cfg.name!r} is already the name of the {names[cfg.name]} model")
        names[cfg.name] = kind
    config = from_mapping(GalacticConfig, plain)
    return replace(config, engines=engines)


def _env_items(env: Mapping[str, str]) -> list[tuple[str, str]]:
    items = []
    for name, value in sorted(env.items()):
        if name.startswith(ENV_PREFIX) and "__" in name:
            dotted = name[len(ENV_PREFIX):].lower().replace("__", ".")
            items.append((dotted, value))
    return items


def _fail(key: str) -> Any:
    raise ConfigError(key, "an engine section cannot be replaced whole; set its keys")
