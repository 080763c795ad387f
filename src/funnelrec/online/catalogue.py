"""The live catalogue (issue #10): items and users that change between two requests, no refit.

The catalogue is state, kept in the service's state backend so that every worker and replica
sees the same one: "memory" (one process), "sqlite" (`{state_dir}/catalogue.db`, shared by the
workers of one host) or "redis" (hashes `{prefix}catalogue:items` / `:users`, shared by
replicas). Each change — an item upsert (id + attributes, optional `expires_at` unix s), delete,
hide/unhide, a user upsert/delete — bumps one version counter in the same transaction, so a
worker notices a change with one cheap read per request (`version()`) and rebuilds what it
derives from the catalogue only when the counter moved (`snapshot()` reads everything once).

    >>> cat = MemoryCatalogue()
    >>> cat.upsert_items([{"item_id": 7, "attributes": {"genres": ["Drama"]}, "expires_at": 100}], now=10)
    1
    >>> cat.hide_item(8, now=10)
    2
    >>> snap = cat.snapshot()
    >>> rules = snap.rules()
    >>> rules.blocked(np.array([7, 8, 9]), now=50).tolist(), rules.blocked(np.array([7]), now=100).tolist()
    ([False, True, False], [True])

What the service derives from a snapshot (pipeline/service.py):
- `CatalogueRules.blocked(keys, now)`: hidden, deleted and expired items, checked per candidate
  by item key — O(C log R) for C candidates and R items with a rule, never O(catalogue);
- the upserted items' rows (`item_rows`), which `Funnel.with_items` appends or updates, so a new
  item is recallable by the fresh, tag, author and vector channels on the next request;
- deleted users, served as unknown users (the cold-start path).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numba
import numpy as np

from funnelrec.core.errors import ArtifactError, ConfigError, DataError
from funnelrec.core.ids import item_key
from funnelrec.core.sqlite import enable_wal

RESERVED_ITEM_FIELDS = ("item_id", "attributes", "expires_at")


def _key(entity_id: Any, what: str) -> str:
    """The catalogue's key of an external id: its string (12 and "12" are one item, as in IdMap)."""
    if isinstance(entity_id, bool) or not isinstance(entity_id, int | str | np.integer) or str(entity_id) == "":
        raise DataError(f"{what} must be a non-empty str or an int, got {entity_id!r}")
    return str(entity_id)


