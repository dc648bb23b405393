"""`galactic-train`: one command line for every training job.

Each area registers its own subcommands (`training/llm/cli.py`, `training/coordination/cli.py`);
this module only assembles them, so adding a job never touches a central if/elif.
"""

from __future__ import annotations

import argparse
import importlib
import sys

AREAS = ("training.llm.cli", "training.coordination.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="galactic-train", description="train and export galactic models")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in AREAS:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Each subcommand sets `func` with set_defaults; it returns an exit code.
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
