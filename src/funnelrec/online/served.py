"""The served directory the online learner publishes to, read side (what a server watches).

    served/
      versions/v000001/   a complete artifact directory (pipeline/artifact.py layout)
      versions/v000002/   unchanged parts hard-linked from v000001, changed parts written anew
      CURRENT             the live version's name ("v000002\\n"), replaced atomically
      learner_status.json the learner's last step: version, offset, events seen, lag (for /health)

The writer is online/publish.py; this module imports nothing from pipeline/, so the service
(pipeline/service.py) can watch a served directory without depending on the learner.

`ServedWatcher(served_dir, reload, interval_s)`: a daemon thread that reads CURRENT every
`interval_s`; when it names another version it calls `reload(path, parts)` with the parts whose
files differ from the version loaded before (`changed_parts`: compared by the sha256 of every
file in the two manifests; None = reload everything — at the first pick-up, or when the
dataset, stats or the config changed, which every other part depends on). A failed reload is
logged and retried at the next poll; the old version keeps serving.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from funnelrec.core.errors import ArtifactError, FunnelrecError

_log = logging.getLogger(__name__)

CURRENT = "CURRENT"
VERSIONS = "versions"
STATUS = "learner_status.json"
#: parts every other part is built against: when one of them changes, the whole funnel reloads
WHOLE = ("dataset", "stats")


def version_name(n: int) -> str:
    return f"v{n:06d}"


def current_version(served_dir: str | Path) -> str | None:
    """The name CURRENT holds, None when there is none yet."""
    try:
        name = (Path(served_dir) / CURRENT).read_text().strip()
    except FileNotFoundError:
        return None
    if not name or "/" in name or name.startswith("."):
        raise ArtifactError(f"{Path(served_dir) / CURRENT}: does not name a version ({name!r})")
    return name


def version_dir(served_dir: str | Path, name: str) -> Path:
    return Path(served_dir) / VERSIONS / name


def current_dir(served_dir: str | Path) -> Path | None:
    name = current_version(served_dir)
    return None if name is None else version_dir(served_dir, name)


def _manifest(directory: Path) -> dict:
    try:
        return json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{directory}: no readable manifest.json ({e})") from None


def changed_parts(old: Path | None, new: Path) -> list[str] | None:
    """The components of `new` whose files (by sha256) differ from `old`'s; None = all (no old
    version, a part added or removed, a WHOLE part or the config changed)."""
    if old is None:
        return None
    a, b = _manifest(old), _manifest(new)
    ca, cb = a.get("components", {}), b.get("components", {})
    if set(ca) != set(cb) or a.get("config") != b.get("config"):
        return None
    parts = [n for n in cb if sorted(ca[n].get("files", {}).values()) != sorted(cb[n].get("files", {}).values())
             or ca[n].get("class") != cb[n].get("class")]
    if any(p in WHOLE for p in parts):
        return None
    return parts


def read_status(served_dir: str | Path) -> dict[str, Any] | None:
    """The learner's status JSON, None when there is none (or it is being replaced)."""
    try:
        return json.loads((Path(served_dir) / STATUS).read_text())
    except (OSError, ValueError):
        return None


def write_atomic(path: Path, text: str) -> None:
    """Write + fsync a temporary file, os.replace it over `path`, fsync the directory: a reader
    sees the old or the new content, and after a crash the new one is there or the old."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ServedWatcher:
    """Polls a served directory's CURRENT and reloads a new version (module doc)."""

    def __init__(self, served_dir: str | Path, reload: Callable[[str, list[str] | None], Any],
                 interval_s: float = 2.0, loaded: str | Path | None = None) -> None:
        if interval_s <= 0:
            raise FunnelrecError(f"watch_interval_s must be > 0, got {interval_s}")
        self.served_dir = Path(served_dir)
        self.reload = reload
        self.interval_s = float(interval_s)
        self.loaded: Path | None = Path(loaded).resolve() if loaded is not None else None
        self.version: str | None = self.loaded.name if self.loaded is not None else None
        self.last_error: str | None = None
        self.reloaded_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="funnelrec-watch", daemon=True)

    def start(self) -> ServedWatcher:
        self._thread.start()
        return self

    def poll(self) -> bool:
        """One check; True when a new version was loaded."""
        name = current_version(self.served_dir)
        if name is None:
            return False
        path = version_dir(self.served_dir, name).resolve()
        if self.loaded is not None and path == self.loaded:
            return False
        parts = changed_parts(self.loaded, path)
        if parts == []:  # the same content under a new name (a learner step redone after a crash)
            self.loaded, self.version = path, name
            return False
        self.reload(str(path), parts)
        self.loaded, self.version, self.reloaded_at, self.last_error = path, name, time.time(), None
        _log.info("served %s (%s)", name, "all parts" if parts is None else ", ".join(parts))
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception as e:  # noqa: BLE001 - a bad version must not kill the watch; retried next poll
                msg = f"{type(e).__name__}: {e}"
                if msg != self.last_error:
                    _log.warning("served dir %s: reload failed: %s", self.served_dir, msg)
                self.last_error = msg
            self._stop.wait(self.interval_s)

    def health(self) -> dict[str, Any]:
        status = read_status(self.served_dir) or {}
        return {"dir": str(self.served_dir), "version": self.version, "reloaded_at": self.reloaded_at,
                "error": self.last_error,
                "learner": {k: status.get(k) for k in ("version", "offset", "events_seen", "quarantined",
                                                        "lag_events", "lag_s", "updated_at", "step_s", "stream_gap")}}

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
