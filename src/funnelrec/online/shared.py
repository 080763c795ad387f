"""What replicas behind a balancer must agree on beyond the stores: which feedback events were
already applied, and which request a feedback call refers to.

The exposure filters, result caches, real-time histories, feature counters, live catalogue and
follow edges already live in Redis when the service runs with `redis_url` (filter/, online/).
Two things stayed per process, and both break as soon as a balancer sends a retry or a
feedback call to another replica than the one that answered:

- **Idempotency.** The event log that refuses a repeated `event_id` is each replica's own
  SQLite file. A POST /feedback that replica A applied but whose answer was lost (A killed
  after its commit, a timeout) and that nginx or the client retries on replica B would be
  applied twice: twice in the stream the learner reads, twice in the counters. `claim_new`
  makes the check shared: one Lua script per call that, for each event with an id, `SET
  {prefix}eid:{id} NX EX ttl` and — only when it was set — XADDs the event to the stream.
  The claim and the stream append are one atomic step on the server, so an event is in the
  stream exactly once however many replicas it was sent to; only the claimed events go on to
  the exposure filter, history and counters.
- **The request record.** /recommend remembers (user, experiment assignment) per request id so
  that the feedback of that request is logged with its assignment. In one process that is a
  dict; across replicas it is `{prefix}req:{request_id}` (with a TTL), written only when there
  is an assignment to remember.

The order in `RecommenderService.feedback` (pipeline/service.py): the local event log first
(durable before the answer, as on one box; its own repeats left out), then `claim_new` over
*every* event of the call — a replica that crashed after its local commit and got the retry
itself must still put the event in the stream — then the stores for the claimed ones. A
crash between the claim and the stores leaves the event in the stream (the learner sees it)
but possibly not in the exposure filter: the window is one Redis round trip. A retry that
reached another replica is in both replicas' local logs (each commits before it asks Redis);
the stream holds it once, so whatever reads across replicas (the learner: `learn --redis`)
reads the stream.

**Retention.** The stream is the bus, not the record (each replica's event log is): every XADD
trims it to the entries of the last `retention_s` seconds (`XADD … MINID <now − retention>`,
exact, so each append evicts only what has aged out since the previous one). A reader that
falls further behind than that loses events; each trim records the newest id it deleted
(`trim_marker`), so `RedisStreamSource` (online/source.py) sees when its offset lies before it,
and the learner logs it. None = never trimmed.

    shared = SharedFeedback("redis://127.0.0.1:6379/0", prefix="funnelrec:", stream="funnelrec:events")
    new = shared.claim_new([("e1", {...fields}), ("e1", {...}), (None, {...})])   # [True, False, True]
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

from funnelrec.core.errors import ConfigError
from funnelrec.online.source import _number, trim_marker

# KEYS[1] = the stream key ("" = no stream), KEYS[2] = its trim marker (`trim_marker`); ARGV = ttl, n, the id-key prefix, the MINID to trim
# the stream to ("" = no trim), then per event: event id ("" = none), the number of field pairs,
# the pairs. Returns one 0/1 per event: 1 = new (claimed and added).
_CLAIM_AND_XADD = """
local stream = KEYS[1]
local ttl = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local prefix = ARGV[3]
local minid = ARGV[4]
local out = {}
local i = 5
for e = 1, n do
  local eid = ARGV[i]
  local nf = tonumber(ARGV[i + 1])
  i = i + 2
  local new = 1
  if eid ~= "" then
    if not redis.call('SET', prefix .. eid, '1', 'NX', 'EX', ttl) then new = 0 end
  end
  if new == 1 and stream ~= "" then
    local args = {}
    for f = 0, 2 * nf - 1 do args[#args + 1] = ARGV[i + f] end
    if minid ~= "" then
      -- the newest entry this trim deletes, kept at KEYS[2] for readers to find out they fell
      -- behind (a trim leaves XINFO's max-deleted-entry-id alone: only XDEL sets it)
      local old = redis.call('XREVRANGE', stream, '(' .. minid, '-', 'COUNT', 1)
      if #old > 0 then redis.call('SET', KEYS[2], old[1][1]) end
      redis.call('XADD', stream, 'MINID', minid, '*', unpack(args))
    else
      redis.call('XADD', stream, '*', unpack(args))
    end
  end
  i = i + 2 * nf
  out[e] = new
end
return out
"""


class SharedFeedback:
    """The cross-replica idempotency claim + stream append, and the request records, on one Redis
    connection (module doc). `ttl_s`: how long an event id and a request record are remembered —
    a retry later than that is stored again (the bound is the memory: ~100 bytes per event).
    `retention_s`: the stream keeps the entries of the last that many seconds (None = all)."""

    def __init__(self, url: str, prefix: str = "funnelrec:", stream: str | None = "funnelrec:events",
                 ttl_s: int = 86400, retention_s: int | None = None, clock=time.time) -> None:
        import redis

        if ttl_s < 1:
            raise ConfigError(f"the shared idempotency TTL must be ≥ 1 s, got {ttl_s}")
        if retention_s is not None and (isinstance(retention_s, bool) or not isinstance(retention_s, int)
                                        or retention_s < 1):
            raise ConfigError(f"redis_stream_retention_s must be a whole number of seconds ≥ 1 or None, "
                              f"got {retention_s!r}")
        self._redis_mod = redis
        self.prefix, self.stream, self.ttl_s = prefix, stream, int(ttl_s)
        self.retention_s, self._clock = retention_s, clock
        self.client = redis.Redis.from_url(url)
        try:
            self.client.ping()
        except redis.RedisError as e:
            raise ConfigError(f"cannot reach Redis at {url}: {e}") from None
        self._script = self.client.register_script(_CLAIM_AND_XADD)

    def claim_new(self, events: Sequence[tuple[str | None, dict[str, str]]]) -> list[bool]:
        """For each (event id or None, stream fields): True when this call is the first to claim
        the id (or it has none) — the event was appended to the stream — False for a repeat."""
        if not events:
            return []
        # stream ids are the server's ms clock; the cut uses this host's (replicas and Redis on
        # NTP time: a skew of seconds against a retention of days)
        minid = "" if self.retention_s is None else f"{int((self._clock() - self.retention_s) * 1000)}-0"
        argv: list[str | int] = [self.ttl_s, len(events), self.prefix + "eid:", minid]
        for eid, fields in events:
            argv += ["" if eid is None else str(eid), len(fields)]
            for k, v in fields.items():
                argv += [k, v]
        got = self._script(keys=[self.stream or "", trim_marker(self.stream or "")], args=argv)
        return [bool(int(x)) for x in got]

    def put_request(self, request_id: str, user_id: str, record_json: str) -> None:
        """Remember one request's (user, assignment) for the feedback of any replica."""
        self.client.set(f"{self.prefix}req:{request_id}", json.dumps([user_id, record_json]), ex=self.ttl_s)

    def get_request(self, request_id: str) -> tuple[str, str] | None:
        raw = self.client.get(f"{self.prefix}req:{request_id}")
        if raw is None:
            return None
        uid, record = json.loads(raw)
        return str(uid), record

    def close(self) -> None:
        self.client.close()


class StreamEvents:
    """The feedback stream read as an event log, for the ramp guardrails of every replica
    (`ExperimentPlatform.tick(events)` reads `events.read(since_seq)`): each replica judges a
    ramp on all replicas' feedback, not on its own share of it, so they take the same decision.
    A stream id "ms-n" is the seq ms·10⁶ + n (ids grow, so seqs do)."""

    def __init__(self, client: object, stream: str, page: int = 10_000) -> None:
        self.client, self.stream, self.page = client, stream, page

    def read(self, since_seq: int = 0):
        import polars as pl

        rows: list[tuple] = []
        cur = "-" if since_seq <= 0 else f"({since_seq // 1_000_000}-{since_seq % 1_000_000}"
        while True:
            page = self.client.xrange(self.stream, min=cur, max="+", count=self.page)
            for sid, f in page:
                ms, n = sid.decode().split("-")
                g = {k.decode(): v.decode() for k, v in f.items()}
                rows.append((int(ms) * 1_000_000 + int(n), g.get("user_id"), g.get("type"),
                             _number(g.get("value"), float), g.get("experiments") or None))
            if len(page) < self.page:
                break
            cur = "(" + page[-1][0].decode()
        return pl.DataFrame(rows, schema={"seq": pl.Int64, "user_id": pl.Utf8, "type": pl.Utf8, "value": pl.Float64,
                                          "experiments": pl.Utf8}, orient="row")


def share_ramps(platform: object, shared: SharedFeedback) -> tuple[object, str | None]:
    """`platform` as every replica must run it: scheduled ramps' offsets counted from the first
    replica's start (SET NX of its build time, keyed by the experiments config), and the ramps
    another replica rolled back stopped here too (a restart must not bring a harmful treatment
    back). Returns the platform to use (rebuilt when the anchor is another replica's) and the
    Redis key prefix of its shared ramp state (None: no scheduled ramp, nothing shared)."""
    import hashlib
    from dataclasses import asdict

    from funnelrec.experiments import ExperimentPlatform

    if not any(r.config.scheduled for r in platform.ramps.values()):
        return platform, None
    key = f"{shared.prefix}experiments:{_config_key(asdict(platform.config), hashlib)}:"
    shared.client.set(key + "anchor", repr(platform.built_at), nx=True)
    anchor = float(shared.client.get(key + "anchor"))
    if anchor != platform.built_at:
        platform = ExperimentPlatform(platform.config, platform.known_params, clock=platform.clock, start=anchor)
    for name, reasons in shared.client.hgetall(key + "stopped").items():
        ramp = platform.ramps.get(name.decode())
        if ramp is not None and ramp.config.scheduled:
            ramp.status, ramp.failed = "stopped", tuple(json.loads(reasons))
    return platform, key


def record_stops(platform: object, shared: SharedFeedback, key: str | None) -> None:
    """After a tick that decided something: the rolled-back ramps, for every replica's restart."""
    stopped = {n: json.dumps(list(r.failed)) for n, r in platform.ramps.items() if r.status == "stopped"}
    if key is not None and stopped:
        shared.client.hset(key + "stopped", mapping=stopped)


def _config_key(config: dict, hashlib) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]
