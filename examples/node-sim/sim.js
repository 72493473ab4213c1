#!/usr/bin/env node
// A simulator outside Python that evaluates a rolloutq policy with nothing but Redis and the wire
// protocol (docs/PROTOCOL.md): it reads the policy's metadata hash to learn which observation to
// send, runs a small point-mass environment, sends observations as msgpack maps of arrays in
// msgpack-numpy's layout, decodes action chunks and executes `action_horizon` steps of each before
// asking again.
//
//   node sim.js --redis-url redis://127.0.0.1:6379/0 --policy default --episodes 4 --envs 2
//
// Each request carries a fresh random nonce; the worker echoes it, and only the reply with that
// nonce is taken. With no reply within --reply-timeout-ms the request is resent (same seq and nonce,
// `resend` = n, `ttl_ms` = what is left of the deadline); a rollout that gives up deletes its
// request entries.
//
// Exit codes: 0 all episodes completed; 1 usage or unexpected error; 2 Redis unreachable or the
// policy published no metadata in time; 3 protocol version mismatch; 4 an error reply or no reply.

import { createClient, RESP_TYPES } from "redis";
import { decode, encode } from "@msgpack/msgpack";
import { randomBytes } from "node:crypto";
import process from "node:process";

export const PROTOCOL_VERSION = 2;

// ----------------------------------------------------------------------------------------------
// command line
const DEFAULTS = {
  "redis-url": process.env.ROLLOUTQ_REDIS_URL || "redis://127.0.0.1:6379/0",
  namespace: process.env.ROLLOUTQ_NAMESPACE || "rq",
  policy: process.env.ROLLOUTQ_POLICY || "default",
  episodes: 4,
  envs: 2,
  "max-steps": 60,
  seed: 0,
  "deadline-ms": 30000,
  "reply-timeout-ms": 10000,
  "max-resends": 3,
  "wait-s": 30,
  "protocol-version": PROTOCOL_VERSION,
  "no-version-check": false,
  "sim-id": `node-${process.pid}`,
  json: false,
};

function parseArgs(argv) {
  const out = { ...DEFAULTS };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--help" || a === "-h") {
      console.log(`usage: node sim.js [--redis-url URL] [--namespace NS] [--policy NAME] [--episodes N]
                   [--envs K] [--max-steps T] [--seed S] [--deadline-ms MS] [--reply-timeout-ms MS]
                   [--max-resends N] [--wait-s S]
                   [--protocol-version V] [--no-version-check] [--sim-id ID] [--json]`);
      process.exit(0);
    }
    if (!a.startsWith("--")) throw new UsageError(`unexpected argument ${a}`);
    const name = a.slice(2);
    if (!(name in DEFAULTS)) throw new UsageError(`unknown option ${a}`);
    if (typeof DEFAULTS[name] === "boolean") {
      out[name] = true;
      continue;
    }
    const v = argv[++i];
    if (v === undefined) throw new UsageError(`${a} needs a value`);
    if (typeof DEFAULTS[name] === "number") {
      const n = Number(v);
      if (!Number.isFinite(n)) throw new UsageError(`${a} must be a number, got ${v}`);
      out[name] = n;
    } else {
      out[name] = v;
    }
  }
  return out;
}

class UsageError extends Error {}
class SimError extends Error {
  constructor(message, code) {
    super(message);
    this.code = code;
  }
}

// ----------------------------------------------------------------------------------------------
// keys (broker/keys.py): every key of one shard shares the hash tag {policy#shard}
const NAME = /^[A-Za-z0-9_.-]{1,128}$/;

function checkName(kind, v) {
  if (!NAME.test(v)) throw new UsageError(`${kind} ${JSON.stringify(v)} must be 1-128 of A-Z a-z 0-9 _ . -`);
  return v;
}

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

