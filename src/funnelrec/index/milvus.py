"""``Milvus:<INDEX_TYPE>[,<param>=<value>…][,uri=<server>]``: a vector index held by Milvus.

By default the collection lives in an embedded **milvus-lite** database (a local directory the
index owns, served to pymilvus over a loopback gRPC port by milvus-lite's in-process server);
with ``uri=http://host:19530`` it lives on a Milvus server. Either way funnelrec talks to it
through the same client, ``pymilvus.MilvusClient`` (optional dependency: ``pip install
'funnelrec[milvus]'``, which ``make install`` installs).

The factory string follows our grammar (index type first, comma-separated components, saved
with the index): Milvus's own index type name and its build parameters, e.g.

    Milvus:FLAT                                  exact
    Milvus:HNSW,M=16,efConstruction=200          graph (Milvus's HNSW: ``M``, ``efConstruction``)
    Milvus:IVF_FLAT,nlist=1024                   inverted lists
    Milvus:HNSW,M=16,uri=http://127.0.0.1:19530  the same on a server (``uri`` last: it may hold ``,``)

Search knobs go through ``VectorIndex.set_params`` as for faiss and are saved in index.json:
``efSearch`` (Milvus's ``ef``; ``ef`` is accepted too) and ``nprobe``. Embedded, ef reaches the
graph as given — milvus-lite's HNSW *is* a faiss ``IndexHNSWFlat``, so the same M, efConstruction
and ef answer id for id as faiss's ``HNSW<M>`` (tests/index/test_milvus.py), also when k > ef (a
recall channel asks for n + |seen| ≫ ef; faiss then keeps exploring only ef candidates). A Milvus
server (Knowhere) refuses ef < k, so with ``uri`` a search explores ``max(ef, k)``.

Scores follow the VectorIndex convention: ⟨q, x⟩ for ``ip`` (Milvus's IP distance is the inner
product itself), ``-‖q − x‖²`` for ``l2`` (Milvus reports the squared distance).

On disk (``index.milvus``): with milvus-lite, a tar of the database directory after a flush —
segments as Parquet plus the built index files (an HNSW graph is stored, not rebuilt, so a
loaded index answers exactly as the saved one). Loading extracts it into a private temporary
directory, because milvus-lite serves one database to one process (its LOCK) and must write
(WAL, manifest) where it runs: every serving worker gets its own copy, and the artifact's files
stay untouched (they may be hard-linked into other published versions). With a server the
tar holds only ``remote.json`` (uri, collection, row count): the server owns the vectors, and
loading reconnects and checks the count.

Why milvus-lite's build parameters are sent twice: pymilvus 3 sends them as flat key/value
pairs (what a Milvus server reads), milvus-lite 3.2 reads only the legacy JSON ``params`` key
and would otherwise build with its defaults whatever the factory said (checked by
tests/index/test_milvus.py, M=4 ≠ M=16). A Milvus server accepts both.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import tarfile
import tempfile
import time
import uuid
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from funnelrec.core.errors import ArtifactError, ConfigError
from funnelrec.core.registry import VECTOR_INDEXES

PREFIX = "Milvus:"
# what milvus-lite 3.2 builds; a server builds more (IVF_PQ, DISKANN, SCANN, …): any of these names
INDEX_TYPES = ("FLAT", "HNSW", "HNSW_SQ", "HNSW_PQ", "IVF_FLAT", "IVF_SQ8", "IVF_PQ", "SCANN", "DISKANN", "AUTOINDEX")
_BUILD_PARAMS = {  # the parameters each index type takes (Milvus's names)
    "FLAT": (), "AUTOINDEX": (),
    "HNSW": ("M", "efConstruction"), "HNSW_SQ": ("M", "efConstruction", "sq_type"),
    "HNSW_PQ": ("M", "efConstruction", "m", "nbits"),
    "IVF_FLAT": ("nlist",), "IVF_SQ8": ("nlist",), "IVF_PQ": ("nlist", "m", "nbits"), "SCANN": ("nlist",),
    "DISKANN": (),
}
_SEARCH_PARAMS = {"efSearch": "ef", "ef": "ef", "nprobe": "nprobe"}
_TOPK_MAX = 16384  # Milvus's limit on one search's top k
_INSERT_ROWS = 10_000
_COLLECTION, _FIELD = "funnelrec", "vector"
_SCHEMES = ("http://", "https://", "tcp://", "unix:")
_PARAM = re.compile(r"^(?P<key>[A-Za-z_]\w*)=(?P<value>[^=,]+)$")


def parse_milvus_factory(factory: str) -> tuple[str, dict[str, Any], str | None]:
    """``Milvus:HNSW,M=16,efConstruction=200[,uri=…]`` → (index type, build params, uri).

    >>> parse_milvus_factory("Milvus:HNSW,M=16,efConstruction=200")
    ('HNSW', {'M': 16, 'efConstruction': 200}, None)
    >>> parse_milvus_factory("Milvus:FLAT,uri=http://127.0.0.1:19530")
    ('FLAT', {}, 'http://127.0.0.1:19530')
    """
    if not factory.startswith(PREFIX):
        raise ConfigError(f"vector index factory {factory!r}: a Milvus index starts with {PREFIX!r}")
    body, uri = factory[len(PREFIX):], None
    if ",uri=" in body or body.startswith("uri="):
        body, _, uri = body.partition("uri=")
        body = body.rstrip(",")
        if not uri.startswith(_SCHEMES):
            raise ConfigError(f"vector index factory {factory!r}: Milvus uri {uri!r} must start with "
                              f"{', '.join(_SCHEMES)} (a server); leave uri out for an embedded milvus-lite")
    parts = [p.strip() for p in body.split(",")] if body else []
    if not parts or not parts[0]:
        raise ConfigError(f"vector index factory {factory!r}: name Milvus's index type first, "
                          f"one of {', '.join(INDEX_TYPES)} (e.g. 'Milvus:HNSW,M=16')")
    index_type = parts[0]
    if index_type not in INDEX_TYPES:
        raise ConfigError(f"vector index factory {factory!r}: unknown Milvus index type {index_type!r}; "
                          f"known: {', '.join(INDEX_TYPES)}")
    params: dict[str, Any] = {}
    for p in parts[1:]:
        m = _PARAM.match(p)
        if m is None:
            raise ConfigError(f"vector index factory {factory!r}: {p!r} is not a <param>=<value> component")
        key, value = m["key"], m["value"]
        if key not in _BUILD_PARAMS[index_type]:
            known = ", ".join(_BUILD_PARAMS[index_type]) or "none"
            raise ConfigError(f"vector index factory {factory!r}: {index_type} has no build parameter {key!r} "
                              f"(known: {known}; search knobs such as efSearch/nprobe go in the index params)")
        if key == "sq_type":
            params[key] = value
            continue
        try:
            params[key] = int(value)
        except ValueError:
            raise ConfigError(f"vector index factory {factory!r}: {key}={value!r} must be an integer") from None
        if params[key] < 1:
            raise ConfigError(f"vector index factory {factory!r}: {key} must be ≥ 1, got {params[key]}")
    return index_type, params, uri


def _pymilvus(factory: str):
    try:
        import pymilvus
    except ImportError:
        raise ConfigError(f"vector index {factory!r} needs pymilvus (and milvus-lite for a local index): "
                          f"pip install 'funnelrec[milvus]'") from None
    return pymilvus


def _reason(e: Exception) -> str:
    msg = getattr(e, "message", None) or str(e)
    return str(msg).strip().splitlines()[-1][:200] if str(msg).strip() else type(e).__name__


def _close(client: Any, db: str | None, tmp: str | None) -> None:
    """Release what one index holds: its client, milvus-lite's server for its directory, the directory."""
    try:
        client.close()
    except Exception:  # noqa: BLE001 — best effort at garbage collection / exit
        pass
    if db is not None:
        try:
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(db)
        except Exception:  # noqa: BLE001
            pass
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)


