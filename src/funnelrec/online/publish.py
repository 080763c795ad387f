"""Versioned publishing into a served directory (layout in online/served.py).

    pub = Publisher("served")
    pub.init("artifacts/funnel")                      # versions/v000001 = that artifact, CURRENT → it
    name = pub.publish("v000001", {"ranker": r, "channels/itemcf": ch})   # → "v000002", CURRENT → it

`publish(base, parts)` builds the next version in `versions/.tmp-…`: every file of `base`
hard-linked (an unchanged part costs no copy and no disk), then each changed part written with
`pipeline/artifact.py:save_component` (a new part directory and a new manifest; the links of the
old part are removed from the new version only — `base` keeps its files). Every new file and
directory is fsynced, the directory renamed to `versions/vNNNNNN` (the next free number, never an
existing one), the versions directory fsynced, and only then CURRENT replaced atomically (write +
fsync + os.replace + fsync of the directory). A crash leaves either no new version, an unused
complete one, or a live one; a `.tmp-` left behind is removed by the next `Publisher`.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

from funnelrec.core.errors import ArtifactError, ConfigError
from funnelrec.online.served import (
    CURRENT,
    VERSIONS,
    current_version,
    fsync_dir,
    version_dir,
    version_name,
    write_atomic,
)
from funnelrec.pipeline.artifact import LOCK, read_manifest, save_component

_NAME = re.compile(r"^v(\d{6,})$")


def _fsync_tree(root: Path, files: bool = True) -> None:
    for d, _, names in os.walk(root):
        if files:
            for n in names:
                fd = os.open(Path(d) / n, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        fsync_dir(Path(d))


def _link_tree(src: Path, dst: Path) -> None:
    """dst mirrors src: directories created, files hard-linked (copied across filesystems)."""
    for d, _, names in os.walk(src):
        rel = Path(d).relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for n in names:
            if rel == Path(".") and n == LOCK:
                continue  # a lock of its own: a flock on a shared inode would couple two versions
            try:
                os.link(Path(d) / n, dst / rel / n)
            except OSError:
                shutil.copy2(Path(d) / n, dst / rel / n)
    (dst / LOCK).touch()


class Publisher:
    """Writes versions into a served directory and moves CURRENT (module doc)."""

    def __init__(self, served_dir: str | Path) -> None:
        self.served_dir = Path(served_dir)
        self.versions = self.served_dir / VERSIONS
        self.versions.mkdir(parents=True, exist_ok=True)
        for p in self.versions.glob(".tmp-*"):  # a publish a crash interrupted
            shutil.rmtree(p, ignore_errors=True)

    def names(self) -> list[str]:
        """The published versions, oldest first."""
        return sorted((p.name for p in self.versions.iterdir() if _NAME.match(p.name)), key=lambda n: int(n[1:]))

    def _next(self) -> str:
        names = self.names()
        return version_name(int(names[-1][1:]) + 1 if names else 1)

    def init(self, artifact: str | Path) -> str:
        """Make `artifact` the first version when the served directory has none; returns CURRENT."""
        cur = current_version(self.served_dir)
        if cur is not None:
            return cur
        src = Path(artifact)
        read_manifest(src)  # a clear error for a path that is not an artifact
        return self._commit(lambda tmp: _link_tree(src, tmp))

    def publish(self, base: str, parts: dict[str, Any]) -> str:
        """A new version = `base` with `parts` ({component name: object}) replaced; returns its
        name, which CURRENT names when this returns."""
        src = version_dir(self.served_dir, base)
        if not src.is_dir():
            raise ArtifactError(f"{src}: version {base!r} is not in the served directory")
        if not parts:
            raise ConfigError("publish: no parts to publish")

        def build(tmp: Path) -> None:
            _link_tree(src, tmp)
            for name, obj in parts.items():
                save_component(tmp, name, obj)

        return self._commit(build)

    def _commit(self, build: Any) -> str:
        name = self._next()
        tmp = self.versions / f".tmp-{name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            build(tmp)
            _fsync_tree(tmp)
            os.rename(tmp, self.versions / name)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_dir(self.versions)
        write_atomic(self.served_dir / CURRENT, name + "\n")
        return name

    def prune(self, keep: int, protect: set[str] = frozenset()) -> list[str]:  # type: ignore[assignment]
        """Remove all but the `keep` newest versions (never CURRENT or one in `protect`); a
        server still reading a removed one meets a clear ArtifactError and retries."""
        names = self.names()
        live = {current_version(self.served_dir), *protect}
        gone = [n for n in names[: max(len(names) - keep, 0)] if n not in live]
        for n in gone:
            shutil.rmtree(self.versions / n, ignore_errors=True)
        return gone