export function crc32(text) {
  let c = 0xffffffff;
  for (const b of Buffer.from(text, "utf8")) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

export function shardOf(rollout, shards) {
  return shards <= 1 ? 0 : crc32(rollout) % shards;
}

const keys = {
  tag: (policy, shard) => `{${checkName("policy", policy)}#${shard}}`,
  requests: (ns, policy, shard) => `${ns}:req:${keys.tag(policy, shard)}`,
  replies: (ns, policy, rollout, shard) => `${ns}:rep:${keys.tag(policy, shard)}:${checkName("rollout", rollout)}`,
  policyMeta: (ns, policy) => `${ns}:policy:${checkName("policy", policy)}`,
};

// ----------------------------------------------------------------------------------------------
// arrays in msgpack-numpy's layout: {nd: true, type: "<f4", kind: "", shape: [...], data: <bin>}
const DTYPES = {
  float32: ["<f4", Float32Array], float64: ["<f8", Float64Array], uint8: ["|u1", Uint8Array],
  int8: ["|i1", Int8Array], int16: ["<i2", Int16Array], uint16: ["<u2", Uint16Array],
  int32: ["<i4", Int32Array], uint32: ["<u4", Uint32Array],
};
const BY_CODE = Object.fromEntries(Object.values(DTYPES).map(([code, T]) => [code, T]));
Object.assign(BY_CODE, { "<u1": Uint8Array, "<i1": Int8Array, "|b1": Uint8Array });

if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) {
  throw new Error("this simulator assumes a little-endian host (the protocol's arrays are little-endian)");
}

/** A typed array with a shape, sent in msgpack-numpy's layout. */
export class NdArray {
  constructor(typed, shape, dtype) {
    this.type = DTYPES[dtype][0];
    this.shape = shape;
    this.data = new Uint8Array(typed.buffer, typed.byteOffset, typed.byteLength);
  }
}

export function ndarray(typed, shape, dtype) {
  return new NdArray(typed, shape, dtype);
}

function binHeader(n) {
  if (n < 0x100) return Buffer.from([0xc4, n]);
  const b = Buffer.alloc(n < 0x10000 ? 3 : 5);
  if (n < 0x10000) {
    b[0] = 0xc5;
    b.writeUInt16BE(n, 1);
  } else {
    b[0] = 0xc6;
    b.writeUInt32BE(n, 1);
  }
  return b;
}

function mapHeader(n) {
  if (n < 16) return Buffer.from([0x80 | n]);
  const b = Buffer.alloc(3);
  b[0] = 0xde;
  b.writeUInt16BE(n, 1);
  return b;
}

const binKey = (k) => Buffer.concat([binHeader(k.length), Buffer.from(k, "latin1")]);

/**
 * Encode an observation: maps of arrays, strings and lists. @msgpack/msgpack writes map keys as
 * strings only, and msgpack-numpy's array map has bin keys (b"nd", b"type", ...), so array maps
 * are written here byte by byte, exactly as numpy's side writes them; everything else goes
 * through the library.
 */
export function encodeMessage(value) {
  if (value instanceof NdArray) {
    return Buffer.concat([
      mapHeader(5),
      binKey("nd"), Buffer.from([0xc3]),
      binKey("type"), Buffer.from(encode(value.type)),
      binKey("kind"), binHeader(0),
      binKey("shape"), Buffer.from(encode(value.shape)),
      binKey("data"), binHeader(value.data.byteLength), Buffer.from(value.data.buffer, value.data.byteOffset, value.data.byteLength),
    ]);
  }
  if (value && typeof value === "object" && !Array.isArray(value) && !ArrayBuffer.isView(value)) {
    const entries = Object.entries(value);
    return Buffer.concat([mapHeader(entries.length), ...entries.flatMap(([k, v]) => [Buffer.from(encode(k)), encodeMessage(v)])]);
  }
  if (Array.isArray(value) && value.some((v) => v instanceof NdArray || (v && typeof v === "object"))) {
    const head = value.length < 16 ? Buffer.from([0x90 | value.length]) : Buffer.from([0xdc, value.length >> 8, value.length & 0xff]);
    return Buffer.concat([head, ...value.map(encodeMessage)]);
  }
  return Buffer.from(encode(value));
}

/** Decode an array map (msgpack-numpy layout, or openpi's) into {shape, dtype, values}. */
export function fromNdarray(m) {
  const code = m.type ?? m.dtype;
  const T = BY_CODE[code];
  if (!T) throw new SimError(`action array has dtype ${code}, which this simulator does not handle`, 4);
  const bytes = Uint8Array.from(m.data); // copy: aligned for the typed view
  return { shape: m.shape, dtype: code, values: new T(bytes.buffer) };
}

function isArrayMap(v) {
  return v && typeof v === "object" && !Array.isArray(v) && !(v instanceof Uint8Array) && ("nd" in v || "__ndarray__" in v);
}

// msgpack-numpy writes the array map's keys as bin; read them as text.
const DECODE_OPTS = {
  mapKeyConverter: (k) => (k instanceof Uint8Array ? Buffer.from(k).toString("utf8") : k),
};

