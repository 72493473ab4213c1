"""What one more process on the request path costs: a ping-pong over loopback TCP, timed at the
sender, after the receiver sat idle for a while (as a policy worker does between a simulator's
steps) and back to back.

rolloutq's round trip goes simulator -> Redis -> worker -> Redis -> simulator; a direct-socket
harness such as vla-eval's goes simulator -> server -> simulator. The rows isolate what the
relay adds, with nothing of rolloutq's own code in them:

    socket, blocking recv    a Python process blocked in recv() echoes 8 bytes
    socket, asyncio          the same echo from an asyncio server (epoll, as both harnesses' servers)
    redis PING               redis-server answers PING
    redis stream relay       XADD to a stream a second process waits on with XREADGROUP BLOCK; it
                             XADDs a reply that the sender waits on with XREAD BLOCK (rolloutq's
                             wire, two processes besides the sender, both woken through Redis)

    python -m benchmarks.wakeups [--calls 200] [--idle-ms 0,20] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import redis
from rolloutq.broker.embedded import free_port

from benchmarks.harness.record import make_record, write_record
from benchmarks.harness.stats import percentile


def _serve_blocking(port: int) -> None:
    with socket.create_server(("127.0.0.1", port)) as srv:
        conn, _ = srv.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while conn.recv(64):
            conn.sendall(b"12345678")


def _serve_asyncio(port: int) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(64):
            writer.write(b"12345678")

    async def main() -> None:
        server = await asyncio.start_server(echo, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def _serve_relay(port: int) -> None:
    r = redis.Redis(port=port)
    while True:
        for _, entries in r.xreadgroup("g", "w", {"req": ">"}, count=1, block=1000) or []:
            for entry_id, fields in entries:
                if b"stop" in fields:
                    return
                pipe = r.pipeline(transaction=False)
                pipe.xadd("rep", {"a": b"12345678"})
                pipe.xack("req", "g", entry_id)
                pipe.xdel("req", entry_id)
                pipe.execute()


def _time(call: Callable[[], None], calls: int, idle_s: float) -> dict[str, float]:
    spans = []
    for _ in range(calls + 20):
        if idle_s:
            time.sleep(idle_s)
        t0 = time.perf_counter()
        call()
        spans.append(time.perf_counter() - t0)
    ms = [x * 1000 for x in spans[20:]]
    return {"p50_ms": percentile(ms, 0.5), "p90_ms": percentile(ms, 0.9)}


def _child(kind: str, port: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "benchmarks.wakeups", "--serve", kind, "--port", str(port)])


def _socket_rows(kind: str, calls: int, idles: list[float]) -> dict[str, Any]:
    port = free_port()
    child = _child(kind, port)
    try:
        for _ in range(100):
            try:
                conn = socket.create_connection(("127.0.0.1", port))
                break
            except OSError:
                time.sleep(0.05)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def ping() -> None:
            conn.sendall(b"ping")
            conn.recv(64)

        rows = {f"idle {i * 1000:g} ms": _time(ping, calls, i) for i in idles}
        conn.close()
        return rows
    finally:
        child.kill()
        child.wait()


def _redis_rows(server: str, calls: int, idles: list[float]) -> dict[str, dict[str, Any]]:
    port = free_port()
    proc = subprocess.Popen([server, "--port", str(port), "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL)
    try:
        r = redis.Redis(port=port)
        for _ in range(100):
            try:
                r.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        out = {"redis PING": {f"idle {i * 1000:g} ms": _time(r.ping, calls, i) for i in idles}}
        r.xgroup_create("req", "g", id="0", mkstream=True)
        relay = _child("relay", port)
        last = [b"0-0"]

        def exchange() -> None:
            pipe = r.pipeline(transaction=False)
            pipe.xadd("req", {"obs": b"x" * 200})
            pipe.xread({"rep": last[0]}, block=2000)
            _, got = pipe.execute()
            last[0] = got[0][1][-1][0]

        try:
            out["redis stream relay"] = {f"idle {i * 1000:g} ms": _time(exchange, calls, i) for i in idles}
        finally:
            r.xadd("req", {"stop": 1})
            relay.wait(10)
        return out
    finally:
        proc.terminate()
        proc.wait()


def _idle_list(text: str) -> list[float]:
    try:
        return [float(x) / 1000 for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give milliseconds, comma-separated, e.g. 0,20") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.wakeups", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=200, help="ping-pongs per row (after 20 not counted)")
    p.add_argument("--idle-ms", default="0,20", type=_idle_list,
                   help="the receiver's idle time before each ping, in ms, comma-separated")
    p.add_argument("--redis-server", default=shutil.which("redis-server"), help="the redis-server binary")
    p.add_argument("--out", default=None, help="write a record (.json) here")
    p.add_argument("--serve", choices=["blocking", "asyncio", "relay"], help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.serve:
        {"blocking": _serve_blocking, "asyncio": _serve_asyncio, "relay": _serve_relay}[a.serve](a.port)
        return 0
    if not a.redis_server or not shutil.which(a.redis_server):
        p.error(f"no redis-server at {a.redis_server or 'PATH'}: install it or pass --redis-server")
    idles = a.idle_ms
    rows = {"socket, blocking recv": _socket_rows("blocking", a.calls, idles),
            "socket, asyncio": _socket_rows("asyncio", a.calls, idles),
            **_redis_rows(a.redis_server, a.calls, idles)}
    for name, by_idle in rows.items():
        print(f"{name:24s} " + "  ".join(f"{k}: p50 {v['p50_ms']:.2f} ms" for k, v in by_idle.items()))
    if a.out:
        command = "python -m benchmarks.wakeups " + " ".join(argv if argv is not None else sys.argv[1:])
        write_record(make_record("wakeups", command, {"calls": a.calls, "rows": rows}), a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
