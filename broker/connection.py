"""Redis connections with reconnect-and-retry built in, for both the async and the sync API."""

from __future__ import annotations

import redis
import redis.asyncio as aredis
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rolloutq.broker.settings import RedisSettings

REDIS_DOWN: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError, OSError)
"""What a Redis call raises while the server is unreachable or restarting: wait and retry."""

_RETRY_ON = [RedisConnectionError, RedisTimeoutError, ConnectionResetError, OSError]


def connect_async(settings: RedisSettings, url: str | None = None) -> aredis.Redis:
    """An asyncio client for `url` (or settings.url); `rediss://` and passwords in the URL work.

    TLS options ride in the URL's query string and go straight to redis-py, e.g.
    `rediss://sim:PASSWORD@redis:6380/0?ssl_ca_certs=/certs/ca.pem` (add `ssl_certfile` and
    `ssl_keyfile` for mutual TLS). `socket_timeout` bounds every read, so a Redis that vanished
    without closing the connection (host down, partition) raises instead of hanging forever; the
    blocking reads of the client and the consumer block for less than that.
    """
    from redis.asyncio.retry import Retry

    return aredis.Redis.from_url(
        url or settings.url or "redis://127.0.0.1:6379/0",
        decode_responses=False,
        socket_connect_timeout=settings.socket_timeout_s,
        socket_timeout=settings.socket_timeout_s,
        socket_keepalive=True,
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=2.0), settings.connect_retries),
        retry_on_error=_RETRY_ON,
        health_check_interval=30,
    )


def connect_sync(settings: RedisSettings, url: str | None = None) -> redis.Redis:
    from redis.retry import Retry

    return redis.Redis.from_url(
        url or settings.url or "redis://127.0.0.1:6379/0",
        decode_responses=False,
        socket_connect_timeout=settings.socket_timeout_s,
        socket_timeout=settings.socket_timeout_s,
        socket_keepalive=True,
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=2.0), settings.connect_retries),
        retry_on_error=_RETRY_ON,
        health_check_interval=30,
    )
