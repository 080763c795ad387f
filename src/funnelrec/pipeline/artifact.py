"""The funnel artifact: a versioned directory of components, each saved and loaded on its own,
none of it pickle (core/persist.py writes each part; loading reads data, imports only
``funnelrec.*`` classes and rebuilds models through their registries).

    artifact/
      manifest.json        format, format_version 2, created (UTC), funnelrec version, the
                           funnel config, the data's schema, and per component: its directory,
                           class, files {relative path: sha256} and total bytes
      dataset/             one `save_state` directory per component: state.json + data files
      stats/
      channels/itemcf/     component "channels/itemcf"
      ranker/
      prerank/

    save_artifact("artifact", funnel.components(), config=config_dict, schema=schema)
    manifest, parts = load_artifact("artifact", parts=["ranker"])   # reads only ranker/
    save_component("artifact", "ranker", new_ranker)                  # swaps one part in place

Writes are atomic: the artifact is built in ``<dir>.tmp-<pid>`` and renamed, so a crash never
leaves half an artifact under the real name. A format-1 artifact (one pickled ``Funnel`` file)
is refused with the way out: re-train, or `pipeline/convert.py: convert_pickle_artifact`
(unpickles — offline, only for files you trust).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from funnelrec.core.errors import ArtifactError
from funnelrec.core.persist import STATE_FILE, class_path, load_state, read_json, save_state

FORMAT = "funnelrec-artifact"
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
PICKLE_MAGIC = b"funnelrec-funnel-v1\n"  # format 1: the whole Funnel pickled behind this header


def format1_error(path: Path) -> ArtifactError:
    return ArtifactError(
        f"{path} is a format-1 pickled funnel; this version loads only artifact directories (no pickle on the "
        f"serve path): re-train with `funnelrec train`, or convert it once with `funnelrec artifact convert OLD NEW` "
        f"(unpickles: only for files you trust)")


def component_dir(name: str) -> str:
    """The directory (relative, "/"-separated) of component `name`: each "/"-part of the name
    becomes one directory level, percent-quoted to [A-Za-z0-9_.-] ("channels/item cf" →
    "channels/item%20cf")."""
    if not isinstance(name, str) or not name:
        raise ArtifactError(f"component name must be a non-empty string, got {name!r}")
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ArtifactError(f"component name {name!r}: empty, '.' or '..' path parts are not allowed")
    out = "/".join(quote(p, safe="") for p in parts)
    if out == MANIFEST:
        raise ArtifactError(f"component name {name!r} is reserved")
    return out


def plain_data(v: Any, where: str = "config") -> Any:
    """A config (dataclasses, tuples, nested) as plain JSON data: dicts, lists, scalars."""
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: plain_data(getattr(v, f.name), f"{where}.{f.name}") for f in dataclasses.fields(v)}
    if isinstance(v, list | tuple):
        return [plain_data(x, f"{where}[{i}]") for i, x in enumerate(v)]
    if isinstance(v, dict):
        return {str(k): plain_data(x, f"{where}.{k}") for k, x in v.items()}
    if v is None or isinstance(v, bool | int | float | str):
        return v
    raise ArtifactError(f"{where}: {type(v).__name__} is not plain config data (dict, list, str, number, bool)")


def dataset_schema(dataset: Any) -> dict[str, dict[str, str]]:
    """{table: {column: polars dtype}} of a dataset's users, items and interactions."""
    return {name: {c: str(t) for c, t in getattr(dataset, name).schema.items()}
            for name in ("users", "items", "interactions") if hasattr(dataset, name)}


def _version() -> str:
    import funnelrec

    return getattr(funnelrec, "__version__", "unknown")


def _write_part(root: Path, name: str, obj: Any, rel: str | None = None) -> dict:
    rel = rel or component_dir(name)
    files = save_state(obj, root / rel)
    return {"path": rel, "class": class_path(obj), "files": files,
            "bytes": sum((root / rel / f).stat().st_size for f in files)}


