"""`galacticd`: the daemon's command line. The only place that reads argv and the environment.

    galacticd serve [--config FILE] [--listen HOST:PORT]
    galacticd config --print-default
    galacticd config --check FILE
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from engines.config import ConfigError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="galacticd", description="galactic model-serving daemon")
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the configured models until SIGTERM/SIGINT")
    serve.add_argument("--config", type=Path, help="TOML file (default: the embedded default)")
    serve.add_argument("--listen", help="HOST:PORT, overrides server.listen")
    cfg = sub.add_parser("config", help="print or check a configuration")
    group = cfg.add_mutually_exclusive_group(required=True)
    group.add_argument("--print-default", action="store_true", help="write the commented default TOML")
    group.add_argument("--check", type=Path, metavar="FILE", help="validate FILE (and GALACTIC_* overrides)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from daemon import config as config_mod

    if args.command == "config" and args.print_default:
        sys.stdout.write(config_mod.default_toml())
        return 0
    overrides = {"server.listen": args.listen} if getattr(args, "listen", None) else {}
    path = args.check if args.command == "config" else args.config
    try:
        cfg = config_mod.load(path, os.environ, overrides)
    except ConfigError as exc:
        print(f"galacticd: invalid configuration: {exc}", file=sys.stderr)
        return 2
    if args.command == "config":
        print(f"{path}: ok")
        return 0
    return _serve(cfg)


def _serve(cfg) -> int:
    from daemon import telemetry
    from daemon.server import Daemon

    telemetry.configure_logging(cfg.telemetry)
    telemetry.configure_tracing(cfg.telemetry)
    log = telemetry.get_logger()
    if cfg.server.intra_op_threads:
        import torch

        torch.set_num_threads(cfg.server.intra_op_threads)  # process-wide, before any engine loads
    daemon = Daemon(cfg, dict(os.environ))
    try:
        asyncio.run(daemon.serve_until_signal())
    except Exception as exc:  # start-up failure: name it and exit non-zero for systemd
        log.exception("galacticd failed", error=str(exc))
        print(f"galacticd: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