// ----------------------------------------------------------------------------------------------
// the environment: a point mass on a plane, pushed by a 2-D force, must reach a goal
class Rng {
  constructor(seed) {
    this.s = (seed >>> 0) ^ 0x9e3779b9;
  }
  next() {
    // mulberry32
    let t = (this.s = (this.s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  uniform(lo, hi) {
    return lo + (hi - lo) * this.next();
  }
}

export class PointMass {
  constructor(maxSteps) {
    this.maxSteps = maxSteps;
    this.dt = 0.05;
    this.radius = 0.05;
  }
  reset(seed) {
    const rng = new Rng(seed);
    this.pos = [rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5)];
    this.vel = [0, 0];
    this.goal = [rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5)];
    this.t = 0;
  }
  distance() {
    return Math.hypot(this.pos[0] - this.goal[0], this.pos[1] - this.goal[1]);
  }
  step(force) {
    for (let i = 0; i < 2; i++) {
      const f = Math.max(-1, Math.min(1, Number.isFinite(force[i]) ? force[i] : 0));
      this.vel[i] = 0.9 * this.vel[i] + f * this.dt;
      this.pos[i] = Math.max(-1, Math.min(1, this.pos[i] + this.vel[i] * this.dt));
    }
    this.t += 1;
    const success = this.distance() < this.radius;
    return { reward: -this.distance(), success, done: success || this.t >= this.maxSteps };
  }
  /** The state vector every `state.*` key is filled from (truncated or zero-padded to its width). */
  stateVector() {
    return [...this.pos, ...this.vel, ...this.goal];
  }
  /** A top-down picture: the mass is blue, the goal red, on a grey floor. */
  render(h, w) {
    const img = new Uint8Array(h * w * 3).fill(200);
    const dot = (p, rgb) => {
      const cx = Math.round(((p[0] + 1) / 2) * (w - 1));
      const cy = Math.round(((p[1] + 1) / 2) * (h - 1));
      const r = Math.max(1, Math.round(w / 32));
      for (let y = Math.max(0, cy - r); y <= Math.min(h - 1, cy + r); y++) {
        for (let x = Math.max(0, cx - r); x <= Math.min(w - 1, cx + r); x++) {
          img.set(rgb, (y * w + x) * 3);
        }
      }
    };
    dot(this.goal, [220, 30, 30]);
    dot(this.pos, [30, 60, 220]);
    return img;
  }
}

const INSTRUCTION = "move the point to the red goal";

/** Build an observation that fits the policy's published observation schema. */
export function observe(env, schema) {
  const entries = Object.entries(schema || {});
  if (entries.length === 0) {
    // the policy accepts any observation (e.g. the `null` backend): send the state and the task
    return {
      "state.point": ndarray(Float32Array.from(env.stateVector()), [1, 1, 6], "float32"),
      "annotation.human.task_description": [[INSTRUCTION]],
    };
  }
  const obs = {};
  for (const [key, spec] of entries) {
    if (spec.kind === "text") {
      obs[key] = [[INSTRUCTION]];
      continue;
    }
    const shape = spec.shape;
    const dtype = spec.dtype;
    if (!(dtype in DTYPES)) throw new SimError(`observation ${key} wants dtype ${dtype}, which this simulator cannot produce`, 1);
    const count = shape.reduce((a, b) => a * b, 1);
    const T = DTYPES[dtype][1];
    let values;
    if (dtype === "uint8" && shape.length >= 3 && shape[shape.length - 1] === 3) {
      // an image stack (..., H, W, 3): every frame shows the current scene
      const [h, w] = shape.slice(-3, -1);
      const frame = env.render(h, w);
      values = new T(count);
      for (let off = 0; off < count; off += frame.length) values.set(frame, off);
    } else {
      values = new T(count);
      const state = env.stateVector();
      for (let i = 0; i < count; i++) values[i] = i % shape[shape.length - 1] < state.length ? state[i % shape[shape.length - 1]] : 0;
    }
    obs[key] = ndarray(values, shape, dtype);
  }
  return obs;
}

// ----------------------------------------------------------------------------------------------
// the protocol
async function discover(r, o) {
  const key = keys.policyMeta(o.namespace, o.policy);
  const until = Date.now() + o["wait-s"] * 1000;
  for (;;) {
    const h = await r.hGetAll(key);
    if (h && h.metadata) {
      // `protocol`: the versions the policy's workers speak, comma-separated ("2", or "2,3")
      const speaks = String(h.protocol ?? "1").split(",").map((v) => Number(v.trim()));
      if (!o["no-version-check"] && !speaks.includes(o["protocol-version"])) {
        throw new SimError(
          `protocol version mismatch: policy ${o.policy} speaks v${speaks.join(",v")} (from ${key} field ` +
            `"protocol"), this simulator speaks v${o["protocol-version"]}; upgrade whichever side is older`, 3);
      }
      return { meta: JSON.parse(String(h.metadata)), shards: Number(String(h.shards ?? "1")) || 1,
        protocol: o["protocol-version"] };
    }
    if (Date.now() > until) {
      throw new SimError(`policy ${o.policy} published no metadata at ${key} within ${o["wait-s"]}s: ` +
        "is a policy worker running against this Redis and namespace?", 2);
    }
    await new Promise((res) => setTimeout(res, 100));
  }
}

function fieldsToObject(flat) {
  const out = {};
  for (let i = 0; i < flat.length; i += 2) out[Buffer.from(flat[i]).toString("utf8")] = flat[i + 1];
  return out;
}

const RETRYABLE = new Set(["shutting_down"]);

class Rollout {
  constructor(conn, o, shards, rollout, steps) {
    this.conn = conn;
    this.o = o;
    this.rollout = rollout;
    this.steps = steps;
    const shard = shardOf(rollout, shards);
    this.stream = keys.requests(o.namespace, o.policy, shard);
    this.replyKey = keys.replies(o.namespace, o.policy, rollout, shard);
    this.seq = 0;
    this.lastId = null; // set before the first request: after whatever the reply stream holds already
  }

