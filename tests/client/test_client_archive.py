"""Tombstones name their replacement; the client installs and imports without torch."""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "module, replacement",
    [
        ("archive.galactic_research_network_legacy", "Coordination service"),
        ("archive.peft_llm_integration_legacy", "Generation service"),
    ],
)
def test_tombstone_import_names_the_replacement(module, replacement, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    with pytest.raises(ImportError, match=replacement) as info:
        importlib.import_module(module)
    assert "galactic_client" in str(info.value) and "MIGRATION.md" in str(info.value)


def test_client_imports_without_torch_or_numpy():
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['numpy'] = None; "
        "import galactic_client, galactic_client.cli; "
        "assert 'torch' not in {m for m in sys.modules if sys.modules[m] is not None}"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "clients" / "python")])}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
