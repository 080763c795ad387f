"""The feedback stream's retention (online/shared.py) on a real redis-server: each append trims
the entries older than `retention_s`; a reader whose offset lies before trimmed entries learns
it (online/source.py `RedisStreamSource.gap`) instead of silently skipping them."""

from __future__ import annotations

import time

import pytest

from funnelrec.core.errors import ConfigError
from funnelrec.online.shared import SharedFeedback
from funnelrec.online.source import RedisStreamSource

FIELDS = {"request_id": "", "user_id": "u1", "item_id": "i1", "type": "click", "value": "1.0", "ts": "1",
          "received_at": "1.0", "experiments": "", "event_id": ""}


def _old_entries(client, key: str, ms: list[int]) -> None:
    """Entries with explicit ids at `ms` milliseconds since the epoch (1970: older than any retention)."""
    for m in ms:
        client.xadd(key, FIELDS, id=f"{m}-0")


@pytest.fixture
def stream(redis_url, request):
    import redis

    key = f"test:retention:{request.node.name}"
    client = redis.Redis.from_url(redis_url)
    client.delete(key)
    yield client, key
    client.delete(key)
    client.close()


def test_an_append_trims_what_is_older_than_the_retention(redis_url, stream):
    client, key = stream
    _old_entries(client, key, [1000, 1001, 1002])
    shared = SharedFeedback(redis_url, prefix="t-ret:", stream=key, retention_s=3600)
    t0 = int(time.time() * 1000)
    assert shared.claim_new([(None, FIELDS), (None, FIELDS)]) == [True, True]
    ids = [sid.decode() for sid, _ in client.xrange(key)]
    # the three 1970 entries are gone; the two just appended (server clock, now) stay
    assert len(ids) == 2 and all(int(s.split("-")[0]) >= t0 - 5000 for s in ids), ids
    shared.close()


def test_without_a_retention_nothing_is_trimmed(redis_url, stream):
    client, key = stream
    _old_entries(client, key, [1000, 1001])
    shared = SharedFeedback(redis_url, prefix="t-ret:", stream=key, retention_s=None)
    shared.claim_new([(None, FIELDS)])
    assert client.xlen(key) == 3
    shared.close()


def test_the_cut_follows_the_clock_and_keeps_the_window(redis_url, stream):
    """With the clock at 1970-01-01 00:00:10 and a retention of 5 s, entries at ms 4,000 and
    4,999 are older than the cut (5,000) and go; 5,000 and 9,000 stay (MINID keeps ids ≥ the cut)."""
    client, key = stream
    _old_entries(client, key, [4000, 4999, 5000, 9000])
    shared = SharedFeedback(redis_url, prefix="t-ret:", stream=key, retention_s=5, clock=lambda: 10.0)
    shared.claim_new([(None, FIELDS)])
    ms = [int(sid.decode().split("-")[0]) for sid, _ in client.xrange(key)]
    assert ms[:2] == [5000, 9000] and len(ms) == 3, ms
    shared.close()


def test_a_reader_behind_the_trimmed_entries_is_told_and_then_not_again(redis_url, stream):
    client, key = stream
    _old_entries(client, key, [1000, 1001, 1002, 1003])
    src = RedisStreamSource(redis_url, key)
    first, off = src.read(src.start, 1)  # read 1000-0, then fall behind
    assert off == "1000-0" and src.gap is None
    SharedFeedback(redis_url, prefix="t-ret:", stream=key, retention_s=3600).claim_new([(None, FIELDS)])
    rest, off2 = src.read(off, 100)
    assert src.gap == "1003-0"  # 1001–1003 were trimmed unread
    assert rest.height == 1 and int(off2.split("-")[0]) > 1003
    again, _ = src.read(off2, 100)
    assert again.height == 0 and src.gap is None
    # a reader that had read everything trimmed is not behind
    assert src.trimmed_past("1003-0") is None and src.trimmed_past("1002-5") == "1003-0"
    src.close()


def test_a_bad_retention_is_a_config_error(redis_url):
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="redis_stream_retention_s"):
            SharedFeedback(redis_url, prefix="t-ret:", stream="k", retention_s=bad)
