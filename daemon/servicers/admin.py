"""Admin service: models, adapters, statistics."""

from __future__ import annotations

import json
import time
from typing import Callable, Mapping

from galactic.v1 import admin_pb2 as pb
from galactic.v1 import admin_pb2_grpc

from daemon.servicers import pick
from daemon.servicers.inference import to_pb_spec
from engines.base import ModelInfo
from engines.errors import FailedPrecondition

_STATES = {"loading": pb.LOADING, "ready": pb.READY, "draining": pb.DRAINING,
           "stopped": pb.STOPPED, "failed": pb.FAILED}


def to_model_info(engine) -> pb.ModelInfo:
    info: ModelInfo = engine.info()
    msg = pb.ModelInfo(
        name=info.name, kind=info.kind, version=info.version, state=_STATES.get(info.state, 0),
        device=info.device, parameters=info.parameters, memory_bytes=info.memory_bytes,
        config_json=json.dumps(info.config, default=str, sort_keys=True), services=info.services)
    if hasattr(engine, "input_spec"):
        msg.inputs.extend(to_pb_spec(s) for s in engine.input_spec())
        msg.outputs.extend(to_pb_spec(s) for s in engine.output_spec())
    return msg


def to_adapter_info(model: str, a) -> pb.AdapterInfo:
    return pb.AdapterInfo(name=a.name, path=str(a.path), rank=a.rank, in_use=a.in_use,
                          loaded_at=a.loaded_at, last_used=a.last_used, model=model, pinned=a.pinned)


class AdminServicer(admin_pb2_grpc.AdminServicer):
    def __init__(self, engines: Mapping[str, object], llms: Mapping[str, object],
                 in_flight: Callable[[], int]) -> None:
        self._engines = engines  # every engine by model name
        self._llms = llms  # the ones that take adapters
        self._in_flight = in_flight
        self._started = time.monotonic()

    async def ListModels(self, request, context) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[to_model_info(e) for e in self._engines.values()])

    async def GetModel(self, request, context) -> pb.ModelInfo:
        return to_model_info(pick(self._engines, request.name, field="name"))

    async def LoadAdapter(self, request, context) -> pb.AdapterInfo:
        engine = pick(self._llms, request.model)
        return to_adapter_info(engine.name, await engine.load_adapter(request.name, request.path))

    async def UnloadAdapter(self, request, context) -> pb.UnloadAdapterResponse:
        engine = pick(self._llms, request.model)
        await engine.unload_adapter(request.name, force=request.force)
        return pb.UnloadAdapterResponse()

    async def ListAdapters(self, request, context) -> pb.ListAdaptersResponse:
        engine = pick(self._llms, request.model)
        return pb.ListAdaptersResponse(adapters=[to_adapter_info(engine.name, a) for a in engine.list_adapters()],
                                       resolvable=await engine.resolvable_adapters(), model=engine.name)

    async def ReloadModel(self, request, context) -> pb.ModelInfo:
        # Admin-only (daemon/interceptors/admission.py ADMIN_MUTATIONS). The engine validates the
        # checkpoint before it swaps: a bad one raises, naming `path`, and the old one stays.
        reloadable = {name: e for name, e in self._engines.items() if hasattr(e, "reload")}
        if request.name and request.name in self._engines and request.name not in reloadable:
            raise FailedPrecondition(f"model {request.name!r} cannot reload a checkpoint", field="name")
        engine = pick(reloadable, request.name, field="name")
        await engine.reload(request.path)
        return to_model_info(engine)

    async def GetStats(self, request, context) -> pb.GetStatsResponse:
        return pb.GetStatsResponse(
            uptime_s=time.monotonic() - self._started, in_flight=self._in_flight(),
            models={name: pb.ModelStats(values=e.stats()) for name, e in self._engines.items()})
