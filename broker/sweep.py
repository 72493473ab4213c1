"""The evaluation-sweep queue: which episodes are left, who runs which, and their results.

The controller fills a list of episode specs; simulators (Ray actors, containers or external
processes) take one at a time with a lease, renew the lease while they run it, and finish it by
adding a result record and dropping the lease in one step. The controller hands expired leases
(a simulator that died) back to the list, so a killed simulator's episode is re-run. Take and
finish are Lua scripts, so no episode is lost between two commands.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aredis
from redis.exceptions import NoScriptError

from broker.keys import Keys

_TAKE = """
local spec = redis.call('LPOP', KEYS[1])
if not spec then return false end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ep = tostring(cjson.decode(spec)['episode'])
redis.call('HSET', KEYS[2], ep, cjson.encode({sim = ARGV[1], expires = now + tonumber(ARGV[2]), spec = spec}))
return spec
"""

_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = 0
for i = 3, #ARGV do
  local raw = redis.call('HGET', KEYS[1], ARGV[i])
  if raw then
    local lease = cjson.decode(raw)
    if lease['sim'] == ARGV[1] then
      lease['expires'] = now + tonumber(ARGV[2])
      redis.call('HSET', KEYS[1], ARGV[i], cjson.encode(lease))
      n = n + 1
    end
  end
end
return n
"""

_FINISH = """
redis.call('XADD', KEYS[2], '*', 'record', ARGV[2], 'video', ARGV[3])
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if raw then redis.call('HDEL', KEYS[1], ARGV[1]) end
return 1
"""

_EXPIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local all = redis.call('HGETALL', KEYS[1])
local back = 0
for i = 1, #all, 2 do
  local lease = cjson.decode(all[i + 1])
  if lease['expires'] < now then
    redis.call('HDEL', KEYS[1], all[i])
    local spec = cjson.decode(lease['spec'])
    spec['gen'] = (tonumber(spec['gen']) or 0) + 1
    redis.call('LPUSH', KEYS[2], cjson.encode(spec))
    back = back + 1
  end
end
return back
"""

# A simulator that is scaled down hands its leases back at once (no waiting for expiry): only
# leases it still owns, each spec back at the head of the list with its generation bumped.
_RELEASE = """
local n = 0
for i = 2, #ARGV do
  local raw = redis.call('HGET', KEYS[1], ARGV[i])
  if raw then
    local lease = cjson.decode(raw)
    if lease['sim'] == ARGV[1] then
      redis.call('HDEL', KEYS[1], ARGV[i])
      local spec = cjson.decode(lease['spec'])
      spec['gen'] = (tonumber(spec['gen']) or 0) + 1
      redis.call('LPUSH', KEYS[2], cjson.encode(spec))
      n = n + 1
    end
  end
