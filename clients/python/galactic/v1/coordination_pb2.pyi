from google.rpc import status_pb2 as _status_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PlanProtocol(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PLAN_PROTOCOL_UNSPECIFIED: _ClassVar[PlanProtocol]
    PLAN_PROTOCOL_VERSION: _ClassVar[PlanProtocol]

class Band(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BAND_UNSPECIFIED: _ClassVar[Band]
    BAND_U: _ClassVar[Band]
    BAND_G: _ClassVar[Band]
    BAND_R: _ClassVar[Band]
    BAND_I: _ClassVar[Band]
    BAND_Z: _ClassVar[Band]
    BAND_Y: _ClassVar[Band]
PLAN_PROTOCOL_UNSPECIFIED: PlanProtocol
PLAN_PROTOCOL_VERSION: PlanProtocol
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
    def __init__(self, site_id: _Optional[str] = ..., forecast: _Optional[_Union[Conditions, _Mapping]] = ..., current: _Optional[_Union[Conditions, _Mapping]] = ..., open: bool = ..., capacity: _Optional[int] = ...) -> None: ...

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
    def __init__(self, id: _Optional[str] = ..., ra_deg: _Optional[float] = ..., dec_deg: _Optional[float] = ..., magnitude: _Optional[float] = ..., band: _Optional[_Union[Band, str]] = ..., exposure_s: _Optional[float] = ..., value: _Optional[float] = ..., deadline_unix: _Optional[float] = ..., time_critical: bool = ...) -> None: ...

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

class PlanOpen(_message.Message):
    __slots__ = ("protocol_version", "model", "time_unix", "window_s", "snr_required", "observatories", "targets", "coalesce_ms", "full_plan_every_frame")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TIME_UNIX_FIELD_NUMBER: _ClassVar[int]
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    SNR_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    OBSERVATORIES_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    COALESCE_MS_FIELD_NUMBER: _ClassVar[int]
    FULL_PLAN_EVERY_FRAME_FIELD_NUMBER: _ClassVar[int]
    protocol_version: PlanProtocol
    model: str
    time_unix: float
    window_s: float
    snr_required: float
    observatories: _containers.RepeatedCompositeFieldContainer[Observatory]
    targets: _containers.RepeatedCompositeFieldContainer[Target]
    coalesce_ms: float
    full_plan_every_frame: bool
    def __init__(self, protocol_version: _Optional[_Union[PlanProtocol, str]] = ..., model: _Optional[str] = ..., time_unix: _Optional[float] = ..., window_s: _Optional[float] = ..., snr_required: _Optional[float] = ..., observatories: _Optional[_Iterable[_Union[Observatory, _Mapping]]] = ..., targets: _Optional[_Iterable[_Union[Target, _Mapping]]] = ..., coalesce_ms: _Optional[float] = ..., full_plan_every_frame: bool = ...) -> None: ...

class TargetUpsert(_message.Message):
    __slots__ = ("targets",)
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    targets: _containers.RepeatedCompositeFieldContainer[Target]
    def __init__(self, targets: _Optional[_Iterable[_Union[Target, _Mapping]]] = ...) -> None: ...

class TargetRetract(_message.Message):
    __slots__ = ("target_ids",)
    TARGET_IDS_FIELD_NUMBER: _ClassVar[int]
    target_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, target_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class SiteUpdate(_message.Message):
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
    def __init__(self, site_id: _Optional[str] = ..., forecast: _Optional[_Union[Conditions, _Mapping]] = ..., current: _Optional[_Union[Conditions, _Mapping]] = ..., open: bool = ..., capacity: _Optional[int] = ...) -> None: ...

class WindowUpdate(_message.Message):
    __slots__ = ("time_unix", "window_s")
    TIME_UNIX_FIELD_NUMBER: _ClassVar[int]
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    time_unix: float
    window_s: float
    def __init__(self, time_unix: _Optional[float] = ..., window_s: _Optional[float] = ...) -> None: ...

class PlanRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PlanEvent(_message.Message):
    __slots__ = ("event_id", "open", "upsert", "retract", "site", "window", "plan")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    OPEN_FIELD_NUMBER: _ClassVar[int]
    UPSERT_FIELD_NUMBER: _ClassVar[int]
    RETRACT_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    open: PlanOpen
    upsert: TargetUpsert
    retract: TargetRetract
    site: SiteUpdate
    window: WindowUpdate
    plan: PlanRequest
    def __init__(self, event_id: _Optional[str] = ..., open: _Optional[_Union[PlanOpen, _Mapping]] = ..., upsert: _Optional[_Union[TargetUpsert, _Mapping]] = ..., retract: _Optional[_Union[TargetRetract, _Mapping]] = ..., site: _Optional[_Union[SiteUpdate, _Mapping]] = ..., window: _Optional[_Union[WindowUpdate, _Mapping]] = ..., plan: _Optional[_Union[PlanRequest, _Mapping]] = ...) -> None: ...

class PlanMove(_message.Message):
    __slots__ = ("target_id", "from_site_id", "assignment")
    TARGET_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_SITE_ID_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENT_FIELD_NUMBER: _ClassVar[int]
    target_id: str
    from_site_id: str
    assignment: Assignment
    def __init__(self, target_id: _Optional[str] = ..., from_site_id: _Optional[str] = ..., assignment: _Optional[_Union[Assignment, _Mapping]] = ...) -> None: ...

class PlanDrop(_message.Message):
    __slots__ = ("target_id", "from_site_id", "reason", "retracted")
    TARGET_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_SITE_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RETRACTED_FIELD_NUMBER: _ClassVar[int]
    target_id: str
    from_site_id: str
    reason: Unassigned.Reason
    retracted: bool
    def __init__(self, target_id: _Optional[str] = ..., from_site_id: _Optional[str] = ..., reason: _Optional[_Union[Unassigned.Reason, str]] = ..., retracted: bool = ...) -> None: ...

class PlanUpdate(_message.Message):
    __slots__ = ("sequence", "model", "version", "assigned", "moved", "dropped", "total_expected_value", "targets", "assigned_count", "full")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ASSIGNED_FIELD_NUMBER: _ClassVar[int]
    MOVED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_EXPECTED_VALUE_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    ASSIGNED_COUNT_FIELD_NUMBER: _ClassVar[int]
    FULL_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    model: str
    version: str
    assigned: _containers.RepeatedCompositeFieldContainer[Assignment]
    moved: _containers.RepeatedCompositeFieldContainer[PlanMove]
    dropped: _containers.RepeatedCompositeFieldContainer[PlanDrop]
    total_expected_value: float
    targets: int
    assigned_count: int
    full: CoordinateResponse
    def __init__(self, sequence: _Optional[int] = ..., model: _Optional[str] = ..., version: _Optional[str] = ..., assigned: _Optional[_Iterable[_Union[Assignment, _Mapping]]] = ..., moved: _Optional[_Iterable[_Union[PlanMove, _Mapping]]] = ..., dropped: _Optional[_Iterable[_Union[PlanDrop, _Mapping]]] = ..., total_expected_value: _Optional[float] = ..., targets: _Optional[int] = ..., assigned_count: _Optional[int] = ..., full: _Optional[_Union[CoordinateResponse, _Mapping]] = ...) -> None: ...

class PlanFrame(_message.Message):
    __slots__ = ("update", "error", "event_ids")
    UPDATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    EVENT_IDS_FIELD_NUMBER: _ClassVar[int]
    update: PlanUpdate
    error: _status_pb2.Status
    event_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, update: _Optional[_Union[PlanUpdate, _Mapping]] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ..., event_ids: _Optional[_Iterable[str]] = ...) -> None: ...
