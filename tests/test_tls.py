"""TLS and mutual TLS with real handshakes: certificates made in the test (openssl), a
daemon serving them on loopback, and clients that must or must not get through."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from galactic.v1 import admin_pb2, admin_pb2_grpc

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=d)


def make_leaf(d: Path, name: str, ca: str, server: bool) -> None:
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", cwd=d)
    ext = d / f"{name}.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n" if server
                   else "extendedKeyUsage=clientAuth\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-days", "2", "-extfile", ext.name, "-out", f"{name}.pem", cwd=d)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    make_ca(d, "ca")
    make_ca(d, "other-ca")
    make_leaf(d, "server", "ca", server=True)
    make_leaf(d, "client", "ca", server=False)
    make_leaf(d, "stranger", "other-ca", server=False)
    return d


def creds(pki: Path, ca: str = "ca", client: str | None = None) -> grpc.ChannelCredentials:
    key_cert = {}
    if client:
        key_cert = {"private_key": (pki / f"{client}.key").read_bytes(),
                    "certificate_chain": (pki / f"{client}.pem").read_bytes()}
    return grpc.ssl_channel_credentials((pki / f"{ca}.pem").read_bytes(), **key_cert)


async def get_stats(target: str, credentials: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    channel = grpc.aio.secure_channel(target, credentials) if credentials else grpc.aio.insecure_channel(target)
    try:
        await admin_pb2_grpc.AdminStub(channel).GetStats(admin_pb2.GetStatsRequest(), timeout=10)
        return grpc.StatusCode.OK
    except grpc.aio.AioRpcError as err:
        return err.code()
    finally:
        await channel.close()


async def test_tls_handshakes(daemon_factory, pki):
    daemon = await daemon_factory({"security": {"tls_cert": str(pki / "server.pem"), "tls_key": str(pki / "server.key")}})
    target = f"127.0.0.1:{daemon.port}"
    assert await get_stats(target, creds(pki)) == grpc.StatusCode.OK
    assert await get_stats(target, None) == grpc.StatusCode.UNAVAILABLE  # plaintext is refused
    assert await get_stats(target, creds(pki, ca="other-ca")) == grpc.StatusCode.UNAVAILABLE  # wrong CA


async def test_mutual_tls_needs_a_client_certificate_from_the_ca(daemon_factory, pki):
    daemon = await daemon_factory({"security": {"tls_cert": str(pki / "server.pem"), "tls_key": str(pki / "server.key"),
                                                "tls_client_ca": str(pki / "ca.pem")}})
    target = f"127.0.0.1:{daemon.port}"
    assert await get_stats(target, creds(pki, client="client")) == grpc.StatusCode.OK
    assert await get_stats(target, creds(pki)) == grpc.StatusCode.UNAVAILABLE  # no client certificate
    assert await get_stats(target, creds(pki, client="stranger")) == grpc.StatusCode.UNAVAILABLE  # another CA's


async def test_cli_tls_ca(daemon_factory, pki):
    daemon = await daemon_factory({"security": {"tls_cert": str(pki / "server.pem"), "tls_key": str(pki / "server.key")}})

    async def cli(*args: str) -> tuple[int, str]:
        # The daemon runs on this test's event loop: the CLI must run as a non-blocking subprocess.
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "galactic_client.cli", "--target", f"127.0.0.1:{daemon.port}", *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode, out.decode() + err.decode()

    code, out = await cli("--tls-ca", str(pki / "ca.pem"), "stats")
    assert code == 0, out
    assert "uptime" in out
    code, _ = await cli("--tls-ca", str(pki / "other-ca.pem"), "--timeout", "5", "stats")
    assert code != 0