  async send(fields) {
    return Buffer.from(await this.conn.sendCommand(["XADD", this.stream, "*", ...fields])).toString("utf8");
  }

  /**
   * Send one observation and return the action chunk of the reply that echoes this request's nonce.
   * Resends (same seq and nonce, the remaining deadline) when no reply came within the reply timeout;
   * on giving up, deletes the request's entries so that no worker infers them after all.
   */
  async act(obs) {
    const o = this.o;
    const seq = this.seq++;
    const nonce = randomBytes(8).toString("hex");
    const started = Date.now();
    const deadline = started + o["deadline-ms"];
    if (this.lastId === null) {
      const last = await this.conn.sendCommand(["XREVRANGE", this.replyKey, "+", "-", "COUNT", "1"]);
      this.lastId = last.length ? Buffer.from(last[0][0]).toString("utf8") : "0-0";
    }
    const payload = encodeMessage(obs);
    const sent = [];
    const fields = (ttl) => {
      const f = ["v", String(o["protocol-version"]), "rollout", this.rollout, "seq", String(seq), "nonce", nonce,
        "ttl_ms", String(ttl), "obs", payload];
      if (this.steps) f.push("steps", String(this.steps));
      if (sent.length) f.push("resend", String(sent.length), "orig", sent[0]);
      return f;
    };
    let resendAt = 0; // send at once
    try {
      for (;;) {
        const now = Date.now();
        const left = deadline - now;
        if (left <= 0) {
          throw new SimError(`no reply for rollout ${this.rollout} step ${seq} within ${o["deadline-ms"]} ms ` +
            `(${sent.length} sends): are policy workers running on this Redis and namespace?`, 4);
        }
        if (now >= resendAt && sent.length <= o["max-resends"]) {
          sent.push(await this.send(fields(sent.length ? left : o["deadline-ms"])));
          resendAt = now + o["reply-timeout-ms"];
        }
        const wait = Math.max(1, Math.min(left, resendAt - now, 1000));
        const got = await this.conn.sendCommand(["XREAD", "BLOCK", String(wait), "STREAMS", this.replyKey, this.lastId]);
        if (!got) continue;
        // RESP2: [[key, [[id, [f1, v1, ...]], ...]]]; RESP3 maps are normalised by the client to the same shape
        const entries = Array.isArray(got) ? got[0][1] : Object.values(got)[0];
        for (const [id, flat] of entries) {
          this.lastId = Buffer.from(id).toString("utf8");
          const f = fieldsToObject(flat);
          if (String(f.nonce ?? "") !== nonce) continue; // not the answer to this request
          const status = String(f.status);
          if (RETRYABLE.has(status) && sent.length <= o["max-resends"]) {
            resendAt = Date.now() + 200 * 2 ** sent.length; // back off, then resend
            continue;
          }
          sent.length = 0; // answered: nothing to cancel
          if (status !== "ok") {
            throw new SimError(`policy replied ${status} to rollout ${this.rollout} step ${seq}: ${String(f.error ?? "")}`, 4);
          }
          const chunk = decode(f.action, DECODE_OPTS);
          return { chunk, roundTripMs: Date.now() - started, batch: Number(String(f.batch)) };
        }
      }
    } finally {
      if (sent.length) await this.conn.sendCommand(["XDEL", this.stream, ...sent]).catch(() => {});
    }
  }
}

/** The first action array, as a list of per-step force vectors [fx, fy]. */
function forces(chunk, actionSchema) {
  const names = Object.keys(actionSchema || {}).filter((k) => k in chunk);
  const key = names[0] ?? Object.keys(chunk).find((k) => isArrayMap(chunk[k]));
  if (key === undefined) throw new SimError("action chunk holds no arrays", 4);
  const a = fromNdarray(chunk[key]);
  const d = a.shape[a.shape.length - 1];
  const steps = a.shape.length >= 2 ? a.shape[a.shape.length - 2] : 1;
  const out = [];
  for (let t = 0; t < steps; t++) out.push([a.values[t * d] ?? 0, d > 1 ? a.values[t * d + 1] : 0]);
  return out;
}

async function runEpisode(conn, o, info, episode) {
  const env = new PointMass(o["max-steps"]);
  env.reset(o.seed + episode);
  const horizon = Math.max(1, Number(info.meta.action_horizon) || 8);
  const rollout = new Rollout(conn, o, info.shards, `${o["sim-id"]}.e${episode}`, horizon);
  let ret = 0;
  let calls = 0;
  const rtts = [];
  for (;;) {
    const { chunk, roundTripMs } = await rollout.act(observe(env, info.meta.observation_schema));
    calls += 1;
    rtts.push(roundTripMs);
    const plan = forces(chunk, info.meta.action_schema);
    for (let t = 0; t < Math.min(horizon, plan.length); t++) {
      const r = env.step(plan[t]);
      ret += r.reward;
      if (r.done) {
        return { episode, seed: o.seed + episode, success: r.success, steps: env.t, return: ret, policy_calls: calls,
          round_trip_ms_p50: rtts.sort((a, b) => a - b)[Math.floor(rtts.length / 2)] };
      }
    }
  }
}

export async function main(argv) {
  const o = parseArgs(argv);
  checkName("namespace", o.namespace);
  checkName("policy", o.policy);
  const base = createClient({ url: o["redis-url"], socket: { connectTimeout: 5000, reconnectStrategy: false } })
    .withTypeMapping({ [RESP_TYPES.BLOB_STRING]: Buffer });
  base.on("error", () => {}); // connection errors surface from the awaited command
  const conns = [];
  try {
    try {
      await base.connect();
    } catch (e) {
      throw new SimError(`Redis unreachable at ${o["redis-url"]}: ${e.message}`, 2);
    }
    const info = await discover(base, o);
    const todo = Array.from({ length: o.episodes }, (_, i) => i);
    const results = [];
    // one connection per environment: XREAD BLOCK holds its connection
    for (let i = 0; i < Math.max(1, o.envs); i++) {
      const c = base.duplicate();
      c.on("error", () => {});
      await c.connect();
      conns.push(c);
    }
    await Promise.all(conns.map(async (c) => {
      while (todo.length) {
        const ep = todo.shift();
        results.push(await runEpisode(c, o, info, ep));
      }
    }));
    results.sort((a, b) => a.episode - b.episode);
    const summary = {
      sim: o["sim-id"], policy: o.policy, model_id: info.meta.model_id, protocol: info.protocol,
      episodes: results.length, successes: results.filter((r) => r.success).length,
      steps: results.reduce((a, r) => a + r.steps, 0), policy_calls: results.reduce((a, r) => a + r.policy_calls, 0),
      results,
    };
    if (o.json) console.log(JSON.stringify(summary));
    else {
      for (const r of results) console.log(`episode ${r.episode} seed ${r.seed}: ${r.success ? "success" : "failure"} in ${r.steps} steps, ${r.policy_calls} policy calls`);
      console.log(`${summary.successes}/${summary.episodes} episodes succeeded (${info.meta.model_id})`);
    }
    return 0;
  } finally {
    for (const c of conns) await c.quit().catch(() => {});
    if (base.isOpen) await base.quit().catch(() => {});
  }
}

if (import.meta.url === `file://${process.argv[1]}` || process.argv[1]?.endsWith("sim.js")) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (e) => {
      const code = e instanceof UsageError ? 1 : e.code ?? 1;
      console.error(`node-sim: ${e instanceof SimError || e instanceof UsageError ? e.message : e.stack}`);
      process.exit(code);
    },
  );
}
