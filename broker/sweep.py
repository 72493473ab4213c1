"""The evaluation-sweep queue: which episodes are left, who runs which, and their results.

The controller fills a list of episode specs; simulators (Ray actors, containers or external
processes) take one at a time with a lease, renew the lease while they run it, and finish it by
adding a result record and dropping the lease in one step. The controller hands expired leases
(a simulator that died) back to the list, so a killed simulator's episode is re-run. Take and
finish are Lua scripts, so no episode is lost between two commands.

Each spec the controller pushes carries a lease token only the controller can mint
(`rolloutq.controller.intake`). Taking an episode keeps only the token's SHA-1 in the lease, so a simulator
that reads the leases learns no token; finishing needs the token of a lease that is still there.
Redis runs the scripts under the caller's ACL user, so what they do stays within what the `sim`
role may do (deploy/redis/users.acl.in); the controller's own checks are the last word
(`rolloutq.controller.intake.ResultIntake`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aredis
from redis.exceptions import NoScriptError
from rolloutq.broker.keys import Keys

# Specs pushed by anyone allowed to LPUSH the list are checked before a lease is made: a spec that is
# not a JSON object with numeric episode and seed is dropped (at most 64 per call), so garbage on the
# list cannot break the simulators that pop it.
_TAKE = """
for _ = 1, 64 do
  local raw = redis.call('LPOP', KEYS[1])
  if not raw then return false end
  local ok, spec = pcall(cjson.decode, raw)
  if ok and type(spec) == 'table' and type(spec['episode']) == 'number' and type(spec['seed']) == 'number'
     and (spec['attempt'] == nil or type(spec['attempt']) == 'number')
     and (spec['gen'] == nil or type(spec['gen']) == 'number')
     and (spec['token'] == nil or type(spec['token']) == 'string') then
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    local token = spec['token'] or ''
    spec['token'] = nil
    redis.call('HSET', KEYS[2], string.format('%d', spec['episode']), cjson.encode({
      sim = ARGV[1], expires = now + tonumber(ARGV[2]), spec = cjson.encode(spec),
      token_sha = redis.sha1hex(token)}))
    return raw
  end
end
return false
"""

_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = 0
for i = 3, #ARGV do
  local raw = redis.call('HGET', KEYS[1], ARGV[i])
  if raw then
    local ok, lease = pcall(cjson.decode, raw)
    if ok and type(lease) == 'table' and lease['sim'] == ARGV[1] then
      lease['expires'] = now + tonumber(ARGV[2])
      redis.call('HSET', KEYS[1], ARGV[i], cjson.encode(lease))
      n = n + 1
    end
  end
end
return n
"""

_FINISH = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if raw then
  local ok, lease = pcall(cjson.decode, raw)
  if ok and type(lease) == 'table' and lease['token_sha'] == redis.sha1hex(ARGV[2]) then
    redis.call('XADD', KEYS[2], '*', 'record', ARGV[3], 'video', ARGV[4], 'token', ARGV[2])
    redis.call('HDEL', KEYS[1], ARGV[1])
    return 1
  end
end
redis.call('INCR', KEYS[3])
return 0
"""

# Expiry is two steps: list the expired leases, then hand them back with the specs the controller
# pushes again (it re-mints their tokens; a lease never holds one). A lease renewed or finished in
# between is left alone.
_EXPIRED = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  local ok, lease = pcall(cjson.decode, all[i + 1])
  if not ok or type(lease) ~= 'table' or type(lease['expires']) ~= 'number' or lease['expires'] < now then
    out[#out + 1] = all[i]
    out[#out + 1] = (ok and type(lease) == 'table' and type(lease['spec']) == 'string') and lease['spec'] or ''
  end
end
return out
"""

_HAND_BACK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local back = 0
for i = 1, #ARGV, 2 do
  local raw = redis.call('HGET', KEYS[1], ARGV[i])
  if raw then
    local ok, lease = pcall(cjson.decode, raw)
    if not ok or type(lease) ~= 'table' or type(lease['expires']) ~= 'number' or lease['expires'] < now then
      redis.call('HDEL', KEYS[1], ARGV[i])
      if ARGV[i + 1] ~= '' then
        redis.call('LPUSH', KEYS[2], ARGV[i + 1])
        back = back + 1
      end
    end
  end
end
return back
"""

# A simulator that is scaled down hands its leases back at once (no waiting for expiry): only
# leases it still owns, each spec back at the head of the list with its generation bumped and the
# token the simulator got with it (it must match the lease's).
_RELEASE = """
local n = 0
for i = 2, #ARGV, 2 do
  local raw = redis.call('HGET', KEYS[1], ARGV[i])
  if raw then
    local ok, lease = pcall(cjson.decode, raw)
    if ok and type(lease) == 'table' and lease['sim'] == ARGV[1] and lease['token_sha'] == redis.sha1hex(ARGV[i + 1])
       and type(lease['spec']) == 'string' then
      redis.call('HDEL', KEYS[1], ARGV[i])
      local spec = cjson.decode(lease['spec'])
      spec['gen'] = (tonumber(spec['gen']) or 0) + 1
      if ARGV[i + 1] ~= '' then spec['token'] = ARGV[i + 1] end
      redis.call('LPUSH', KEYS[2], cjson.encode(spec))
      n = n + 1
    end
  end
