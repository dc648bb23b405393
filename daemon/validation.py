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
from operator import attrgetter
from typing import Any, Mapping

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
    ("Constraint", "json_schema"): "constraint",
    ("Constraint", "regex"): "constraint",
    ("Constraint", "grammar"): "constraint",
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
    # KServe v2 / Open Inference Protocol (package inference)
    ("ModelReadyRequest", "name"): "name",
    ("ModelMetadataRequest", "name"): "name",
    ("ModelInferRequest", "model_name"): "name",
    ("ModelInferRequest", "inputs"): "tensors",
    ("ModelInferRequest", "outputs"): "tensors",
    ("ModelInferRequest", "raw_input_contents"): "tensors",
    ("InferInputTensor", "name"): "name",
    ("InferInputTensor", "shape"): "dims",
    ("InferRequestedOutputTensor", "name"): "name",
    **{("InferTensorContents", f"{kind}_contents"): "elements"
       for kind in ("bool", "int", "int64", "uint", "uint64", "fp32", "fp64", "bytes")},
}


@dataclass(frozen=True)
class _Field:
    name: str
    string: bool  # a string (or repeated strings)
    repeated: bool
    message: bool  # a message (or repeated messages): recurse
    kind: str | None
    limit: int  # characters of a string, entries of a repeated field
    item_limit: int  # characters of each entry of a repeated string field
    # Repeated messages whose only bounded fields are plain strings (Target: its id): those
    # strings' names and limits, checked in one pass over the list instead of per message.
    flat: tuple[tuple[str, int], ...] | None = None


class _Bad(Exception):
    """A bound broken at a path relative to the message being checked; the callers above
    prepend their part of the path on the way out. Paths are built only for a failure: a
    10,000-target request would otherwise format 10,000 of them to check 10,000 ids."""

    def __init__(self, message: str, path: str) -> None:
        self.message, self.path = message, path


