"""Promise 7 (access): TLS. A redis-server with only a TLS port (certificate from a throwaway CA
made with openssl in the test) and a password; the policy worker process, the async and the sync
clients all connect with a `rediss://` URL carrying the CA in its query string. Plain TCP, an
unknown CA and a wrong password are refused."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time

import numpy as np
import pytest
import redis
from rolloutq.broker.client import PolicyClient, SyncPolicyClient
from rolloutq.broker.connection import connect_async, connect_sync
from rolloutq.broker.embedded import free_port
from rolloutq.broker.settings import ClientSettings, RedisSettings

from tests.fault.conftest import redis_binary, wait_worker


def _has_tls(binary: str | None) -> bool:
    if not binary or not shutil.which("openssl"):
        return False
    out = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
    return "libssl" in out


def _openssl(*args: str, cwd) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def tls_redis(tmp_path):
    binary = redis_binary()
    if not _has_tls(binary):
        pytest.skip("redis-server without TLS support or no openssl")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=rq-test-ca",
             cwd=tmp_path)
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1", cwd=tmp_path)
    (tmp_path / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.pem", "-days", "1", "-extfile", "san.ext", cwd=tmp_path)
    _openssl("req", "-x509", *ec, "-keyout", "other.key", "-out", "other-ca.pem", "-days", "1", "-subj", "/CN=x",
             cwd=tmp_path)
    port, password = free_port(), "tls-test-password"
    proc = subprocess.Popen([binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
                             "--tls-cert-file", "server.pem", "--tls-key-file", "server.key",
                             "--tls-ca-cert-file", "ca.pem", "--tls-auth-clients", "no", "--requirepass", password,
                             "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"rediss://:{password}@127.0.0.1:{port}/0?ssl_ca_certs={tmp_path / 'ca.pem'}"
    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.exceptions.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise
            time.sleep(0.05)
    try:
        yield url, port, password, tmp_path
    finally:
        proc.kill()
        proc.wait(5)


@pytest.mark.timeout(60)
def test_worker_and_clients_over_tls(tls_redis, spawn):
    url, port, password, tmp = tls_redis
    w = spawn("worker", redis_url=url, worker_id="w0")
    wait_worker(url, "w0", proc=w)

    async def main():
        r = connect_async(RedisSettings(url=url))
        client = PolicyClient(r, "p", settings=ClientSettings(deadline_s=10))
        try:
            return [await client.act("r0", {"tag": np.array([0, s], np.int64)}) for s in range(5)]
        finally:
            await r.aclose()

    res = asyncio.run(main())
    assert [x.chunk["echo"].tolist() for x in res] == [[0, s] for s in range(5)]
    sync = SyncPolicyClient(connect_sync(RedisSettings(url=url)), "p", settings=ClientSettings(deadline_s=10))
    assert sync.act("r1", {"tag": np.array([1, 0], np.int64)}).chunk["echo"].tolist() == [1, 0]
    assert sync.metadata()["model_id"] == "fault-test"

    refused = 0
    for bad in (f"redis://:{password}@127.0.0.1:{port}/0",  # plain TCP to the TLS port
                url.replace("ca.pem", "other-ca.pem"),  # certificate from an unknown CA
                url.replace(password, "wrong")):  # wrong password
        try:
            redis.Redis.from_url(bad, socket_timeout=2, socket_connect_timeout=2).ping()
        except (redis.exceptions.ConnectionError, redis.exceptions.AuthenticationError,
                redis.exceptions.TimeoutError, redis.exceptions.ResponseError):
            refused += 1
    assert refused == 3