end
return n
"""

STOP_MIN_S = 300
"""The stop marker outlives a sweep deleted at once (`expire(0)`) by this long, so simulators still
polling it see it and leave."""


@dataclass
class EpisodeSpec:
    episode: int
    seed: int
    attempt: int = 1
    gen: int = 0
    """Times the episode was handed back unfinished (expired or released lease). It goes into the
    rollout id, so a re-run never reads replies meant for the abandoned run of the same attempt."""
    token: str = ""
    """The lease token the controller minted for (run, episode, attempt); `finish` needs it."""

    def to_json(self) -> str:
        d: dict[str, Any] = {"episode": self.episode, "seed": self.seed, "attempt": self.attempt}
        if self.gen:
            d["gen"] = self.gen
        if self.token:
            d["token"] = self.token
        return json.dumps(d)

    @classmethod
    def from_json(cls, raw: bytes | str) -> EpisodeSpec:
        d = json.loads(raw)
        return cls(int(d["episode"]), int(d["seed"]), int(d.get("attempt", 1)), int(d.get("gen", 0)),
                   str(d.get("token", "")))


@dataclass
class ResultEntry:
    """One entry of the results stream as written, nothing trusted yet (`rolloutq.controller.intake` checks it)."""

    entry_id: bytes
    record: Any
    """The record's JSON, parsed; the raw bytes when it does not parse; None when the entry has none."""
    video: bytes
    token: str


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
        self.k_rejected = self.keys.sweep_rejected(run)
        self._take = r.register_script(_TAKE)
        self._renew = r.register_script(_RENEW)
        self._finish = r.register_script(_FINISH)
        self._expired = r.register_script(_EXPIRED)
        self._hand_back = r.register_script(_HAND_BACK)
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
        pipe.delete(self.k_todo, self.k_leases, self.k_results, self.k_stop, self.k_rejected)
        pipe.hset(self.k_meta, mapping={"config": json.dumps(config), "lease_ms": str(int(lease_s * 1000))})
        if specs:
            pipe.rpush(self.k_todo, *[s.to_json() for s in specs])
        await pipe.execute()

    async def requeue(self, spec: EpisodeSpec) -> None:
        await self.r.lpush(self.k_todo, spec.to_json())

    async def expire_leases(self, respec: Callable[[int, int], EpisodeSpec | None] | None = None) -> int:
        """Hand the episodes of simulators that stopped renewing back to the list; returns how many.
        `respec(episode, gen)` gives the spec to push again (the controller's, with a fresh token), or
        None to drop the lease; without it the lease's own spec goes back with its generation bumped."""
        flat = await self._call(self._expired, [self.k_leases], [])
        if not flat:
            return 0
        args: list[str] = []
        for field, raw in zip(flat[::2], flat[1::2], strict=True):
            args += [field, self._respec(field, raw, respec)]
        return int(await self._call(self._hand_back, [self.k_leases, self.k_todo], args))

    @staticmethod
    def _respec(field: bytes, raw: bytes, respec: Callable[[int, int], EpisodeSpec | None] | None) -> str:
        try:
            old: EpisodeSpec | None = EpisodeSpec.from_json(raw)
        except (ValueError, KeyError, TypeError):
            old = None  # a lease no script of ours wrote
        if respec is None:
            if old is None:
                return ""
            old.gen += 1
            return old.to_json()
        try:
            episode = int(field)
        except ValueError:
            return ""
        new = respec(episode, (old.gen if old else 0) + 1)
        return new.to_json() if new is not None else ""

    async def read_results(self, last_id: bytes, block_ms: int) -> list[ResultEntry]:
        """Entries after `last_id`, as written: nothing here raises on what a simulator wrote."""
        got = await self.r.xread({self.k_results: last_id}, block=block_ms, count=256)
        out = []
        for _, entries in got or []:
            for entry_id, fields in entries:
                raw = fields.get(b"record")
                try:
                    record = json.loads(raw) if raw is not None else None
                except ValueError:
                    record = raw
                token = fields.get(b"token", b"").decode("utf-8", "replace")
                out.append(ResultEntry(entry_id, record, fields.get(b"video", b""), token))
        return out

    async def stop(self) -> None:
        await self.r.set(self.k_stop, b"1", ex=24 * 3600)

    async def expire(self, ttl_s: int) -> None:
        """The run is over: its keys go `ttl_s` seconds from now (0: its data now). The stop marker
        is set (simulators leave) and stays at least `STOP_MIN_S`."""
        data = [self.k_meta, self.k_todo, self.k_leases, self.k_results, self.k_rejected]
        pipe = self.r.pipeline(transaction=False)
        pipe.set(self.k_stop, b"1", ex=max(int(ttl_s), STOP_MIN_S))
        if ttl_s > 0:
            for key in data:
                pipe.expire(key, int(ttl_s))
        else:
            pipe.delete(*data)
        await pipe.execute()

    async def rejected_finishes(self) -> int:
        """Finish calls refused so far (no lease for the episode, or not its token)."""
        return int(await self.r.get(self.k_rejected) or 0)

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

    async def finish(self, episode: int, token: str, record: dict[str, Any], video: bytes = b"") -> bool:
        """Add the episode's result and end its lease, in one step. False (nothing written) when the
        lease is gone or holds another token: it expired and the episode went to another simulator."""
        done = await self._call(self._finish, [self.k_leases, self.k_results, self.k_rejected],
                                [str(episode), token, json.dumps(record), video])
        return bool(done)

    async def release(self, sim: str, episodes: list[int], tokens: Mapping[int, str] | None = None) -> int:
        """Hand this simulator's unfinished episodes back to the list now (a scaled-down sim), each
        with the token it was taken with (`tokens`: episode -> token)."""
        if not episodes:
            return 0
        tokens = tokens or {}
        args: list[Any] = [sim]
        for e in episodes:
            args += [str(e), tokens.get(e, "")]
        return int(await self._call(self._release, [self.k_leases, self.k_todo], args))

    async def stopped(self) -> bool:
        return bool(await self.r.exists(self.k_stop))
