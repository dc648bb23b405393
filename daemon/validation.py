"""Bounds on every string and repeated field of a request, checked at the boundary.

The interceptor checks each unary request before its servicer runs; streaming servicers
check each request they take from a stream, so a bad one gets its own error frame. Either
way the check comes before any filesystem, tokenizer or model work: a 100 kB adapter name
is refused here, not by `open()` with "File name too long".

A field's rule comes from its name (`RULES`, keyed by message and field); a string or
repeated field without one still gets the generic bound (`max_id_chars`, `max_repeated`),
so a field added to a proto later is bounded from its first day.

Names (models, adapters, tensors) must match `NAME_PATTERN`: ASCII letters, digits, `.`,
`_` and `-`, starting with a letter or digit, at most `limits.max_name_chars` long. The
character set keeps names safe in paths, metric labels, log lines and error messages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from daemon.config import LimitsConfig
from daemon.errors import shorten
from engines.errors import InvalidArgument

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
NAME_CHARSET = "letters, digits, '.', '_' and '-', starting with a letter or digit"

# (message name, field name) -> kind of string or list. Kinds map to limits in `_limit()`.
RULES: dict[tuple[str, str], str] = {
    ("GenerateRequest", "model"): "name",
    ("GenerateRequest", "adapter"): "name",
    ("GenerateRequest", "prompt"): "prompt",
    ("ChatMessage", "content"): "prompt",
    ("ChatMessages", "messages"): "messages",
    ("StoppingParams", "stop"): "stop",
    ("InferRequest", "model"): "name",
    ("InferRequest", "inputs"): "tensors",
    ("Tensor", "name"): "name",
    ("Tensor", "shape"): "dims",
    ("CoordinateRequest", "model"): "name",
    ("CoordinateRequest", "targets"): "targets",
    ("CoordinateRequest", "observatories"): "observatories",
    ("GetModelRequest", "name"): "name",
    ("LoadAdapterRequest", "model"): "name",
    ("LoadAdapterRequest", "name"): "name",
    ("LoadAdapterRequest", "path"): "path",
    ("UnloadAdapterRequest", "model"): "name",
    ("UnloadAdapterRequest", "name"): "name",
    ("ListAdaptersRequest", "model"): "name",
    ("PlanOpen", "model"): "name",
    ("PlanOpen", "targets"): "targets",
    ("PlanOpen", "observatories"): "observatories",
    ("TargetUpsert", "targets"): "targets",
    ("TargetRetract", "target_ids"): "targets",
    ("ReloadModelRequest", "name"): "name",
    ("ReloadModelRequest", "path"): "path",
}


@dataclass(frozen=True)
class _Field:
    name: str
    string: bool  # a string (or repeated strings)
    repeated: bool
    message: bool  # a message (or repeated messages): recurse
    kind: str | None


class Bounds:
    """Checks protobuf requests against `LimitsConfig`; raises InvalidArgument naming the field."""

    def __init__(self, limits: LimitsConfig) -> None:
        self.limits = limits
        self._plans: dict[str, dict[str, _Field]] = {}

    def check(self, msg: Any, prefix: str = "") -> None:
        """Raise InvalidArgument for the first field of `msg` past its bound.

        `prefix` is the path of `msg` inside the frame the client sent ("submit.request"),
        so the error names the field as the client wrote it.
        """
        plan = self._plan(msg.DESCRIPTOR)
        for fd, value in msg.ListFields():  # set fields only: an empty message costs nothing
            f = plan[fd.name]
            path = f"{prefix}.{f.name}" if prefix else f.name
            if f.repeated:
                limit = self._count_limit(f.kind)
                if len(value) > limit:
                    raise InvalidArgument(f"{len(value)} entries exceed the limit of {limit}", field=path)
                if f.string:
                    for i, item in enumerate(value):
                        self._check_string(item, f.kind, f"{path}[{i}]")
                elif f.message:
                    for i, item in enumerate(value):
                        self.check(item, f"{path}[{i}]")
            elif f.string:
                self._check_string(value, f.kind, path)
            elif f.message:
                self.check(value, path)

    def _check_string(self, value: str, kind: str | None, path: str) -> None:
        limit = self._string_limit(kind)
        if len(value) > limit:
            raise InvalidArgument(f"{len(value)} characters exceed the limit of {limit}", field=path)
        if kind == "name" and value and not NAME_PATTERN.fullmatch(value):
            raise InvalidArgument(f"{shorten(value, self.limits.max_echo_chars)!r} is not a valid name "
                                  f"(use {NAME_CHARSET})", field=path)

    def _string_limit(self, kind: str | None) -> int:
        lim = self.limits
        return {"name": lim.max_name_chars, "prompt": lim.max_prompt_chars, "stop": lim.max_stop_chars,
                "path": lim.max_path_chars}.get(kind or "", lim.max_id_chars)

    def _count_limit(self, kind: str | None) -> int:
        lim = self.limits
        return {"messages": lim.max_messages, "stop": lim.max_stop_strings, "tensors": lim.max_tensors,
                "dims": lim.max_tensor_dims, "targets": lim.max_targets,
                "observatories": lim.max_observatories}.get(kind or "", lim.max_repeated)

    def _plan(self, desc: Descriptor) -> dict[str, _Field]:
        plan = self._plans.get(desc.full_name)
        if plan is None:
            plan = self._plans[desc.full_name] = {
                fd.name: _Field(
                    name=fd.name,
                    string=fd.type == FieldDescriptor.TYPE_STRING,
                    repeated=_is_repeated(fd),
                    message=fd.type == FieldDescriptor.TYPE_MESSAGE and not _is_map(fd),
                    kind=RULES.get((desc.name, fd.name)))
                for fd in desc.fields}
        return plan


def _is_repeated(fd: FieldDescriptor) -> bool:
    # protobuf >= 5 has `is_repeated`; `label` is deprecated there.
    flag = getattr(fd, "is_repeated", None)
    return flag if isinstance(flag, bool) else fd.label == FieldDescriptor.LABEL_REPEATED


def _is_map(fd: FieldDescriptor) -> bool:
    return fd.message_type is not None and fd.message_type.GetOptions().map_entry
