"""Python client of the galactic model-serving daemon.

`Client` (blocking) and `AsyncClient` (asyncio) call the daemon's Generation, Inference,
Coordination, Admin and health services; failures raise typed `GalacticError`s. Tensor
helpers (`to_tensor`, `from_tensor`) need the optional numpy extra and import it lazily.
"""

from .aio import AsyncClient, AsyncSession, Chunk, Final, SessionRequest, resolve_target
from .streams import AsyncInferStream, AsyncPlanStream
from .errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    GalacticError,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Unknown,
    from_rpc_error,
    from_status,
)
from .sync import Client, InferStream, PlanStream, Session, SyncSessionRequest
from .tensors import TensorError, from_tensor, to_tensor

__all__ = [
    "AsyncClient",
    "AsyncSession",
    "AsyncPlanStream",
    "AsyncInferStream",
    "PlanStream",
    "InferStream",
    "Client",
    "Session",
    "SessionRequest",
    "SyncSessionRequest",
    "Chunk",
    "Final",
    "resolve_target",
    "GalacticError",
    "Aborted",
    "AlreadyExists",
    "Cancelled",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "from_rpc_error",
    "from_status",
    "TensorError",
    "to_tensor",
    "from_tensor",
]