def _expiry(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
        raise DataError(f"{where}.expires_at must be unix seconds (a number) or null, got {value!r}")
    return float(value)


def _attributes(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise DataError(f"{where}.attributes must be an object of column → value, got {type(value).__name__}")
    bad = [c for c in value if not isinstance(c, str) or c in ("item_id", "item_idx", "user_id", "user_idx")]
    if bad:
        raise DataError(f"{where}.attributes: {bad} cannot be set (ids and indices are not attributes)")
    return dict(value)


@dataclass(frozen=True)
class CatalogueRules:
    """Items some rule keeps out of every answer, by item key (`core.ids.item_key`), sorted:
    `always` (hidden or deleted) or from `expires_at` on (inf = never)."""

    keys: np.ndarray  # (R,) int64 sorted
    always: np.ndarray  # (R,) bool
    expires_at: np.ndarray  # (R,) float64

    def blocked(self, keys: np.ndarray, now: float) -> np.ndarray:
        """(C,) bool: the item is hidden, deleted, or its expiry time is ≤ `now`."""
        keys = np.asarray(keys, np.int64)
        if len(self.keys) == 0 or len(keys) == 0:
            return np.zeros(len(keys), bool)
        pos = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        hit = self.keys[pos] == keys
        return hit & (self.always[pos] | (self.expires_at[pos] <= now))

    def __len__(self) -> int:
        return len(self.keys)


@dataclass(frozen=True)
class CatalogueSnapshot:
    """The whole catalogue state at `version`: item id → record, user id → record. An item
    record: {"id": the id as given, "attributes": {column: value}, "hidden", "deleted",
    "expires_at", "created_at"}; a user record: {"id", "attributes", "deleted"}."""

    version: int
    items: dict[str, dict] = field(default_factory=dict)
    users: dict[str, dict] = field(default_factory=dict)

    def rules(self) -> CatalogueRules:
        rows = [(item_key(r["id"]), bool(r.get("hidden") or r.get("deleted")),
                 np.inf if r.get("expires_at") is None else float(r["expires_at"]))
                for r in self.items.values() if r.get("hidden") or r.get("deleted") or r.get("expires_at") is not None]
        if not rows:
            return CatalogueRules(np.empty(0, np.int64), np.empty(0, bool), np.empty(0, np.float64))
        keys = np.array([r[0] for r in rows], np.int64)
        order = np.argsort(keys, kind="stable")
        return CatalogueRules(keys[order], np.array([r[1] for r in rows], bool)[order],
                              np.array([r[2] for r in rows], np.float64)[order])

    def item_rows(self) -> list[dict[str, Any]]:
        """{item_id, **attributes} of every live (not deleted) item upserted with attributes, in
        the order they were first upserted (the order `Funnel.with_items` appends new ones)."""
        live = [r for r in self.items.values() if not r.get("deleted") and r.get("attributes") is not None]
        live.sort(key=lambda r: (r.get("seq", 0)))
        return [{"item_id": r["id"], **r["attributes"]} for r in live]

    def user_rows(self) -> list[dict[str, Any]]:
        """{user_id, **attributes} of every live user upserted with attributes (`Funnel.with_users`)."""
        return [{"user_id": r["id"], **r["attributes"]} for r in self.users.values()
                if not r.get("deleted") and r.get("attributes")]

    def deleted_users(self) -> frozenset[str]:
        return frozenset(k for k, r in self.users.items() if r.get("deleted"))


class Catalogue(ABC):
    """The live catalogue over one state backend (module doc). Every mutation returns the new
    version; all of them are atomic with their version bump."""

    # -- the backend: read-modify-write of some records, plus the version, in one transaction
    @abstractmethod
    def _change(self, table: str, keys: list[str], update: Any) -> int:
        """Apply update(key, old record | None) → new record to each key; bump the version."""

    @abstractmethod
    def version(self) -> int: ...

    @abstractmethod
    def snapshot(self) -> CatalogueSnapshot: ...

    def close(self) -> None:
        return None

    # -- items
    def upsert_items(self, rows: Iterable[Mapping[str, Any]], now: float) -> int:
        """Each row: {item_id, attributes?: {column: value}, expires_at?: unix s | null}. The
        given attributes are merged into the item's (a new item gets them as they are); an
        upsert of a deleted item brings it back; `expires_at`, when present, replaces the
        item's (null clears it); hidden stays as it was."""
        parsed = []
        for i, r in enumerate(rows):
            where = f"items[{i}]"
            if not isinstance(r, Mapping) or "item_id" not in r:
                raise DataError(f"{where}: an item needs an item_id")
            extra = [k for k in r if k not in RESERVED_ITEM_FIELDS]
            if extra:
                raise DataError(f"{where}: unknown fields {extra}; an item has {', '.join(RESERVED_ITEM_FIELDS)}")
            parsed.append((_key(r["item_id"], f"{where}.item_id"), r["item_id"], _attributes(r.get("attributes"), where),
                           "expires_at" in r, _expiry(r.get("expires_at"), where)))
        if not parsed:
            raise DataError("items: nothing to upsert (an empty list)")
        by_key: dict[str, list] = {}
        for p in parsed:
            by_key.setdefault(p[0], []).append(p)

        def update(key: str, old: dict | None, seq: int) -> dict:
            rec = dict(old) if old else {"id": by_key[key][0][1], "attributes": None, "hidden": False,
                                         "deleted": False, "expires_at": None, "created_at": float(now), "seq": seq}
            for _, _, attrs, has_exp, exp in by_key[key]:
                if rec.get("deleted"):  # a deleted item comes back as new: its old attributes are gone
                    rec.update(attributes=None, deleted=False, created_at=float(now))
                rec["attributes"] = {**(rec.get("attributes") or {}), **attrs}
                if has_exp:
                    rec["expires_at"] = exp
            return rec

        return self._change("items", list(by_key), update)

    def delete_item(self, item_id: Any, now: float) -> int:
        """The item is never recommended again (and its upserted attributes are dropped)."""
        def update(key: str, old: dict | None, seq: int) -> dict:
            base = old or {"id": item_id, "hidden": False, "expires_at": None, "created_at": float(now), "seq": seq}
            return {**base, "attributes": None, "deleted": True}

        return self._change("items", [_key(item_id, "item_id")], update)

    def hide_item(self, item_id: Any, now: float, hidden: bool = True) -> int:
        """Hide (or, hidden=False, show again) an item; its attributes stay."""
        def update(key: str, old: dict | None, seq: int) -> dict:
            base = old or {"id": item_id, "attributes": None, "deleted": False, "expires_at": None,
                           "created_at": float(now), "seq": seq}
            return {**base, "hidden": bool(hidden)}

        return self._change("items", [_key(item_id, "item_id")], update)

    # -- users
    def upsert_users(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Each row: {user_id, attributes?: {column: value}} (merged; an upsert undoes a delete)."""
        parsed = []
        for i, r in enumerate(rows):
            if not isinstance(r, Mapping) or "user_id" not in r:
                raise DataError(f"users[{i}]: a user needs a user_id")
            extra = [k for k in r if k not in ("user_id", "attributes")]
            if extra:
                raise DataError(f"users[{i}]: unknown fields {extra}; a user has user_id, attributes")
            parsed.append((_key(r["user_id"], f"users[{i}].user_id"), r["user_id"],
                           _attributes(r.get("attributes"), f"users[{i}]")))
        if not parsed:
            raise DataError("users: nothing to upsert (an empty list)")
        by_key: dict[str, list] = {}
        for p in parsed:
            by_key.setdefault(p[0], []).append(p)

        def update(key: str, old: dict | None, seq: int) -> dict:
            rec = dict(old) if old else {"id": by_key[key][0][1], "attributes": {}, "deleted": False}
            for _, _, attrs in by_key[key]:
                rec["attributes"] = {**(rec.get("attributes") or {}), **attrs}
                rec["deleted"] = False
            return rec

        return self._change("users", list(by_key), update)

    def delete_user(self, user_id: Any) -> int:
        """The user is served as an unknown user from now on (no personalization)."""
        def update(key: str, old: dict | None, seq: int) -> dict:
            return {"id": user_id, "attributes": {}, "deleted": True}

        return self._change("users", [_key(user_id, "user_id")], update)


class MemoryCatalogue(Catalogue):
    """One process's catalogue (tests, in-memory services)."""

    def __init__(self) -> None:
        self._tables: dict[str, dict[str, dict]] = {"items": {}, "users": {}}
        self._version = 0
        self._seq = 0
        self._lock = threading.Lock()

    def _change(self, table: str, keys: list[str], update: Any) -> int:
        with self._lock:
            t = self._tables[table]
            for k in keys:
                self._seq += 1
                t[k] = update(k, t.get(k), self._seq)
            self._version += 1
            return self._version

    def version(self) -> int:
        return self._version

    def snapshot(self) -> CatalogueSnapshot:
        with self._lock:
            return CatalogueSnapshot(self._version, {k: dict(v) for k, v in self._tables["items"].items()},
                                     {k: dict(v) for k, v in self._tables["users"].items()})


class SQLiteCatalogue(Catalogue):
    """Tables items / users (key TEXT PRIMARY KEY, record JSON) and meta(version, seq) in one
    SQLite file in WAL mode; a change is one BEGIN IMMEDIATE transaction, so the workers of a
    host that share the file see each change whole."""

    def __init__(self, path: str | Path, synchronous: str = "NORMAL") -> None:
        if synchronous not in ("NORMAL", "FULL"):
            raise ConfigError(f"synchronous must be 'NORMAL' or 'FULL', got {synchronous!r}")
        self.path = Path(path)
        self._lock = threading.RLock()
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
            enable_wal(self.db)  # retried: replicas may open the same new file at once (core/sqlite.py)
            self.db.execute(f"PRAGMA synchronous={synchronous}")
            for t in ("items", "users"):
                self.db.execute(f"CREATE TABLE IF NOT EXISTS {t} (key TEXT PRIMARY KEY, record TEXT NOT NULL) WITHOUT ROWID")
            self.db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('version', 0), ('seq', 0)")
        except sqlite3.DatabaseError as e:
            raise ArtifactError(f"catalogue file {self.path} is not a usable SQLite database: {e}") from None

    def _change(self, table: str, keys: list[str], update: Any) -> int:
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                (seq,) = self.db.execute("SELECT value FROM meta WHERE name = 'seq'").fetchone()
                for k in keys:
                    seq += 1
                    row = self.db.execute(f"SELECT record FROM {table} WHERE key = ?", (k,)).fetchone()
                    rec = update(k, None if row is None else json.loads(row[0]), seq)
                    self.db.execute(f"INSERT OR REPLACE INTO {table} VALUES (?, ?)", (k, json.dumps(rec)))
                self.db.execute("UPDATE meta SET value = ? WHERE name = 'seq'", (seq,))
                self.db.execute("UPDATE meta SET value = value + 1 WHERE name = 'version'")
                (version,) = self.db.execute("SELECT value FROM meta WHERE name = 'version'").fetchone()
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            return int(version)

    def version(self) -> int:
        with self._lock:
            return int(self.db.execute("SELECT value FROM meta WHERE name = 'version'").fetchone()[0])

    def snapshot(self) -> CatalogueSnapshot:
        with self._lock:
            self.db.execute("BEGIN")  # one read transaction: the version and the records agree
            try:
                version = int(self.db.execute("SELECT value FROM meta WHERE name = 'version'").fetchone()[0])
                tables = {t: {k: json.loads(r) for k, r in self.db.execute(f"SELECT key, record FROM {t}")}
                          for t in ("items", "users")}
            finally:
                self.db.execute("COMMIT")
        return CatalogueSnapshot(version, tables["items"], tables["users"])

    def close(self) -> None:
        with self._lock:
            self.db.close()


class RedisCatalogue(Catalogue):
    """Hashes `{prefix}catalogue:items` / `:users` (key → record JSON) and the counters
    `{prefix}catalogue:version` / `:seq`; a change is an optimistic WATCH/MULTI transaction
    (retried when another replica changed the same hash meanwhile)."""

    def __init__(self, url: str, prefix: str = "funnelrec:") -> None:
        import redis

        self.client = redis.Redis.from_url(url)
        self.where = url
        self.base = f"{prefix}catalogue:"
        try:
            self.client.ping()
        except redis.RedisError as e:
            raise ConfigError(f"cannot reach Redis at {url}: {e}") from None

    def _change(self, table: str, keys: list[str], update: Any) -> int:
        import redis

        h = self.base + table
        while True:
            with self.client.pipeline() as pipe:
                try:
                    pipe.watch(h, self.base + "seq")
                    old = pipe.hmget(h, keys)
                    seq = int(pipe.get(self.base + "seq") or 0)
                    recs = {}
                    for k, o in zip(keys, old):
                        seq += 1
                        recs[k] = json.dumps(update(k, None if o is None else json.loads(o), seq))
                    pipe.multi()
                    pipe.hset(h, mapping=recs)
                    pipe.set(self.base + "seq", seq)
                    pipe.incr(self.base + "version")
                    return int(pipe.execute()[-1])
                except redis.WatchError:
                    continue

    def version(self) -> int:
        return int(self.client.get(self.base + "version") or 0)

    def snapshot(self) -> CatalogueSnapshot:
        with self.client.pipeline(transaction=True) as pipe:  # MULTI: one consistent read
            pipe.get(self.base + "version")
            pipe.hgetall(self.base + "items")
            pipe.hgetall(self.base + "users")
            v, items, users = pipe.execute()
        dec = {k.decode(): json.loads(r) for k, r in items.items()}
        return CatalogueSnapshot(int(v or 0), dec, {k.decode(): json.loads(r) for k, r in users.items()})

    def close(self) -> None:
        self.client.close()


def open_catalogue(backend: str, *, state_dir: str | Path | None = None, redis_url: str | None = None,
                   prefix: str = "funnelrec:") -> Catalogue:
    """The catalogue of a service's state backend ("memory", "sqlite" in `state_dir`, "redis")."""
    if backend == "memory":
        return MemoryCatalogue()
    if backend == "sqlite":
        if not state_dir:
            raise ConfigError("the 'sqlite' catalogue needs state_dir")
        return SQLiteCatalogue(Path(state_dir) / "catalogue.db")
    if backend == "redis":
        if not redis_url:
            raise ConfigError("the 'redis' catalogue needs redis_url")
        return RedisCatalogue(redis_url, prefix)
    raise ConfigError(f"unknown catalogue backend {backend!r}; known: memory, sqlite, redis")


@numba.njit(cache=True, nogil=True)
def rows_with_any(indptr, indices, rows, codes):
    """(len(rows),) bool: row r of the CSR pattern (indptr, indices) holds any of `codes` (sorted
    int64) — O(Σ |row| · log |codes|) over the given rows only, never the whole matrix."""
    out = np.zeros(rows.size, np.bool_)
    for k in range(rows.size):
        r = rows[k]
        for q in range(indptr[r], indptr[r + 1]):
            pos = np.searchsorted(codes, indices[q])
            if pos < codes.size and codes[pos] == indices[q]:
                out[k] = True
                break
    return out


class UnknownEntity(DataError):
    """An item or user id that neither the served catalogue nor the live one knows (HTTP 404)."""


def item_frame(rows: list[Mapping[str, Any]], items: Any, where: str = "items") -> Any:
    """A polars frame of `rows` ({item_id, column: value}) typed as the items table `items`: a
    column the table lacks is a DataError naming it, a value of the wrong type one naming it too."""
    return _typed_frame(rows, items, where, "item")


def user_frame(rows: list[Mapping[str, Any]], users: Any, where: str = "users") -> Any:
    """`item_frame` for rows ({user_id, column: value}) of the users table `users`."""
    return _typed_frame(rows, users, where, "user")


def _typed_frame(rows: list[Mapping[str, Any]], items: Any, where: str, entity: str) -> Any:
    import polars as pl

    cols = list(dict.fromkeys(c for r in rows for c in r))
    bad = [c for c in cols if c not in items.columns or c == f"{entity}_idx"]
    if bad:
        raise DataError(f"{where}: unknown {entity} columns {bad}; the {entity}s table has: "
                        f"{', '.join(c for c in items.columns if c != f'{entity}_idx')}")
    schema = {c: items.schema[c] for c in cols}
    lists = {c for c in cols if isinstance(schema[c], pl.List)}
    norm = []
    for i, r in enumerate(rows):
        r = dict(r)
        for c, v in r.items():
            if c in lists and v is not None and not isinstance(v, list | tuple):
                r[c] = [v]  # one value of a multi-valued column
            elif c not in lists and isinstance(v, list | tuple | dict):
                raise DataError(f"{where}[{i}].{c}: one value expected ({schema[c]}), got {type(v).__name__}")
        norm.append(r)
    try:
        return pl.from_dicts(norm, schema=schema, strict=True)
    except (pl.exceptions.PolarsError, TypeError, ValueError, OverflowError) as e:
        for c in cols:  # name the column whose values do not fit
            try:
                pl.from_dicts([{c: r.get(c)} for r in norm], schema={c: schema[c]}, strict=True)
            except (pl.exceptions.PolarsError, TypeError, ValueError, OverflowError):
                raise DataError(f"{where}: values of column {c!r} are not {schema[c]}") from None
        raise DataError(f"{where}: {str(e).splitlines()[0][:200]}") from None
