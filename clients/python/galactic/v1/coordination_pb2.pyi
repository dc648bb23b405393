from google.rpc import status_pb2 as _status_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Band(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BAND_UNSPECIFIED: _ClassVar[Band]
    BAND_U: _ClassVar[Band]
    BAND_G: _ClassVar[Band]
    BAND_R: _ClassVar[Band]
    BAND_I: _ClassVar[Band]
    BAND_Z: _ClassVar[Band]
    BAND_Y: _ClassVar[Band]
BAND_UNSPECIFIED: Band
BAND_U: Band
BAND_G: Band
BAND_R: Band
BAND_I: Band
BAND_Z: Band
BAND_Y: Band

class Conditions(_message.Message):
    __slots__ = ("seeing_arcsec", "cloud_extinction_mag", "humidity_pct")
    SEEING_ARCSEC_FIELD_NUMBER: _ClassVar[int]
    CLOUD_EXTINCTION_MAG_FIELD_NUMBER: _ClassVar[int]
    HUMIDITY_PCT_FIELD_NUMBER: _ClassVar[int]
    seeing_arcsec: float
    cloud_extinction_mag: float
    humidity_pct: float
    def __init__(self, seeing_arcsec: _Optional[float] = ..., cloud_extinction_mag: _Optional[float] = ..., humidity_pct: _Optional[float] = ...) -> None: ...

class Observatory(_message.Message):
    __slots__ = ("site_id", "forecast", "current", "open", "capacity")
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    FORECAST_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    OPEN_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    forecast: Conditions
    current: Conditions
    open: bool
    capacity: int
    def __init__(self, site_id: _Optional[str] = ..., forecast: _Optional[_Union[Conditions, _Mapping]] = ..., current: _Optional[_Union[Conditions, _Mapping]] = ..., open: _Optional[bool] = ..., capacity: _Optional[int] = ...) -> None: ...

class Target(_message.Message):
    __slots__ = ("id", "ra_deg", "dec_deg", "magnitude", "band", "exposure_s", "value", "deadline_unix", "time_critical")
    ID_FIELD_NUMBER: _ClassVar[int]
    RA_DEG_FIELD_NUMBER: _ClassVar[int]
    DEC_DEG_FIELD_NUMBER: _ClassVar[int]
    MAGNITUDE_FIELD_NUMBER: _ClassVar[int]
    BAND_FIELD_NUMBER: _ClassVar[int]
    EXPOSURE_S_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_FIELD_NUMBER: _ClassVar[int]
    TIME_CRITICAL_FIELD_NUMBER: _ClassVar[int]
    id: str
    ra_deg: float
    dec_deg: float
    magnitude: float
    band: Band
    exposure_s: float
    value: float
    deadline_unix: float
    time_critical: bool
    def __init__(self, id: _Optional[str] = ..., ra_deg: _Optional[float] = ..., dec_deg: _Optional[float] = ..., magnitude: _Optional[float] = ..., band: _Optional[_Union[Band, str]] = ..., exposure_s: _Optional[float] = ..., value: _Optional[float] = ..., deadline_unix: _Optional[float] = ..., time_critical: _Optional[bool] = ...) -> None: ...

class CoordinateRequest(_message.Message):
    __slots__ = ("model", "request_id", "time_unix", "window_s", "snr_required", "observatories", "targets")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_UNIX_FIELD_NUMBER: _ClassVar[int]
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    SNR_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    OBSERVATORIES_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    model: str
    request_id: str
    time_unix: float
    window_s: float
    snr_required: float
    observatories: _containers.RepeatedCompositeFieldContainer[Observatory]
    targets: _containers.RepeatedCompositeFieldContainer[Target]
    def __init__(self, model: _Optional[str] = ..., request_id: _Optional[str] = ..., time_unix: _Optional[float] = ..., window_s: _Optional[float] = ..., snr_required: _Optional[float] = ..., observatories: _Optional[_Iterable[_Union[Observatory, _Mapping]]] = ..., targets: _Optional[_Iterable[_Union[Target, _Mapping]]] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("target_id", "site_id", "expected_value", "p_success", "expected_snr")
    TARGET_ID_FIELD_NUMBER: _ClassVar[int]
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VALUE_FIELD_NUMBER: _ClassVar[int]
    P_SUCCESS_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_SNR_FIELD_NUMBER: _ClassVar[int]
    target_id: str
    site_id: str
    expected_value: float
    p_success: float
    expected_snr: float
    def __init__(self, target_id: _Optional[str] = ..., site_id: _Optional[str] = ..., expected_value: _Optional[float] = ..., p_success: _Optional[float] = ..., expected_snr: _Optional[float] = ...) -> None: ...

class Unassigned(_message.Message):
    __slots__ = ("target_id", "reason")
    class Reason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        REASON_UNSPECIFIED: _ClassVar[Unassigned.Reason]
        REASON_NO_FEASIBLE_SITE: _ClassVar[Unassigned.Reason]
        REASON_CAPACITY: _ClassVar[Unassigned.Reason]
        REASON_EXPIRED: _ClassVar[Unassigned.Reason]
        REASON_ZERO_PROBABILITY: _ClassVar[Unassigned.Reason]
    REASON_UNSPECIFIED: Unassigned.Reason
    REASON_NO_FEASIBLE_SITE: Unassigned.Reason
    REASON_CAPACITY: Unassigned.Reason
    REASON_EXPIRED: Unassigned.Reason
    REASON_ZERO_PROBABILITY: Unassigned.Reason
    TARGET_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    target_id: str
    reason: Unassigned.Reason
    def __init__(self, target_id: _Optional[str] = ..., reason: _Optional[_Union[Unassigned.Reason, str]] = ...) -> None: ...

class CoordinateResponse(_message.Message):
    __slots__ = ("model", "version", "request_id", "assignments", "unassigned", "total_expected_value", "solver")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    UNASSIGNED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_EXPECTED_VALUE_FIELD_NUMBER: _ClassVar[int]
    SOLVER_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    request_id: str
    assignments: _containers.RepeatedCompositeFieldContainer[Assignment]
    unassigned: _containers.RepeatedCompositeFieldContainer[Unassigned]
    total_expected_value: float
    solver: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., request_id: _Optional[str] = ..., assignments: _Optional[_Iterable[_Union[Assignment, _Mapping]]] = ..., unassigned: _Optional[_Iterable[_Union[Unassigned, _Mapping]]] = ..., total_expected_value: _Optional[float] = ..., solver: _Optional[str] = ...) -> None: ...

class CoordinateStreamRequest(_message.Message):
    __slots__ = ("request",)
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    request: CoordinateRequest
    def __init__(self, request: _Optional[_Union[CoordinateRequest, _Mapping]] = ...) -> None: ...

class CoordinateStreamResponse(_message.Message):
    __slots__ = ("response", "error", "request_id")
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    response: CoordinateResponse
    error: _status_pb2.Status
    request_id: str
    def __init__(self, response: _Optional[_Union[CoordinateResponse, _Mapping]] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...