class Bounds:
    """Checks protobuf requests against `LimitsConfig`; raises InvalidArgument naming the field."""

    def __init__(self, limits: LimitsConfig, counts: Mapping[str, int] | None = None) -> None:
        self.limits = limits
        # Bounds on repeated fields that an engine's own config sets (the coordination
        # engine's targets and observatories per request): one source for each bound.
        self._counts = dict(counts or {})
        self._plans: dict[str, tuple[_Field, ...]] = {}
        self._building: set[str] = set()

    def check(self, msg: Any, prefix: str = "") -> None:
        """Raise InvalidArgument for the first field of `msg` past its bound (in field order).

        `prefix` is the path of `msg` inside the frame the client sent ("submit.request"),
        so the error names the field as the client wrote it.
        """
        try:
            self._check(msg)
        except _Bad as bad:
            raise InvalidArgument(bad.message, field=f"{prefix}.{bad.path}" if prefix else bad.path) from None

    def check_value(self, value: Any, kind: str, field: str) -> None:
        """One value of a request that is not protobuf (the OpenAI JSON front end) against
        the bound of `kind` ("name", "prompt", "stop", "messages", ...): a string's
        characters, or a list's entries and each string entry's characters. Raises
        InvalidArgument naming `field`, with the same limits and messages as `check`."""
        try:
            if isinstance(value, str):
                self._check_string(value, kind, self._string_limit(kind), field)
            else:
                limit = self._count_limit(kind)
                if len(value) > limit:
                    raise _Bad(f"{len(value)} entries exceed the limit of {limit}", field)
                for i, item in enumerate(value):
                    if isinstance(item, str):
                        self._check_string(item, kind, self._string_limit(kind), f"{field}[{i}]")
        except _Bad as bad:
            raise InvalidArgument(bad.message, field=bad.path) from None

    def _check(self, msg: Any) -> None:
        for f in self._plan(msg.DESCRIPTOR):
            if f.repeated:
                value = getattr(msg, f.name)
                if not value:
                    continue
                if len(value) > f.limit:
                    raise _Bad(f"{len(value)} entries exceed the limit of {f.limit}", f.name)
                if f.string:
                    for i, item in enumerate(value):
                        if len(item) > f.item_limit or f.kind == "name":
                            self._check_string(item, f.kind, f.item_limit, f"{f.name}[{i}]")
                elif f.flat is not None:
                    for name, limit in f.flat:
                        if max(map(len, map(attrgetter(name), value))) > limit:  # in C: no loop in Python
                            i = next(i for i, item in enumerate(value) if len(getattr(item, name)) > limit)
                            n = len(getattr(value[i], name))
                            raise _Bad(f"{n} characters exceed the limit of {limit}", f"{f.name}[{i}].{name}")
                elif f.message:
                    for i, item in enumerate(value):
                        try:
                            self._check(item)
                        except _Bad as bad:
                            raise _Bad(bad.message, f"{f.name}[{i}].{bad.path}") from None
            elif f.string:
                value = getattr(msg, f.name)
                if value:
                    self._check_string(value, f.kind, f.limit, f.name)
            elif f.message and msg.HasField(f.name):
                try:
                    self._check(getattr(msg, f.name))
                except _Bad as bad:
                    raise _Bad(bad.message, f"{f.name}.{bad.path}") from None

    def _check_string(self, value: str, kind: str | None, limit: int, path: str) -> None:
        if len(value) > limit:
            raise _Bad(f"{len(value)} characters exceed the limit of {limit}", path)
        if kind == "name" and value and not NAME_PATTERN.fullmatch(value):
            raise _Bad(f"{shorten(value, self.limits.max_echo_chars)!r} is not a valid name (use {NAME_CHARSET})", path)

    def _string_limit(self, kind: str | None) -> int:
        lim = self.limits
        return {"name": lim.max_name_chars, "prompt": lim.max_prompt_chars, "stop": lim.max_stop_chars,
                "constraint": lim.max_constraint_chars,
                "path": lim.max_path_chars}.get(kind or "", lim.max_id_chars)

    def _count_limit(self, kind: str | None) -> int:
        lim = self.limits
        return {"messages": lim.max_messages, "stop": lim.max_stop_strings, "tensors": lim.max_tensors,
                "dims": lim.max_tensor_dims, "elements": lim.max_tensor_elements,
                **self._counts}.get(kind or "", lim.max_repeated)

    def _plan(self, desc: Descriptor) -> tuple[_Field, ...]:
        """What to check in a message type, in field order; fields that can break no bound
        (scalars other than strings) are left out."""
        plan = self._plans.get(desc.full_name)
        if plan is None:
            self._building.add(desc.full_name)  # a message type that contains itself: no flat pass
            fields = []
            for fd in desc.fields:
                kind = RULES.get((desc.name, fd.name))
                string = fd.type == FieldDescriptor.TYPE_STRING
                repeated = _is_repeated(fd)
                message = fd.type == FieldDescriptor.TYPE_MESSAGE and not _is_map(fd)
                if not (string or repeated or message):
                    continue
                flat = None
                if message and fd.message_type.full_name not in self._building:
                    child = self._plan(fd.message_type)
                    if not repeated and not child:
                        continue  # e.g. Observatory.forecast: only numbers inside, nothing to check
                    if repeated and all(c.string and not c.repeated and c.kind != "name" for c in child):
                        flat = tuple((c.name, c.limit) for c in child)
                fields.append(_Field(name=fd.name, string=string, repeated=repeated, message=message, kind=kind,
                                     limit=self._count_limit(kind) if repeated else self._string_limit(kind),
                                     item_limit=self._string_limit(kind), flat=flat))
            plan = self._plans[desc.full_name] = tuple(fields)
            self._building.discard(desc.full_name)
        return plan


def _is_repeated(fd: FieldDescriptor) -> bool:
    # protobuf >= 5 has `is_repeated`; `label` is deprecated there.
    flag = getattr(fd, "is_repeated", None)
    return flag if isinstance(flag, bool) else fd.label == FieldDescriptor.LABEL_REPEATED


def _is_map(fd: FieldDescriptor) -> bool:
    return fd.message_type is not None and fd.message_type.GetOptions().map_entry