@VECTOR_INDEXES.register("milvus")
class MilvusBackend:
    """One Milvus collection (int64 primary key = the dense item index, one float vector field)."""

    file_name = "index.milvus"
    is_trained = True  # Milvus trains IVF quantizers itself when it builds a segment's index

    def __init__(self, factory: str, dim: int, metric: str) -> None:
        self.factory, self.dim, self.metric = factory, int(dim), metric
        self.index_type, self.build_params, self.uri = parse_milvus_factory(factory)
        _pymilvus(factory)
        if self.uri is None:
            try:
                import milvus_lite  # noqa: F401
            except ImportError:
                raise ConfigError(f"vector index {factory!r}: an embedded Milvus needs milvus-lite "
                                  f"(pip install 'funnelrec[milvus]'), or give a server with ,uri=…") from None
        self.search_params: dict[str, int] = {}
        self.collection = _COLLECTION if self.uri is None else f"funnelrec_{uuid.uuid4().hex[:16]}"
        self.client: Any = None
        self._tmp: str | None = None
        self._n = 0
        self.read_only = False

    # -- connection
    def _connect(self, tmp: str | None = None) -> None:
        """Open the client: milvus-lite on a private directory (``tmp``, created if None) or the server."""
        pymilvus = _pymilvus(self.factory)
        if self.uri is None:
            self._tmp = tmp or tempfile.mkdtemp(prefix="funnelrec-milvus-")
            db = str(Path(self._tmp) / "index.db")
            target = db
        else:
            db, target = None, self.uri
        try:
            self.client = pymilvus.MilvusClient(uri=target, timeout=10)
        except Exception as e:  # noqa: BLE001 — pymilvus raises its own and grpc's errors
            if self._tmp is not None:
                shutil.rmtree(self._tmp, ignore_errors=True)
            where = f"milvus-lite in {self._tmp}" if self.uri is None else f"Milvus server {self.uri}"
            raise ConfigError(f"vector index {self.factory!r}: cannot connect to {where} ({_reason(e)})") from None
        self._finalizer = weakref.finalize(self, _close, self.client, db, self._tmp)

    def _create(self) -> None:
        from pymilvus import DataType

        c = self.client
        schema = c.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field(_FIELD, DataType.FLOAT_VECTOR, dim=self.dim)
        try:  # the index comes after the rows (`_build_index`)
            c.create_collection(self.collection, schema=schema)
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f"vector index {self.factory!r}: Milvus refused the collection ({_reason(e)})") from None

    def _index_params(self):
        index_params = self.client.prepare_index_params()
        # flat keys for a server, the JSON `params` key for milvus-lite (module docstring)
        params = dict(self.build_params)
        if params:
            params["params"] = dict(self.build_params)
        index_params.add_index(field_name=_FIELD, index_type=self.index_type,
                               metric_type="IP" if self.metric == "ip" else "L2", params=params)
        return index_params

    # -- build
    def train(self, x: np.ndarray) -> None:
        pass

    def add(self, x: np.ndarray, ids: np.ndarray | None) -> None:
        first = self.client is None
        if first:
            self._connect()
            self._create()
        if ids is None:
            ids = np.arange(self._n, self._n + len(x), dtype=np.int64)
        ids = ids.tolist()
        try:
            if not first:  # the index is rebuilt over all rows (`_build_index`)
                self.client.release_collection(self.collection)
                self.client.drop_index(self.collection, index_name=_FIELD)
            for a in range(0, len(x), _INSERT_ROWS):
                rows = x[a : a + _INSERT_ROWS]
                self.client.insert(self.collection, [{"id": i, _FIELD: v} for i, v in zip(ids[a : a + _INSERT_ROWS], rows)])
            self._build_index(self._n + len(x))
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f"vector index {self.factory!r} cannot add these vectors ({_reason(e)})") from None
        self._n += len(x)

    def _build_index(self, total: int, timeout_s: float = 600.0) -> None:
        """Seal the inserted rows, then build the index over every sealed segment and load.

        Why rows first and no index while they arrive: Milvus builds a sealed segment's index
        asynchronously (milvus-lite on a background thread, writing the index file there) and
        answers from the raw rows, exactly, until it is done — a search right after ``add`` would
        be exact or approximate by a race, and reloading meanwhile can read a half-written index
        file. Without an index nothing is built in the background; ``create_index`` then builds
        every segment's index (milvus-lite: inline, in the call) and a server is polled until it
        reports every row indexed. A later ``add`` releases and drops the index first (milvus-lite
        waits for its background work there) and rebuilds it over all rows.
        """
        c = self.client
        c.flush(self.collection)
        c.create_index(self.collection, self._index_params())
        if self.uri is not None and self.index_type != "FLAT":
            deadline = time.monotonic() + timeout_s
            while True:
                info = c.describe_index(self.collection, index_name=_FIELD) or {}
                if int(info.get("pending_index_rows", 0)) == 0 and int(info.get("indexed_rows", total)) >= total:
                    break
                if time.monotonic() > deadline:
                    raise ConfigError(f"vector index {self.factory!r}: Milvus at {self.uri} has not built the "
                                      f"index after {timeout_s:.0f} s ({info})")
                time.sleep(0.2)
        c.load_collection(self.collection)

    @property
    def ntotal(self) -> int:
        return self._n

    # -- search
    def set_param(self, name: str, value: int) -> None:
        if name == "efConstruction":
            raise ConfigError(f"vector index {self.factory!r}: efConstruction is a build parameter of the "
                              f"factory string (e.g. 'Milvus:HNSW,M=16,efConstruction=200')")
        if name not in _SEARCH_PARAMS:
            raise ConfigError(f"vector index {self.factory!r} has no search parameter {name!r} "
                              f"(Milvus: efSearch or ef, nprobe)")
        if int(value) < 1:
            raise ConfigError(f"vector index {self.factory!r}: {name} must be ≥ 1, got {value}")
        self.search_params[_SEARCH_PARAMS[name]] = int(value)

    def search(self, q: np.ndarray, k: int, k_base: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        kk = min(k, self._n)
        if kk > _TOPK_MAX:
            raise ConfigError(f"vector index {self.factory!r}: Milvus returns at most {_TOPK_MAX} results per "
                              f"query, asked for {kk} (k + excluded ids)")
        params = dict(self.search_params)
        if self.uri is not None and self.index_type.startswith("HNSW"):
            params["ef"] = max(params.get("ef", 64), kk)  # a server (Knowhere) refuses ef < k; 64: its default
        try:
            res = self.client.search(self.collection, data=q, limit=kk, anns_field=_FIELD,
                                     search_params={"metric_type": "IP" if self.metric == "ip" else "L2",
                                                    "params": params})
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f"vector index {self.factory!r}: Milvus search failed ({_reason(e)})") from None
        ids = np.full((len(q), k), -1, np.int64)
        scores = np.full((len(q), k), -np.inf, np.float32)
        for r, hits in enumerate(res):
            m = len(hits.ids)
            ids[r, :m] = hits.ids
            scores[r, :m] = hits.distances
        if self.metric == "l2":
            np.negative(scores, out=scores, where=ids >= 0)
        return scores, ids

    # -- io
    def save(self, path: Path) -> None:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            if self.uri is None:  # every row was flushed and indexed by `add`: the files are complete
                root = Path(self._tmp) / "index.db"
                for f in sorted(root.rglob("*")):
                    if f.is_file() and f.name != "LOCK":  # the LOCK is the running process's own
                        tar.add(f, arcname=str(f.relative_to(root)), recursive=False)
            else:
                meta = json.dumps({"uri": self.uri, "collection": self.collection, "ntotal": self._n}).encode()
                info = tarfile.TarInfo("remote.json")
                info.size = len(meta)
                tar.addfile(info, io.BytesIO(meta))
        Path(path).write_bytes(buf.getvalue())

    @classmethod
    def load(cls, path: Path, factory: str, mmap: bool, dim: int, metric: str) -> MilvusBackend:
        self = cls(factory, dim, metric)
        try:
            tar = tarfile.open(path, mode="r")
        except (tarfile.TarError, OSError) as e:
            raise ArtifactError(f"{path}: not a Milvus index archive ({e})") from None
        with tar:
            if self.uri is None:
                tmp = tempfile.mkdtemp(prefix="funnelrec-milvus-")
                try:
                    tar.extractall(Path(tmp) / "index.db", filter="data")
                except (tarfile.TarError, OSError) as e:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise ArtifactError(f"{path}: cannot extract the milvus-lite database ({e})") from None
                self._connect(tmp)
            else:
                try:
                    meta = json.loads(tar.extractfile("remote.json").read())
                except (KeyError, AttributeError, json.JSONDecodeError) as e:
                    raise ArtifactError(f"{path}: no readable remote.json for server {self.uri} ({e})") from None
                self.collection = meta["collection"]
                self._connect()
        try:
            if not self.client.has_collection(self.collection):
                raise ArtifactError(f"{path}: Milvus ({self.uri or 'milvus-lite'}) has no collection {self.collection!r}")
            self.client.load_collection(self.collection)
            self._n = int(self.client.get_collection_stats(self.collection)["row_count"])
        except ArtifactError:
            raise
        except Exception as e:  # noqa: BLE001
            raise ArtifactError(f"{path}: cannot open the Milvus collection ({_reason(e)})") from None
        self.read_only = mmap
        return self

    def memory_bytes(self) -> int:
        """Bytes of the database directory (segments + index files), ≈ what milvus-lite keeps in RAM."""
        if self.uri is not None or self._tmp is None:
            return int(self._n * self.dim * 4)
        return int(sum(f.stat().st_size for f in Path(self._tmp).rglob("*") if f.is_file()))