def _is_artifact_dir(p: Path) -> bool:
    return p.is_dir() and (p / MANIFEST).is_file()


def save_artifact(directory: str | Path, components: dict[str, Any], config: Any,
                  schema: dict | None = None, meta: dict | None = None) -> Path:
    """Write `components` ({name: object}) as an artifact directory; returns its path.
    `config`: the funnel config (plain dict or dataclass); `schema`: the data's schema
    ({table: {column: dtype}}; default: taken from a "dataset" component); `meta`: any
    plain JSON facts (fit times, …). An existing artifact at `directory` is replaced whole."""
    directory = Path(directory)
    if directory.exists() and not _is_artifact_dir(directory):
        raise ArtifactError(f"{directory}: exists and is not a funnelrec artifact directory; "
                            f"remove it or choose another path")
    dirs = {name: component_dir(name) for name in components}
    for a, da in dirs.items():
        for b, db in dirs.items():
            if a != b and db.startswith(da + "/"):
                raise ArtifactError(f"component {b!r} would sit inside component {a!r}; rename one")
    if schema is None and "dataset" in components:
        schema = dataset_schema(components["dataset"])
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION,
                "created": datetime.now(UTC).isoformat(timespec="seconds"), "funnelrec": _version(),
                "config": plain_data(config), "schema": plain_data(schema or {}, "schema"),
                "meta": plain_data(meta or {}, "meta"), "components": {}}
    tmp = directory.with_name(f"{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for name, obj in components.items():
            manifest["components"][name] = _write_part(tmp, name, obj, dirs[name])
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, allow_nan=False))
        (tmp / LOCK).touch()  # from the start, so that every reader takes it (see artifact_lock)
        _swap_in(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def _swap_in(tmp: Path, target: Path) -> None:
    """Rename `tmp` to `target`; an existing `target` is moved aside first and removed after."""
    if not target.exists():
        os.rename(tmp, target)
        return
    old = target.with_name(f"{target.name}.old-{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)
    os.rename(target, old)
    os.rename(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def read_manifest(directory: str | Path) -> dict:
    """The artifact's manifest, checked: format, version, and each component's path inside it."""
    directory = Path(directory)
    if directory.is_file():
        with open(directory, "rb") as f:
            head = f.read(len(PICKLE_MAGIC))
        if head == PICKLE_MAGIC:
            raise format1_error(directory)
        raise ArtifactError(f"{directory}: a file, not a funnelrec artifact directory")
    if not directory.exists():
        raise ArtifactError(f"{directory}: funnel artifact not found; train one with `funnelrec train`")
    p = directory / MANIFEST
    m = read_json(p, "a funnelrec artifact directory")
    if m.get("format") != FORMAT:
        raise ArtifactError(f"{p}: not a {FORMAT} manifest (format={m.get('format')!r})")
    v = m.get("format_version")
    if v != FORMAT_VERSION:
        newer = isinstance(v, int) and v > FORMAT_VERSION
        raise ArtifactError(f"{p}: format version {v!r}; this funnelrec reads version {FORMAT_VERSION}"
                            + (" (written by a newer funnelrec: upgrade)" if newer else ""))
    comps = m.get("components")
    if not isinstance(comps, dict):
        raise ArtifactError(f"{p}: corrupt (no components)")
    root = directory.resolve()
    for name, e in comps.items():
        if not (isinstance(e, dict) and isinstance(e.get("path"), str) and isinstance(e.get("files"), dict)):
            raise ArtifactError(f"{p}: component {name!r}: corrupt entry")
        if not (root / e["path"]).resolve().is_relative_to(root):
            raise ArtifactError(f"{p}: component {name!r}: path {e['path']!r} leaves the artifact directory")
    return m


LOCK = ".lock"


@contextmanager
def artifact_lock(directory: Path, exclusive: bool) -> Iterator[None]:
    """flock on `<artifact>/.lock`: `save_component` holds it exclusively for its whole
    read-manifest → write part → replace manifest → remove old part sequence (two publishers —
    the learner's ranker, a job's channel — would otherwise each keep only their own update);
    readers hold it shared, so a part is never removed under them. A read-only artifact with no
    lock file is read without one (nobody can be writing it)."""
    p = directory / LOCK
    try:
        fd = os.open(p, os.O_RDWR | os.O_CREAT if exclusive else os.O_RDONLY)
    except OSError:
        if exclusive:
            raise ArtifactError(f"{p}: cannot lock the artifact for writing") from None
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the lock


def load_artifact(directory: str | Path, parts: list[str] | None = None, verify: bool = True,
                  mmap: bool = False) -> tuple[dict, dict[str, Any]]:
    """(manifest, {name: object}) of the components in `parts` (default: all); the others are
    not read. verify: check the sha256 of every file of each loaded part against the manifest.
    mmap: memory-map the parts' arrays read-only (shared between the workers of a machine)."""
    directory = Path(directory)
    m = read_manifest(directory)
    with artifact_lock(directory, exclusive=False):
        m = read_manifest(directory)  # again under the lock: the parts it names stay while we read
        return m, _load_parts(directory, m, parts, verify, mmap)


def _load_parts(directory: Path, m: dict, parts: list[str] | None, verify: bool, mmap: bool) -> dict[str, Any]:
    comps = m["components"]
    names = list(comps) if parts is None else list(dict.fromkeys(parts))
    unknown = [n for n in names if n not in comps]
    if unknown:
        raise ArtifactError(f"{directory}: no component {', '.join(map(repr, unknown))}; "
                            f"components: {', '.join(comps)}")
    out = {}
    for n in names:
        e = comps[n]
        out[n] = load_state(directory / e["path"], verify=verify, checksums=e["files"] if verify else None, mmap=mmap)
    return out


def save_component(directory: str | Path, name: str, obj: Any) -> dict:
    """Write (or replace) component `name` of an existing artifact: the part is written beside
    the old one, then the manifest is replaced atomically, then the old part removed. Returns
    the component's manifest entry. A reader that read the old manifest and is still reading
    the old part can meet a missing file (a clear ArtifactError; reading again succeeds)."""
    directory = Path(directory)
    read_manifest(directory)  # a clear error before any lock file is created
    with artifact_lock(directory, exclusive=True):
        return _save_component_locked(directory, name, obj)


def _save_component_locked(directory: Path, name: str, obj: Any) -> dict:
    m = read_manifest(directory)
    rel = component_dir(name)
    old = m["components"].get(name, {}).get("path")
    # a fresh directory name each time: the old part stays intact until the manifest moves on
    k = 1
    while (directory / f"{rel}.v{k}").exists():
        k += 1
    new_rel = f"{rel}.v{k}" if old is not None else rel
    for other, e in m["components"].items():
        p = e["path"]
        if other != name and (p == new_rel or p.startswith(new_rel + "/") or new_rel.startswith(p + "/")):
            raise ArtifactError(f"component {name!r} would overlap component {other!r}; rename one")
    try:
        entry = _write_part(directory, name, obj, new_rel)
    except BaseException:
        shutil.rmtree(directory / new_rel, ignore_errors=True)
        raise
    m["components"][name] = entry
    tmp = directory / f"{MANIFEST}.tmp-{os.getpid()}-{uuid.uuid4().hex}"
    tmp.write_text(json.dumps(m, indent=1, allow_nan=False))
    os.replace(tmp, directory / MANIFEST)
    if old is not None and old != new_rel:
        shutil.rmtree(directory / old, ignore_errors=True)
    return entry


__all__ = ["FORMAT", "FORMAT_VERSION", "STATE_FILE", "component_dir", "dataset_schema", "load_artifact", "plain_data", "read_manifest", "save_artifact", "save_component"]