end
return n
"""


@dataclass
class EpisodeSpec:
    episode: int
    seed: int
    attempt: int = 1
    gen: int = 0
    """Times the episode was handed back unfinished (expired or released lease). It goes into the
    rollout id, so a re-run never reads replies meant for the abandoned run of the same attempt."""

    def to_json(self) -> str:
        d = {"episode": self.episode, "seed": self.seed, "attempt": self.attempt}
        if self.gen:
            d["gen"] = self.gen
        return json.dumps(d)

    @classmethod
    def from_json(cls, raw: bytes | str) -> EpisodeSpec:
        d = json.loads(raw)
        return cls(int(d["episode"]), int(d["seed"]), int(d.get("attempt", 1)), int(d.get("gen", 0)))


class SweepQueue:
    """Both sides of one sweep's queue (`run` names the sweep)."""

    def __init__(self, r: aredis.Redis, run: str, keys: Keys | None = None) -> None:
        self.r = r
        self.run = run
        self.keys = keys or Keys()
        self.k_meta = self.keys.sweep_meta(run)
        self.k_todo = self.keys.sweep_todo(run)
        self.k_leases = self.keys.sweep_leases(run)
        self.k_results = self.keys.sweep_results(run)
        self.k_stop = self.keys.sweep_stop(run)
        self._take = r.register_script(_TAKE)
        self._renew = r.register_script(_RENEW)
        self._finish = r.register_script(_FINISH)
        self._expire = r.register_script(_EXPIRE)
        self._release = r.register_script(_RELEASE)

    async def _call(self, script: Any, keys: list[Any], args: list[Any]) -> Any:
        """Run one of the queue's scripts. A Redis restart empties the server's script cache;
        redis-py then loads the script again and retries once, and a restart between that load and
        that retry (seen under kill -9) fails the retry too: load and retry again (the script did
        not run, so running it is safe)."""
        for _ in range(2):
            try:
                return await script(keys=keys, args=args)
            except NoScriptError:
                pass
        return await script(keys=keys, args=args)

    # -- controller side ---------------------------------------------------------------------
    async def create(self, config: dict[str, Any], specs: list[EpisodeSpec], lease_s: float) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(self.k_todo, self.k_leases, self.k_results, self.k_stop)
        pipe.hset(self.k_meta, mapping={"config": json.dumps(config), "lease_ms": str(int(lease_s * 1000))})
        if specs:
            pipe.rpush(self.k_todo, *[s.to_json() for s in specs])
        await pipe.execute()

    async def requeue(self, spec: EpisodeSpec) -> None:
        await self.r.lpush(self.k_todo, spec.to_json())

    async def expire_leases(self) -> int:
        """Hand the episodes of simulators that stopped renewing back to the list."""
        return int(await self._call(self._expire, [self.k_leases, self.k_todo], []))

    async def read_results(self, last_id: bytes, block_ms: int) -> list[tuple[bytes, dict, bytes]]:
        got = await self.r.xread({self.k_results: last_id}, block=block_ms, count=256)
        out = []
        for _, entries in got or []:
            for entry_id, fields in entries:
                out.append((entry_id, json.loads(fields[b"record"]), fields.get(b"video", b"")))
        return out

    async def stop(self) -> None:
        await self.r.set(self.k_stop, b"1", ex=24 * 3600)

    async def counts(self) -> dict[str, int]:
        pipe = self.r.pipeline(transaction=False)
        pipe.llen(self.k_todo)
        pipe.hlen(self.k_leases)
        todo, leased = await pipe.execute()
        return {"todo": int(todo), "running": int(leased)}

    # -- simulator side ----------------------------------------------------------------------
    async def config(self) -> dict[str, Any] | None:
        raw = await self.r.hget(self.k_meta, "config")
        return json.loads(raw) if raw else None

    async def lease_ms(self) -> int:
        raw = await self.r.hget(self.k_meta, "lease_ms")
        return int(raw or 30000)

    async def take(self, sim: str, lease_ms: int) -> EpisodeSpec | None:
        raw = await self._call(self._take, [self.k_todo, self.k_leases], [sim, lease_ms])
        return EpisodeSpec.from_json(raw) if raw else None

    async def renew(self, sim: str, episodes: list[int], lease_ms: int) -> int:
        """Push the expiry of this simulator's leases forward (only leases it still owns)."""
        if not episodes:
            return 0
        return int(await self._call(self._renew, [self.k_leases], [sim, lease_ms, *[str(e) for e in episodes]]))

    async def finish(self, episode: int, record: dict[str, Any], video: bytes = b"") -> None:
        await self._call(self._finish, [self.k_leases, self.k_results], [str(episode), json.dumps(record), video])

    async def release(self, sim: str, episodes: list[int]) -> int:
        """Hand this simulator's unfinished episodes back to the list now (a scaled-down sim)."""
        if not episodes:
            return 0
        return int(await self._call(self._release, [self.k_leases, self.k_todo], [sim, *[str(e) for e in episodes]]))

    async def stopped(self) -> bool:
        return bool(await self.r.exists(self.k_stop))
