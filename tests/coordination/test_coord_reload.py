"""Admin.ReloadModel: a new coordination checkpoint without a restart, through the real
daemon and client. Validation refuses bad files and keeps the old weights; under
concurrent load no request fails and responses carry the new version afterwards."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys

import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from safetensors.torch import load_file, save_file

from daemon.shipped import COORDINATION_CHECKPOINT
from engines.coordination import checkpoint
from galactic_client import AsyncClient, errors
from sections import COORDINATION, merge

from .conftest import make_request
from .test_coord_servicer import request_pb


@pytest.fixture
async def coord_daemon(daemon_factory, tmp_path):
    # Reloads are confined to reload_root; each test's checkpoints live in its tmp_path.
    return await daemon_factory(merge(COORDINATION, {"coordination": {"reload_root": str(tmp_path)}}))


@pytest.fixture
async def client(coord_daemon):
    c = AsyncClient(f"127.0.0.1:{coord_daemon.port}", timeout=30)
    yield c
    await c.close()


def copy_checkpoint(dst_dir, name: str = "new.safetensors", scale: float = 1.01):
    """The shipped checkpoint with every weight scaled: a valid checkpoint of another version."""
    out = dst_dir / name
    tensors = {k: (v * scale).contiguous() for k, v in load_file(str(COORDINATION_CHECKPOINT)).items()}
    save_file(tensors, str(out))
    shutil.copy(checkpoint.config_path(COORDINATION_CHECKPOINT), checkpoint.config_path(out))
    return out


async def test_reload_under_concurrent_load_fails_nothing_and_switches_version(coord_daemon, client, channel_to,
                                                                             tmp_path):
    new_path = copy_checkpoint(tmp_path)
    old_version = (await client.get_model("coordination")).version
    req = request_pb(make_request(40))
    reloaded = asyncio.Event()
    after: list[str] = []  # versions of requests sent after the reload returned
    statuses: list[int] = []

    async def watch_health() -> None:
        stub = health_pb2_grpc.HealthStub(channel_to(coord_daemon))
        async for resp in stub.Watch(health_pb2.HealthCheckRequest(service="galactic.v1.Coordination")):
            statuses.append(resp.status)

    in_flight, answered, warm = [0], [0], asyncio.Event()

    async def load(n_after: int = 5) -> list[str]:
        seen = []
        while len(after) < n_after * 4 or not reloaded.is_set():
            started_after = reloaded.is_set()
            in_flight[0] += 1
            resp = await client.coordinate(req)  # any failure raises and fails the test
            in_flight[0] -= 1
            seen.append(resp.version)
            answered[0] += 1
            if answered[0] >= 8:
                warm.set()
            if started_after:
                after.append(resp.version)
        return seen

    watcher = asyncio.create_task(watch_health())
    workers = [asyncio.create_task(load()) for _ in range(4)]
    await warm.wait()  # the workers are answered and calling again, on any machine
    # A worker only ever waits inside its call, so all four have one in flight now.
    assert in_flight[0] == 4
    info = await client.reload_model("coordination", str(new_path))
    reloaded.set()
    seen = [v for w in await asyncio.gather(*workers) for v in w]
    watcher.cancel()
    assert info.version != old_version and info.version == (await client.get_model("coordination")).version
    assert set(seen) <= {old_version, info.version}
    assert after and set(after) == {info.version}
    assert statuses and set(statuses) == {health_pb2.HealthCheckResponse.SERVING}
    # The new weights really serve: a Coordinate says so, and GetModel names the file.
    assert json.loads((await client.get_model("coordination")).config_json)["checkpoint"] == str(new_path)


@pytest.mark.parametrize("breakage, error", [
    ("missing", errors.NotFound),
    ("truncated", errors.InvalidArgument),
    ("other_sites", errors.FailedPrecondition),
    ("feature_version", errors.FailedPrecondition),
    ("pickle", errors.InvalidArgument),
])
async def test_a_bad_checkpoint_is_refused_and_the_old_one_stays(client, tmp_path, breakage, error):
    path = copy_checkpoint(tmp_path)
    doc = json.loads(checkpoint.config_path(path).read_text())
    if breakage == "missing":
        path = tmp_path / "nope.safetensors"
    elif breakage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif breakage == "other_sites":
        doc["site_ids"] = list(reversed(doc["site_ids"]))
    elif breakage == "feature_version":
        doc["features"] = {"version": 99}
    elif breakage == "pickle":
        path = tmp_path / "model.pt"
        torch.save({}, path)
    if breakage in ("other_sites", "feature_version"):
        checkpoint.config_path(path).write_text(json.dumps(doc))
    before = (await client.get_model("coordination")).version
    with pytest.raises(error) as err:
        await client.reload_model("coordination", str(path))
    assert err.value.field == "path" or "path" in str(err.value)
    assert (await client.get_model("coordination")).version == before
    resp = await client.coordinate(request_pb(make_request(10)))
    assert resp.version == before


@pytest.mark.parametrize("escape", ["absolute", "dotdot", "symlink"])
async def test_reload_refuses_paths_outside_the_reload_root(client, tmp_path, tmp_path_factory, escape):
    outside = copy_checkpoint(tmp_path_factory.mktemp("elsewhere"))  # a valid checkpoint, wrong place
    if escape == "absolute":
        path = str(outside)
    elif escape == "dotdot":
        path = str(tmp_path / ".." / outside.parent.name / outside.name)
    else:
        (tmp_path / "link").symlink_to(outside.parent, target_is_directory=True)
        path = str(tmp_path / "link" / outside.name)
    before = (await client.get_model("coordination")).version
    with pytest.raises(errors.PermissionDenied) as err:
        await client.reload_model("coordination", path)
    assert err.value.field == "path" and "outside the reload root" in str(err.value)
    assert (await client.get_model("coordination")).version == before


async def test_a_relative_reload_path_is_taken_from_the_reload_root(client, tmp_path):
    path = copy_checkpoint(tmp_path, name="v2.safetensors", scale=0.98)
    info = await client.reload_model("coordination", "v2.safetensors")
    assert json.loads(info.config_json)["checkpoint"] == str(path.resolve())


async def test_reload_needs_an_admin_token(daemon_factory, tmp_path):
    keys, admin = tmp_path / "keys", tmp_path / "admin"
    keys.write_text("user-token\n")
    admin.write_text("ops-token\n")
    daemon = await daemon_factory({"coordination": {"reload_root": str(tmp_path)},
                                   "security": {"api_keys_file": str(keys),
                                                                     "admin_keys_file": str(admin)}})
    path = copy_checkpoint(tmp_path)
    async with AsyncClient(f"127.0.0.1:{daemon.port}", metadata=[("authorization", "Bearer user-token")]) as user:
        with pytest.raises(errors.PermissionDenied):
            await user.reload_model("coordination", str(path))
    async with AsyncClient(f"127.0.0.1:{daemon.port}", metadata=[("authorization", "Bearer ops-token")]) as ops:
        assert (await ops.reload_model("coordination", str(path))).version


async def test_cli_models_reload(coord_daemon, tmp_path):
    path = copy_checkpoint(tmp_path, scale=0.99)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "galactic_client.cli", "--target", f"127.0.0.1:{coord_daemon.port}",
        "models", "reload", "coordination", str(path), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert out.decode().startswith("reloaded coordination: version ")


async def test_a_plan_stream_moves_to_the_new_version_after_a_reload(client, tmp_path):
    req = request_pb(make_request(20))
    async with client.coordinate_stream(time_unix=req.time_unix, observatories=list(req.observatories),
                                        targets=list(req.targets)) as plan:
        before = (await plan.next()).version
        info = await client.reload_model("coordination", str(copy_checkpoint(tmp_path)))
        await plan.request_plan()  # cached scores of the old weights must not be reused
        update = await plan.next()
    assert update.version == info.version != before
    fresh = await client.coordinate(req)
    assert update.total_expected_value == pytest.approx(fresh.total_expected_value, rel=1e-6)
