"""The KServe v2 model `<coordination model>-coordinate`: one whole Coordinate step as columns.

`ModelInfer` on the coordination model itself serves its raw scoring tensors (`features`,
`site`), as `Inference.Infer` does. This second model name takes what `Coordinate` takes,
one tensor per field, and answers what `Coordinate` answers, one tensor per field: targets
are rows of the target inputs, observatories rows of the site inputs. The tensors go
straight into the engine's columns (`TargetColumns`) and come back from its result's
columns (`ResultColumns`), through the same `engine.coordinate()` call, batcher,
validation and errors as the native RPC; errors name the input and row
(`inputs[ra_deg][3]`), as this protocol spells fields.

This module knows the model's tensors and the mapping; `kserve.py` reads and writes the
tensors themselves.
"""

from __future__ import annotations

import re

import numpy as np
import torch

from engines.coordination.types import (
    Conditions, CoordinateRequest, CoordinateResult, Observatory, TargetColumns,
)
from engines.errors import GalacticError, InvalidArgument

from daemon.servicers.coordination import REASON_PB, band_index

SUFFIX = "-coordinate"
COORDINATION_SERVICE = "galactic.v1.Coordination"

# name -> (datatype, shape, required). The N rows of the target inputs are the targets, the
# M rows of the site inputs the observatories; -1 is N or M. Optional inputs left out take
# the default `Coordinate` gives an unset field.
SCALARS = {
    "time_unix": ("FP64", (1,), True),  # start of the window, Unix seconds
    "window_s": ("FP64", (1,), False),  # default 3600
    "snr_required": ("FP64", (1,), False),  # default: the model's
}
SITES = {
    "site_id": ("BYTES", (-1,), True),  # UTF-8, names of the site table
    "seeing_arcsec": ("FP64", (-1,), True),  # the forecast
    "cloud_extinction_mag": ("FP64", (-1,), True),
    "humidity_pct": ("FP64", (-1,), True),
    "open": ("BOOL", (-1,), False),  # default true
    "capacity": ("INT64", (-1,), False),  # -1 (or left out): the site table's
}
TARGETS = {
    "target_id": ("BYTES", (-1,), True),  # UTF-8, unique
    "ra_deg": ("FP64", (-1,), True),
    "dec_deg": ("FP64", (-1,), True),
    "magnitude": ("FP64", (-1,), True),
    "band": ("INT32", (-1,), True),  # galactic.v1.Band: 1..6 = u g r i z y
    "exposure_s": ("FP64", (-1,), True),
    "value": ("FP64", (-1,), True),
    "deadline_unix": ("FP64", (-1,), False),  # NaN: no deadline for that row
    "time_critical": ("BOOL", (-1,), False),
}
INPUTS = {**SCALARS, **SITES, **TARGETS}
# K assigned targets in request order, then U unassigned ones (K + U = N).
OUTPUTS = {
    "assignment_target_index": ("INT32", (-1,)),  # (K,) row of the target
    "assignment_site_index": ("INT32", (-1,)),  # (K,) row of the site
    "expected_value": ("FP64", (-1,)),  # (K,) value x p_success
    "p_success": ("FP64", (-1,)),  # (K,)
    "expected_snr": ("FP64", (-1,)),  # (K,)
    "unassigned_target_index": ("INT32", (-1,)),  # (U,)
    "unassigned_reason": ("INT32", (-1,)),  # (U,) galactic.v1.Unassigned.Reason
    "total_expected_value": ("FP64", (1,)),
}

# Engine field -> input: "targets[3].ra_deg" -> "inputs[ra_deg][3]".
_ROW = re.compile(r"^(targets|observatories)\[(\d+)\]\.(?:forecast\.)?(\w+)$")
_WHOLE = {"targets": "inputs[target_id]", "observatories": "inputs[site_id]", "time_unix": "inputs[time_unix]",
          "window_s": "inputs[window_s]", "snr_required": "inputs[snr_required]"}
_RENAMED = {"id": "target_id"}


def model_names(engines) -> dict[str, object]:
    """`<name>-coordinate` -> engine, for every engine that serves Coordinate."""
    return {f"{name}{SUFFIX}": e for name, e in engines.items() if COORDINATION_SERVICE in e.info().services}


def request(values: dict[str, object], request_id: str) -> CoordinateRequest:
    """The engine's request from the decoded inputs (numpy arrays; lists of str for BYTES;
    scalars as one-element arrays). Checks that each group's inputs agree in length."""
    for group, key in ((SITES, "site_id"), (TARGETS, "target_id")):
        n = len(values[key])
        for name in group:
            if name in values and len(values[name]) != n:
                raise InvalidArgument(f"has {len(values[name])} rows; {key} has {n}", field=f"inputs[{name}].shape")
    sites = values["site_id"]
    m = len(sites)
    open_ = values.get("open", np.ones(m, dtype=bool))
    capacity = values.get("capacity", np.full(m, -1, dtype=np.int64))
    seeing, cloud, humidity = (values[k].tolist() for k in ("seeing_arcsec", "cloud_extinction_mag", "humidity_pct"))
    observatories = tuple(
        Observatory(site_id=s, forecast=Conditions(seeing[j], cloud[j], humidity[j]), open=bool(open_[j]),
                    capacity=None if capacity[j] == -1 else int(capacity[j]))
        for j, s in enumerate(sites))
    ids = values["target_id"]
    n = len(ids)
    band = band_index(values["band"])
    due = values.get("deadline_unix", np.full(n, np.nan))
    targets = TargetColumns(
        id=ids, ra_deg=values["ra_deg"], dec_deg=values["dec_deg"], magnitude=values["magnitude"], band=band,
        exposure_s=values["exposure_s"], value=values["value"], deadline_unix=due, has_deadline=~np.isnan(due),
        time_critical=values.get("time_critical", np.zeros(n, dtype=bool)))
    scalar = lambda k: float(values[k][0]) if k in values else None  # noqa: E731
    window = scalar("window_s")
    return CoordinateRequest(time_unix=scalar("time_unix"), observatories=observatories, targets=targets,
                             window_s=3600.0 if window is None else window, snr_required=scalar("snr_required"),
                             request_id=request_id)


def rename(exc: GalacticError) -> GalacticError:
    """The engine's field as this model's input: `targets[3].ra_deg` -> `inputs[ra_deg][3]`."""
    field = exc.field or ""
    if field in _WHOLE:
        exc.field = _WHOLE[field]
    elif (m := _ROW.match(field)) is not None:
        exc.field = f"inputs[{_RENAMED.get(m.group(3), m.group(3))}][{m.group(2)}]"
    return exc


def outputs(result: CoordinateResult) -> dict[str, torch.Tensor]:
    """The result's columns as this model's output tensors."""
    c = result.columns
    i32 = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.int32))  # noqa: E731
    f64 = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))  # noqa: E731
    return {"assignment_target_index": i32(c.assigned), "assignment_site_index": i32(c.site),
            "expected_value": f64(c.expected_value), "p_success": f64(c.p_success),
            "expected_snr": f64(c.expected_snr), "unassigned_target_index": i32(c.unassigned),
            "unassigned_reason": i32(REASON_PB[c.reason]),
            "total_expected_value": f64([result.total_expected_value])}
