"""Paths that requests name (adapter dirs, checkpoints) resolved inside a configured root.

A request's path is untrusted: it is resolved (`..` and symlinks followed) before the check,
so neither can lead outside the root; relative paths are taken from the root.
"""

from __future__ import annotations

from pathlib import Path

from engines.errors import InvalidArgument, PermissionDenied


def confine(path: str, root: Path, what: str, field: str = "path") -> Path:
    """`path` resolved, if it lies inside `root` (resolved here too: `~` and symlinks in a
    configured root are fine); PermissionDenied naming `field` otherwise, InvalidArgument
    for a path the OS cannot take (a NUL byte, too long)."""
    root = root.expanduser().resolve()
    try:
        p = Path(path).expanduser()
        full = (p if p.is_absolute() else root / p).resolve()
    except (ValueError, OSError) as exc:
        raise InvalidArgument(f"not a usable path: {exc}", field=field) from None
    if not full.is_relative_to(root):
        raise PermissionDenied(f"{path} is outside the {what} root {root}", field=field)
    return full
