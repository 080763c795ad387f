"""Pickled artifacts with a magic header: written atomically (tmp file + rename, so a crash
never leaves half a file under the real name), read back with one clear error per failure."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from funnelrec.core.errors import ArtifactError


def save_pickle(obj: Any, path: str | Path, magic: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        f.write(magic)
        pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
    tmp.replace(path)


def load_pickle(path: str | Path, magic: bytes, cls: type, what: str, hint: str = "") -> Any:
    """Load an object of type `cls` saved by `save_pickle` with the same `magic`."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            if f.read(len(magic)) != magic:
                raise ArtifactError(f"{path}: not a funnelrec {what} file")
            obj = pickle.load(f)
    except FileNotFoundError:
        raise ArtifactError(f"{path}: {what} file not found{hint}") from None
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, ImportError) as e:
        raise ArtifactError(f"{path}: corrupt {what} file ({e})") from None
    if not isinstance(obj, cls):
        raise ArtifactError(f"{path}: holds a {type(obj).__name__}, not a {what}")
    return obj
