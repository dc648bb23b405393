"""`galactic`: command line for the galactic daemon, on top of the blocking `Client`.

    galactic [--target HOST:PORT] [--timeout S] COMMAND ...

The target defaults to $GALACTIC_TARGET, else 127.0.0.1:50051. An RPC failure prints
`error: CODE: message` to stderr and exits with 10 + the gRPC status code (e.g. 13 for
INVALID_ARGUMENT, 24 for UNAVAILABLE); a local problem (bad file, bad tensor) exits 1;
usage errors exit 2 (argparse).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from .aio import DEFAULT_TARGET, Chunk
from .errors import GalacticError
from .sync import Client

EXIT_LOCAL_ERROR = 1
EXIT_RPC_BASE = 10


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="galactic", description="Call a galactic daemon.")
    parser.add_argument("--target", help=f"host:port, a comma-separated list, or dns:///name:port "
                        f"(default: $GALACTIC_TARGET or {DEFAULT_TARGET})")
    parser.add_argument("--timeout", type=float, default=30.0, help="deadline of each call in seconds (default 30)")
    parser.add_argument("--token", help="bearer token for a daemon with security.api_keys_file (or GALACTIC_TOKEN)")
    parser.add_argument("--tls-ca", metavar="PEM", help="CA bundle to verify a daemon serving TLS (enables TLS)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    health = commands.add_parser("health", help="grpc.health.v1 status")
    health.add_argument("--service", default="", help='service name ("" is the whole daemon)')
    health.set_defaults(run=_health)

    generate = commands.add_parser("generate", help="stream text for a prompt")
    generate.add_argument("prompt")
    generate.add_argument("--model", default="")
    generate.add_argument("--adapter")
    generate.add_argument("--max-new-tokens", type=int)
    generate.add_argument("--temperature", type=float)
    generate.add_argument("--top-k", type=int)
    generate.add_argument("--top-p", type=float)
    generate.add_argument("--seed", type=int)
    generate.add_argument("--stop", action="append", default=[], help="stop sequence (repeatable)")
    shape = generate.add_mutually_exclusive_group()
    shape.add_argument("--json-schema", metavar="FILE", help="the answer is JSON valid under this JSON Schema file")
    shape.add_argument("--json-object", action="store_true", help="the answer is a JSON object")
    shape.add_argument("--regex", help="the answer matches this regular expression in full")
    generate.set_defaults(run=_generate)

    infer = commands.add_parser("infer", help="run a tensor model on .npy inputs")
    infer.add_argument("model")
    infer.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy", required=True)
    infer.add_argument("--version", default="")
    infer.add_argument("--json", action="store_true", help="print outputs as JSON")
    infer.set_defaults(run=_infer)

    adapters = commands.add_parser("adapters", help="list, load or unload LoRA adapters")
    adapters.add_argument("--model", default="", help="base model (default: the only or first LLM)")
    actions = adapters.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list").set_defaults(run=_adapters_list)
    load = actions.add_parser("load")
    load.add_argument("name")
    load.add_argument("path", help="adapter directory, under the daemon's adapter root")
    load.set_defaults(run=_adapters_load)
    unload = actions.add_parser("unload")
    unload.add_argument("name")
    unload.add_argument("--force", action="store_true", help="cancel requests using it")
    unload.set_defaults(run=_adapters_unload)

    models = commands.add_parser("models", help="served models; `models reload NAME PATH` swaps a checkpoint")
    models.set_defaults(run=_models)
    model_actions = models.add_subparsers(dest="action", metavar="ACTION")
    model_actions.add_parser("list").set_defaults(run=_models)
    reload = model_actions.add_parser("reload", help="load a new checkpoint without a restart (admin)")
    reload.add_argument("name", help='model name, e.g. "coordination"')
    reload.add_argument("path", help="checkpoint path on the daemon's host (.safetensors, .json beside it)")
    reload.set_defaults(run=_models_reload)
    commands.add_parser("stats", help="daemon and engine counters").set_defaults(run=_stats)

    coordinate = commands.add_parser("coordinate", help="send a CoordinateRequest (proto JSON), or --follow a "
                                     "stream of alert events")
    coordinate.add_argument("file", nargs="?", default="-",
                            help="JSON file of a CoordinateRequest, or with --follow of PlanEvents, one per line "
                                 "('-' or omitted: stdin)")
    coordinate.add_argument("--table", action="store_true", help="print field: value lines instead of JSON")
    coordinate.add_argument("--follow", action="store_true",
                            help="PlanStream: read events as JSON lines, print each new plan as a JSON line")
    coordinate.set_defaults(run=_coordinate)
    return parser


def _out(text: str = "") -> None:
    print(text, file=sys.stdout)


def _health(client: Client, args) -> int:
    status = client.health(args.service)
    _out(status)
    return 0 if status == "SERVING" else EXIT_LOCAL_ERROR


def _generate(client: Client, args) -> int:
    final = None
    for item in client.generate(
        args.prompt,
        model=args.model,
        adapter=args.adapter,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop=args.stop,
        json_schema=Path(args.json_schema).read_text() if args.json_schema else None,
        json_object=args.json_object,
        regex=args.regex,
    ):
        if isinstance(item, Chunk):
            sys.stdout.write(item.text)
            sys.stdout.flush()
        else:
            final = item
    sys.stdout.write("\n")
    if final is not None:
        print(
            f"[{final.finish_reason}] prompt={final.prompt_tokens} cached={final.cached_prompt_tokens} "
            f"completion={final.completion_tokens} "
            f"queue={final.queue_ms:.1f}ms ttft={final.ttft_ms:.1f}ms total={final.total_ms:.1f}ms",
            file=sys.stderr,
        )
    return 0


def _infer(client: Client, args) -> int:
    import numpy as np

    inputs = {}
    for spec in args.input:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise _LocalError(f"--input {spec!r}: expected NAME=FILE.npy")
        inputs[name] = np.load(path, allow_pickle=False)  # never unpickle a data file
    outputs = client.infer(args.model, inputs, version=args.version)
    if args.json:
        _out(json.dumps(
            {name: {"dtype": str(a.dtype), "shape": list(a.shape), "data": a.tolist()} for name, a in outputs.items()},
            indent=2,
        ))
    else:
        for name, array in outputs.items():
            _out(f"{name}: {array.dtype} {list(array.shape)}")
            _out(np.array2string(array, threshold=200))
    return 0


def _table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        _out("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())


def _adapters_list(client: Client, args) -> int:
    """Loaded adapters (STATE pinned: by LoadAdapter; loaded: on demand, evictable), then
    those a request would load on demand (resolvable)."""
    listing = client.adapter_listing(model=args.model)
    rows = [[a.name, a.model, "pinned" if a.pinned else "loaded", str(a.rank), str(a.in_use), a.path]
            for a in listing.adapters]
    rows += [[name, listing.model, "resolvable", "", "", ""] for name in listing.resolvable]
    _table(rows, ["NAME", "MODEL", "STATE", "RANK", "IN_USE", "PATH"])
    return 0


def _adapters_load(client: Client, args) -> int:
    info = client.load_adapter(args.name, args.path, model=args.model)
    _out(f"loaded {info.name} (rank {info.rank}) on {info.model or 'default model'} from {info.path}")
    return 0


def _adapters_unload(client: Client, args) -> int:
    client.unload_adapter(args.name, model=args.model, force=args.force)
    _out(f"unloaded {args.name}")
    return 0


def _models(client: Client, args) -> int:
    from galactic.v1 import admin_pb2

    rows = [
        [m.name, m.kind, m.version, admin_pb2.ModelState.Name(m.state), m.device, f"{m.parameters:,}"]
        for m in client.list_models()
    ]
    _table(rows, ["NAME", "KIND", "VERSION", "STATE", "DEVICE", "PARAMETERS"])
    return 0


def _models_reload(client: Client, args) -> int:
    info = client.reload_model(args.name, args.path)
    _out(f"reloaded {info.name}: version {info.version}")
    return 0


def _stats(client: Client, args) -> int:
    stats = client.stats()
    _out(f"uptime_s   {stats.uptime_s:.1f}")
    _out(f"in_flight  {stats.in_flight}")
    for model in sorted(stats.models):
        _out(f"{model}:")
        values = stats.models[model].values
        for name in sorted(values):
            _out(f"  {name}  {values[name]:g}")
    return 0


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        return [pair for key, item in value.items() for pair in _flatten(item, f"{prefix}.{key}" if prefix else key)]
    if isinstance(value, list):
        return [pair for i, item in enumerate(value) for pair in _flatten(item, f"{prefix}[{i}]")]
    return [(prefix, value)]


def _follow(client: Client, args) -> int:
    """`coordinate --follow`: PlanEvent JSON lines in (the first must be `open`), PlanFrame
    JSON lines out, one per plan or refused event. A refused event is reported and the
    stream goes on; a line that is not a PlanEvent is a local error (exit 1). Frames are
    printed by a second thread as they arrive, so a plan shows while input is still open."""
    import threading

    coordination_pb2 = importlib.import_module("galactic.v1.coordination_pb2")
    source = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")  # noqa: SIM115

    def parse(number: int, line: str):
        try:
            event = json_format.ParseDict(json.loads(line), coordination_pb2.PlanEvent())
        except (ValueError, json_format.ParseError) as exc:
            raise _LocalError(f"{args.file}:{number}: {exc}") from None
        if event.HasField("open") and not event.open.protocol_version:
            event.open.protocol_version = coordination_pb2.PLAN_PROTOCOL_VERSION
        return event

    with source:
        lines = ((n, line) for n, line in enumerate(source, 1) if line.strip())
        first = next(lines, None)
        if first is None:
            raise _LocalError(f"{args.file}: no events")
        opening = parse(*first)
        if not opening.HasField("open"):
            raise _LocalError(f"{args.file}:{first[0]}: the first event must be `open`")
        failure: list[GalacticError] = []
        with client.plan_stream(opening.open) as plan:
            def show() -> None:
                try:
                    while (frame := plan.next_frame()) is not None:
                        _out(json.dumps(json_format.MessageToDict(frame, preserving_proto_field_name=True)))
                        sys.stdout.flush()
                except GalacticError as exc:  # the whole stream failed: main() reports it
                    failure.append(exc)

            printer = threading.Thread(target=show, name="galactic-follow", daemon=True)
            printer.start()
            for number, line in lines:
                if failure:
                    break
                plan.send(parse(number, line))
            plan.close()  # half-close: the daemon plans what is pending, then ends the stream
            printer.join()
    if failure:
        raise failure[0]
    return 0


def _coordinate(client: Client, args) -> int:
    if args.follow:
        return _follow(client, args)
    coordination_pb2 = importlib.import_module("galactic.v1.coordination_pb2")
    try:
        text = sys.stdin.read() if args.file == "-" else open(args.file, encoding="utf-8").read()
        request = json_format.ParseDict(json.loads(text), coordination_pb2.CoordinateRequest())
    except (OSError, ValueError, json_format.ParseError) as exc:
        raise _LocalError(f"{args.file}: {exc}") from None
    response = json_format.MessageToDict(client.coordinate(request), preserving_proto_field_name=True)
    if args.table:
        for key, value in _flatten(response):
            _out(f"{key}: {value}")
    else:
        _out(json.dumps(response, indent=2))
    return 0


class _LocalError(Exception):
    """A problem on this side (a bad argument or file): exit 1, no RPC involved."""


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    target = args.target or os.environ.get("GALACTIC_TARGET") or DEFAULT_TARGET
    token = args.token or os.environ.get("GALACTIC_TOKEN")
    metadata = [("authorization", f"Bearer {token}")] if token else []
    try:
        credentials = grpc.ssl_channel_credentials(Path(args.tls_ca).read_bytes()) if args.tls_ca else None
        with Client(target, timeout=args.timeout, metadata=metadata, credentials=credentials) as client:
            return args.run(client, args)
    except GalacticError as exc:
        print(f"error: {exc.code.name}: {exc.details}", file=sys.stderr)
        return EXIT_RPC_BASE + exc.code.value[0]
    except (_LocalError, ValueError, OSError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_LOCAL_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
