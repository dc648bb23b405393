"""Engine kinds the daemon can serve: a small mapping, not an if/elif ladder.

Each kind names its typed config class and its engine class by import path, so a config
can be validated without importing torch, and an engine's heavy imports happen only when
that engine is enabled. Adding a kind is one entry here plus its section in default.toml.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


def _resolve(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class EngineKind:
    config_path: str  # "module:Class" of the frozen config dataclass
    engine_path: str  # "module:Class" taking that config

    def config_class(self) -> type:
        return _resolve(self.config_path)

    def default_toml(self) -> str:
        """The commented `[kind]` table of defaults, from the config class's module."""
        module = importlib.import_module(self.config_path.partition(":")[0])
        return module.DEFAULT_TOML

    def engine_class(self) -> type:
        return _resolve(self.engine_path)


KINDS: dict[str, EngineKind] = {
    "llm": EngineKind("engines.llm.config:LLMConfig", "engines.llm.engine:LLMEngine"),
    "coordination": EngineKind(
        "engines.coordination.config:CoordinationConfig",
        "engines.coordination.engine:CoordinationEngine",
    ),
}
