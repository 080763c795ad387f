"""A safe state-tree serializer: an object tree as a directory of data files, never pickle.

`save_state(obj, directory)` walks `obj` and writes `directory/state.json` — the tree of
containers, scalars and class paths — plus one file per large leaf; `load_state(directory)`
rebuilds it. Nothing in the directory can make the loader run code of its choosing: classes
are resolved only from modules named ``funnelrec.*`` (the allowlist; anything else is an
`ArtifactError` before any import), and every leaf is plain data read by a data reader.

What goes where (relative paths inside `directory`; `<n>-<attr path>` names for humans):

| value | stored as |
| --- | --- |
| None, bool, int, str, finite float | inline JSON (floats as repr: exact) |
| nan / ±inf | ``{"__float__": "nan"}`` |
| list / tuple / set / frozenset / dict | inline, each with its own tag (non-str dict keys kept) |
| numpy array ≤ 512 bytes, numpy scalar, dtype | inline ``.npy`` bytes, base64 |
| numpy array (numeric, bool, str, datetime) | ``arrays/<n>.npy`` (``allow_pickle=False``) |
| numpy object array | inline list of its elements (each encoded as above) |
| scipy.sparse csr/csc/coo matrix or array | ``sparse/<n>.npz`` (scipy's ``save_npz`` layout) |
| polars DataFrame / Series | ``frames/<n>.parquet`` |
| torch tensor | a key of ``tensors.safetensors`` |
| torch ``nn.Module`` | constructor record + ``state_dict`` in ``tensors.safetensors`` |
| dataclass / enum / other ``funnelrec.*`` object | class path + fields / member / ``__dict__`` |
| object with ``__persist_save__`` | its own files under ``custom/<n>/`` |

Objects (any instance of a ``funnelrec.*`` class) are saved as class path + ``__dict__`` (+
``__slots__``) and come back as ``cls.__new__(cls)`` with that state, then ``obj._after_load()``
if the class defines it (to rebuild caches). A class may save itself in its own format instead:

    def __persist_save__(self, directory: Path) -> dict           # writes files, returns state
    @classmethod
    def __persist_load__(cls, directory: Path, state: dict) -> Self

``nn.Module``s are rebuilt, not restored field by field: the module must carry a constructor
record — `record_init(module, *args, **kwargs)` (rebuilt as ``type(module)(*args, **kwargs)``)
or `record_build(module, builder, *args, **kwargs)` (rebuilt as ``builder(*args, **kwargs)``, a
``funnelrec.*`` function such as ``build_ranker``, i.e. through a registry) — then
``load_state_dict(strict=True)`` and each submodule's train/eval flag restored. Non-tensor
``_extra_state`` (e.g. a LightGBM booster as its model string) is encoded like any other value.
Identity is kept within one tree: an object reached twice is stored once (``{"__ref__": n}``).

    >>> import tempfile, numpy as np
    >>> d = tempfile.mkdtemp()
    >>> files = save_state({"ids": np.arange(1000), 3: (1.5, float("inf"))}, d)
    >>> sorted(files)
    ['arrays/0001-ids.npy', 'state.json']
    >>> back = load_state(d)
    >>> back[3], back["ids"].dtype == np.arange(1).dtype
    ((1.5, inf), True)
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import hashlib
import importlib
import io
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

from funnelrec.core.errors import ArtifactError

FORMAT = "funnelrec-state"
FORMAT_VERSION = 1
STATE_FILE = "state.json"
TENSOR_FILE = "tensors.safetensors"
INLINE_ARRAY_BYTES = 512  # smaller arrays go inline (base64 npy) instead of a file each
_INIT_ATTR = "_persist_init_"
_ALLOWED_ROOT = "funnelrec"

_SPARSE_FORMATS = ("csr", "csc", "coo")
# builtin and numpy types that may appear as *values* (e.g. a dtype=np.float32 attribute)
_SAFE_TYPES: dict[str, type] = {
    f"builtins:{t.__name__}": t for t in (int, float, str, bool, bytes, list, tuple, dict, set, frozenset)
} | {
    f"numpy:{t.__name__}": t for t in (np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64,
                                       np.uint8, np.uint16, np.uint32, np.uint64, np.bool_, np.ndarray)
}


# ---------------------------------------------------------------- constructor records
def record_init(module: Any, *args: Any, **kwargs: Any) -> Any:
    """Note that `module` is rebuilt as ``type(module)(*args, **kwargs)`` on load; returns it.
    The arguments are saved as state, so they must be persistable themselves (specs, configs)."""
    module.__dict__[_INIT_ATTR] = {"builder": None, "args": tuple(args), "kwargs": dict(kwargs)}
    return module


def record_build(module: Any, builder: Any, *args: Any, **kwargs: Any) -> Any:
    """Note that `module` is rebuilt as ``builder(*args, **kwargs)`` on load — `builder` a
    module-level function of a ``funnelrec.*`` module, e.g. a registry's build function."""
    _function_path(builder, "record_build")  # fail now, not at save time
    module.__dict__[_INIT_ATTR] = {"builder": builder, "args": tuple(args), "kwargs": dict(kwargs)}
    return module


# ---------------------------------------------------------------- class paths and the allowlist
def class_path(obj_or_cls: Any) -> str:
    """``"module:qualname"`` of a class (or of an instance's class)."""
    cls = obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)
    return f"{cls.__module__}:{cls.__qualname__}"


def _allowed_module(module: str) -> bool:
    return module == _ALLOWED_ROOT or module.startswith(_ALLOWED_ROOT + ".")


def resolve(path: Any, where: str = "state.json", want_class: bool = True) -> Any:
    """The class (or function) at ``"module:qualname"``, imported only from ``funnelrec.*``.
    Anything else is refused before its module is imported."""
    if not isinstance(path, str) or path.count(":") != 1:
        raise ArtifactError(f"{where}: malformed class path {path!r} (expected 'module:qualname')")
    if path in _SAFE_TYPES and want_class:
        return _SAFE_TYPES[path]
    module, qualname = path.split(":")
    if not _allowed_module(module):
        raise ArtifactError(f"{where}: refusing class {path!r}: only funnelrec.* classes are loaded "
                            f"(the artifact is data, not code)")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", qualname):
        raise ArtifactError(f"{where}: malformed class path {path!r}")
    try:
        obj: Any = importlib.import_module(module)
    except ImportError as e:
        raise ArtifactError(f"{where}: unknown class {path!r} (module not found: {e})") from None
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ArtifactError(f"{where}: unknown class {path!r} (renamed or removed?)")
    if want_class and not isinstance(obj, type):
        raise ArtifactError(f"{where}: {path!r} is not a class")
    if not want_class and (isinstance(obj, type) or not callable(obj)):
        raise ArtifactError(f"{where}: {path!r} is not a function")
    return obj


def _function_path(fn: Any, where: str) -> str:
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if not (isinstance(module, str) and isinstance(qualname, str) and _allowed_module(module)
            and "<" not in qualname):
        raise ArtifactError(f"{where}: {fn!r} is not a module-level funnelrec.* function")
    return f"{module}:{qualname}"


# ---------------------------------------------------------------- checksums
def file_digest(path: Path, h: Any) -> str:
    """Hex digest of a file's bytes by hasher `h` (hashlib.sha256(), xxhash.xxh64() …), read in 4 MB chunks."""
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    return file_digest(path, hashlib.sha256())


def _safe_name(where: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_.-]+", "_", where.removeprefix("root")).strip("_.")
    return s[-60:] or "root"


# ---------------------------------------------------------------- save
class _Writer:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.memo: dict[int, tuple[int, dict | None]] = {}  # id(obj) → (ref id, its node)
        self.keep: list[Any] = []  # holds every memoised object alive, so no id is reused
        self.counter = 0
        self.n_files = 0
        self.tensors: dict[str, Any] = {}
        self.storages: set[tuple[int, int]] = set()

    def _new_id(self) -> int:
        self.counter += 1
        return self.counter

    def _file(self, kind: str, where: str, suffix: str) -> tuple[str, Path]:
        self.n_files += 1
        rel = f"{kind}/{self.n_files:04d}-{_safe_name(where)}{suffix}"
        p = self.dir / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return rel, p

    def encode(self, o: Any, where: str) -> Any:
        t = type(o)
        if o is None or t is bool or t is str or t is int:
            return o
        if t is float:
            return o if math.isfinite(o) else {"__float__": repr(o)}
        if t is list:
            return [self.encode(v, f"{where}[{i}]") for i, v in enumerate(o)]
        if t is tuple:
            return {"__tuple__": [self.encode(v, f"{where}[{i}]") for i, v in enumerate(o)]}
        if t is bytes:
            return {"__bytes__": base64.b64encode(o).decode()}
        if isinstance(o, np.generic):
            return {"__npscalar__": _npy_b64(np.asarray(o))}
        if t is np.dtype or isinstance(o, np.dtype):
            return {"__dtype__": _npy_b64(np.empty(0, dtype=o))}
        if isinstance(o, type):
            return {"__type__": self._type_path(o, where)}
        if isinstance(o, enum.Enum):
            return {"__enum__": self._class(o, where), "name": o.name}
        # everything below may be shared: stored once, referenced after
        seen = self.memo.get(id(o))
        if seen is not None:
            ref, node = seen
            if node is not None:
                node["__id__"] = ref
            return {"__ref__": ref}
        ref = self._new_id()
        node: dict = {}
        self.memo[id(o)] = (ref, node)
        self.keep.append(o)
        node.update(self._encode_shared(o, t, where))
        return node

    def _encode_shared(self, o: Any, t: type, where: str) -> dict:
        if t is dict:
            if all(type(k) is str for k in o):
                return {"__map__": {k: self.encode(v, f"{where}.{k}") for k, v in o.items()}}
            return {"__dict__": [[self.encode(k, f"{where}.<key>"), self.encode(v, f"{where}[{k!r}]")]
                                 for k, v in o.items()]}
        if t is set or t is frozenset:
            tag = "__set__" if t is set else "__frozenset__"
            items = list(o)
            try:
                items.sort()  # a stable state.json for the same set
            except TypeError:
                pass
            return {tag: [self.encode(v, f"{where}[{i}]") for i, v in enumerate(items)]}
        if t is np.ndarray:
            return self._array(o, where)
        if t.__module__.startswith("scipy.sparse"):
            return self._sparse(o, where)
        mod = t.__module__
        if mod.startswith("polars"):
            return self._polars(o, where)
        torch = sys.modules.get("torch")  # a torch object exists only if torch is imported
        if torch is not None:
            if isinstance(o, torch.nn.Module):
                return self._module(o, where)
            if isinstance(o, torch.Tensor):
                return self._tensor(o, where)
        if isinstance(o, Path):
            return {"__path__": str(o)}
        if not _allowed_module(mod):
            raise ArtifactError(f"{where}: cannot persist a {mod}.{t.__qualname__} (only data, containers and "
                                f"funnelrec objects; give its owner __persist_save__/__persist_load__)")
        if callable(getattr(t, "__persist_save__", None)):
            rel, p = self._file("custom", where, "")
            p.mkdir(parents=True, exist_ok=True)
            if not callable(getattr(t, "__persist_load__", None)):
                raise ArtifactError(f"{where}: {class_path(t)} has __persist_save__ but no __persist_load__")
            state = o.__persist_save__(p)
            return {"__custom__": class_path(t), "dir": rel, "state": self.encode(state, f"{where}.<state>")}
        if dataclasses.is_dataclass(o):
            fields = {f.name: self.encode(getattr(o, f.name), f"{where}.{f.name}") for f in dataclasses.fields(o)}
            extra = {k: v for k, v in getattr(o, "__dict__", {}).items() if k not in fields}
            node = {"__dataclass__": class_path(t), "fields": fields}
            if extra:
                node["extra"] = {k: self.encode(v, f"{where}.{k}") for k, v in extra.items()}
            return node
        return self._object(o, t, where)

    def _object(self, o: Any, t: type, where: str) -> dict:
        node: dict = {"__object__": class_path(t)}
        if hasattr(o, "__dict__"):
            node["state"] = {k: self.encode(v, f"{where}.{k}") for k, v in vars(o).items()}
        slots = [s for c in t.__mro__ for s in getattr(c, "__slots__", ()) if s not in ("__dict__", "__weakref__")]
        if slots:
            node["slots"] = {s: self.encode(getattr(o, s), f"{where}.{s}") for s in slots if hasattr(o, s)}
        return node

    def _class(self, o: Any, where: str) -> str:
        path = class_path(o)
        if not _allowed_module(type(o).__module__):
            raise ArtifactError(f"{where}: cannot persist a {path} (not a funnelrec class)")
        return path

    def _type_path(self, cls: type, where: str) -> str:
        path = class_path(cls)
        if path in _SAFE_TYPES or _allowed_module(cls.__module__):
            return path
        raise ArtifactError(f"{where}: cannot persist the class {path} as a value")

    # -- leaves
    def _array(self, a: np.ndarray, where: str) -> dict:
        if a.dtype.hasobject:
            if a.dtype != object:
                raise ArtifactError(f"{where}: cannot persist a structured array holding objects ({a.dtype})")
            return {"__objarray__": list(a.shape),
                    "items": [self.encode(v, f"{where}[{i}]") for i, v in enumerate(a.reshape(-1).tolist())]}
        if a.nbytes <= INLINE_ARRAY_BYTES:
            return {"__ndarray__": _npy_b64(a)}
        rel, p = self._file("arrays", where, ".npy")
        np.save(p, a, allow_pickle=False)
        return {"__ndarray__": rel}

    def _sparse(self, m: Any, where: str) -> dict:
        import scipy.sparse as sp

        if not sp.issparse(m) or m.format not in _SPARSE_FORMATS:
            raise ArtifactError(f"{where}: cannot persist a {type(m).__name__} (sparse formats: "
                                f"{', '.join(_SPARSE_FORMATS)})")
        rel, p = self._file("sparse", where, ".npz")
        sp.save_npz(p, m, compressed=False)
        return {"__sparse__": rel, "class": type(m).__name__}

    def _polars(self, o: Any, where: str) -> dict:
        import polars as pl

        if isinstance(o, pl.DataFrame):
            df, tag, extra = o, "__polars_df__", {}
        elif isinstance(o, pl.Series):
            df, tag, extra = o.to_frame(), "__polars_series__", {"name": o.name}
        else:
            raise ArtifactError(f"{where}: cannot persist a polars {type(o).__name__} (DataFrame and Series only)")
        bad = [c for c, dt in df.schema.items() if dt == pl.Object]
        if bad:
            raise ArtifactError(f"{where}: polars column(s) {', '.join(bad)} hold Python objects (dtype Object)")
        rel, p = self._file("frames", where, ".parquet")
        df.write_parquet(p, compression="lz4", statistics=False)
        return {tag: rel, **extra}

    def _tensor_key(self, t: Any, key: str) -> str:
        import torch

        if t.layout != torch.strided or t.is_quantized:
            raise ArtifactError(f"{key}: cannot persist a {t.layout} tensor (dense tensors only)")
        v = t.detach().to("cpu").contiguous()
        storage = (v.untyped_storage().data_ptr(), v.untyped_storage().nbytes())
        if storage in self.storages or v.untyped_storage().nbytes() != v.numel() * v.element_size():
            v = v.clone()  # safetensors stores each tensor alone: no views into a shared buffer
        self.storages.add((v.untyped_storage().data_ptr(), v.untyped_storage().nbytes()))
        self.tensors[key] = v
        return key

    def _tensor(self, t: Any, where: str) -> dict:
        import torch

        key = self._tensor_key(t, f"t{self._new_id()}")
        node: dict = {"__tensor__": key}
        if isinstance(t, torch.nn.Parameter):
            node["parameter"] = True
        if t.requires_grad:
            node["requires_grad"] = True
        return node

    def _module(self, m: Any, where: str) -> dict:
        rec = m.__dict__.get(_INIT_ATTR)
        if rec is None:
            raise ArtifactError(f"{where}: nn.Module {class_path(m)} has no constructor record (build it through "
                                f"build_ranker or call persist.record_init in its constructor)")
        if not _allowed_module(type(m).__module__):
            raise ArtifactError(f"{where}: cannot persist the module {class_path(m)} (not a funnelrec class)")
        prefix = f"m{self._new_id()}."
        sd = m.state_dict(keep_vars=True)
        keys, aliases, extra = [], {}, {}
        canonical: dict[int, str] = {}
        for name, v in sd.items():
            if name.endswith("_extra_state") and not _is_tensor(v):
                extra[name] = self.encode(v, f"{where}.{name}")
                continue
            first = canonical.setdefault(id(v), name)
            if first != name:  # a tied parameter: stored once
                aliases[name] = first
                continue
            self._tensor_key(v, prefix + name)
            keys.append(name)
        node: dict = {"__module__": class_path(m), "tensors": prefix, "keys": keys}
        if rec["builder"] is not None:
            node["builder"] = _function_path(rec["builder"], where)
        node["args"] = self.encode(rec["args"], f"{where}.<init args>")
        node["kwargs"] = self.encode(rec["kwargs"], f"{where}.<init kwargs>")
        if aliases:
            node["aliases"] = aliases
        if extra:
            node["extra_state"] = extra
        node["training"] = [n for n, sub in m.named_modules() if sub.training]
        frozen = [n for n, p in m.named_parameters() if not p.requires_grad]
        if frozen:
            node["frozen"] = frozen
        return node


def _is_tensor(v: Any) -> bool:
    mod = type(v).__module__
    if not mod.startswith("torch"):
        return False
    import torch

    return isinstance(v, torch.Tensor)


def _npy_b64(a: np.ndarray) -> str:
    b = io.BytesIO()
    np.save(b, a, allow_pickle=False)
    return base64.b64encode(b.getvalue()).decode()


def save_state(obj: Any, directory: str | Path) -> dict[str, str]:
    """Write `obj` into `directory` (created; must be empty or absent). Returns {relative
    file: sha256} of every file written, state.json included."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if any(directory.iterdir()):
        raise ArtifactError(f"{directory}: not empty; save_state writes into a fresh directory")
    w = _Writer(directory)
    root = w.encode(obj, "root")
    if w.tensors:
        from safetensors.torch import save_file

        save_file(w.tensors, str(directory / TENSOR_FILE))
    files = {p.relative_to(directory).as_posix(): sha256_file(p) for p in sorted(directory.rglob("*")) if p.is_file()}
    state = {"format": FORMAT, "format_version": FORMAT_VERSION, "files": files, "root": root}
    (directory / STATE_FILE).write_text(json.dumps(state, indent=1, allow_nan=False))
    return {**files, STATE_FILE: sha256_file(directory / STATE_FILE)}


# ---------------------------------------------------------------- load
class _Reader:
    def __init__(self, directory: Path, files: dict[str, str], verify: bool, mmap: bool) -> None:
        self.dir = directory
        self.files = files
        self.verify = verify
        self.mmap = mmap
        self.memo: dict[int, Any] = {}
        self._tensors: dict[str, Any] | None = None

    def path(self, rel: Any, where: str) -> Path:
        if not isinstance(rel, str) or rel not in self.files:
            raise ArtifactError(f"{self.dir / STATE_FILE}: {where} names file {rel!r}, which the state does not list")
        p = self.dir / rel
        if not p.is_file():
            raise ArtifactError(f"{p}: file missing")
        if self.verify and sha256_file(p) != self.files[rel]:
            raise ArtifactError(f"{p}: checksum mismatch (corrupt or modified)")
        return p

    def tensors(self, where: str) -> dict[str, Any]:
        if self._tensors is None:
            from safetensors import SafetensorError
            from safetensors.torch import load_file

            p = self.path(TENSOR_FILE, where)
            try:
                self._tensors = load_file(str(p))
            except (SafetensorError, OSError, ValueError) as e:
                raise ArtifactError(f"{p}: corrupt tensor file ({e})") from None
        return self._tensors

    def bad(self, where: str, what: str) -> ArtifactError:
        return ArtifactError(f"{self.dir / STATE_FILE}: {where}: {what}")

    def decode(self, n: Any, where: str) -> Any:
        if n is None or isinstance(n, bool | int | float | str):
            return n
        if isinstance(n, list):
            return [self.decode(v, f"{where}[{i}]") for i, v in enumerate(n)]
        if not isinstance(n, dict):
            raise self.bad(where, f"unexpected node {type(n).__name__}")
        if "__ref__" in n:
            if n["__ref__"] not in self.memo:
                raise self.bad(where, f"reference {n['__ref__']!r} to an object not yet read")
            return self.memo[n["__ref__"]]
        ref = n.get("__id__")
        tag = next((k for k in n if k.startswith("__") and k != "__id__"), None)
        handler = _DECODERS.get(tag)
        if handler is None:
            raise self.bad(where, f"unknown node {sorted(n)} (written by a newer funnelrec?)")
        return handler(self, n, ref, where)

    def remember(self, ref: Any, obj: Any) -> Any:
        if ref is not None:
            self.memo[ref] = obj
        return obj

    # -- containers
    def _map(self, n: dict, ref: Any, where: str) -> dict:
        out = self.remember(ref, {})
        for k, v in n["__map__"].items():
            out[k] = self.decode(v, f"{where}.{k}")
        return out

    def _dict(self, n: dict, ref: Any, where: str) -> dict:
        out = self.remember(ref, {})
        for k, v in n["__dict__"]:
            out[self.decode(k, f"{where}.<key>")] = self.decode(v, f"{where}[{k!r}]")
        return out

    def _tuple(self, n: dict, ref: Any, where: str) -> tuple:
        return tuple(self.decode(v, f"{where}[{i}]") for i, v in enumerate(n["__tuple__"]))

    def _set(self, n: dict, ref: Any, where: str) -> set:
        return self.remember(ref, {self.decode(v, where) for v in n["__set__"]})

    def _frozenset(self, n: dict, ref: Any, where: str) -> frozenset:
        return self.remember(ref, frozenset(self.decode(v, where) for v in n["__frozenset__"]))

    # -- scalars
    def _float(self, n: dict, ref: Any, where: str) -> float:
        if n["__float__"] not in ("nan", "inf", "-inf"):
            raise self.bad(where, f"bad float {n['__float__']!r}")
        return float(n["__float__"])

    def _bytes(self, n: dict, ref: Any, where: str) -> bytes:
        return base64.b64decode(n["__bytes__"])

    def _inline_npy(self, b64: Any, where: str) -> np.ndarray:
        try:
            return np.load(io.BytesIO(base64.b64decode(b64)), allow_pickle=False)
        except (ValueError, TypeError, OSError) as e:
            raise self.bad(where, f"corrupt inline array ({e})") from None

    def _npscalar(self, n: dict, ref: Any, where: str) -> Any:
        return self._inline_npy(n["__npscalar__"], where)[()]

    def _dtype(self, n: dict, ref: Any, where: str) -> np.dtype:
        return self._inline_npy(n["__dtype__"], where).dtype

    def _type(self, n: dict, ref: Any, where: str) -> type:
        return resolve(n["__type__"], f"{self.dir / STATE_FILE}: {where}")

    def _enum(self, n: dict, ref: Any, where: str) -> Any:
        cls = resolve(n["__enum__"], f"{self.dir / STATE_FILE}: {where}")
        if not issubclass(cls, enum.Enum) or n.get("name") not in cls.__members__:
            raise self.bad(where, f"{n['__enum__']} has no member {n.get('name')!r}")
        return cls[n["name"]]

    def _path(self, n: dict, ref: Any, where: str) -> Path:
        return self.remember(ref, Path(n["__path__"]))

    # -- leaves
    def _ndarray(self, n: dict, ref: Any, where: str) -> np.ndarray:
        v = n["__ndarray__"]
        if isinstance(v, str) and v.startswith("arrays/"):
            p = self.path(v, where)
            try:
                a = np.load(p, allow_pickle=False, mmap_mode="r" if self.mmap else None)
            except FileNotFoundError:
                raise ArtifactError(f"{p}: file missing (removed while it was read? load again)") from None
            except (ValueError, OSError) as e:
                raise ArtifactError(f"{p}: corrupt array file ({e})") from None
        else:
            a = self._inline_npy(v, where)
        return self.remember(ref, a)

    def _objarray(self, n: dict, ref: Any, where: str) -> np.ndarray:
        items = [self.decode(v, f"{where}[{i}]") for i, v in enumerate(n["items"])]
        a = np.empty(len(items), dtype=object)
        a[:] = items if items else a
        return self.remember(ref, a.reshape(tuple(n["__objarray__"])))

    def _sparse(self, n: dict, ref: Any, where: str) -> Any:
        import scipy.sparse as sp

        p = self.path(n["__sparse__"], where)
        cls_name = n.get("class")
        cls = getattr(sp, cls_name, None) if isinstance(cls_name, str) else None
        if cls is None or not (isinstance(cls, type) and cls_name.split("_")[0] in _SPARSE_FORMATS):
            raise self.bad(where, f"unknown sparse class {cls_name!r}")
        try:
            with np.load(p, allow_pickle=False) as z:
                fmt = z["format"].item()
                fmt = fmt.decode() if isinstance(fmt, bytes) else str(fmt)
                shape = tuple(int(s) for s in z["shape"])
                if fmt in ("csr", "csc"):
                    data, indices, indptr = z["data"], z["indices"], z["indptr"]
                    m = cls((data, indices, indptr), shape=shape)
                    m.indices, m.indptr = indices, indptr  # scipy may narrow index dtypes: keep the saved ones
                elif fmt == "coo":
                    data, row, col = z["data"], z["row"], z["col"]
                    m = cls((data, (row, col)), shape=shape)
                    m.row, m.col = row, col  # ditto
                else:
                    raise ValueError(f"format {fmt!r}")
        except FileNotFoundError:
            raise ArtifactError(f"{p}: file missing (removed while it was read? load again)") from None
        except (ValueError, OSError, KeyError) as e:
            raise ArtifactError(f"{p}: corrupt sparse matrix file ({e})") from None
        return self.remember(ref, m)

    def _polars_df(self, n: dict, ref: Any, where: str) -> Any:
        import polars as pl

        p = self.path(n["__polars_df__"], where)
        try:
            return self.remember(ref, pl.read_parquet(p))
        except Exception as e:  # polars raises its own exception zoo for a corrupt file
            raise ArtifactError(f"{p}: corrupt Parquet file ({str(e).splitlines()[0][:160]})") from None

    def _polars_series(self, n: dict, ref: Any, where: str) -> Any:
        import polars as pl

        p = self.path(n["__polars_series__"], where)
        try:
            s = pl.read_parquet(p).to_series(0)
        except Exception as e:
            raise ArtifactError(f"{p}: corrupt Parquet file ({str(e).splitlines()[0][:160]})") from None
        return self.remember(ref, s.rename(n.get("name", s.name)))

    def _tensor(self, n: dict, ref: Any, where: str) -> Any:
        import torch

        ts = self.tensors(where)
        key = n["__tensor__"]
        if key not in ts:
            raise ArtifactError(f"{self.dir / TENSOR_FILE}: tensor {key!r} missing ({where})")
        t = ts[key]
        if n.get("parameter"):
            t = torch.nn.Parameter(t, requires_grad=bool(n.get("requires_grad")))
        elif n.get("requires_grad"):
            t.requires_grad_(True)
        return self.remember(ref, t)

    def _module(self, n: dict, ref: Any, where: str) -> Any:
        here = f"{self.dir / STATE_FILE}: {where}"
        cls = resolve(n["__module__"], here)
        args = self.decode(n["args"], f"{where}.<init args>")
        kwargs = self.decode(n["kwargs"], f"{where}.<init kwargs>")
        builder = resolve(n["builder"], here, want_class=False) if n.get("builder") else cls
        try:
            m = builder(*args, **kwargs)
        except Exception as e:
            raise ArtifactError(f"{here}: cannot rebuild {n['__module__']} ({type(e).__name__}: {e})") from None
        if type(m) is not cls:
            raise ArtifactError(f"{here}: rebuilding gave a {class_path(m)}, the state holds a {n['__module__']}")
        ts = self.tensors(where)
        prefix = n["tensors"]
        sd: dict[str, Any] = {}
        for k in n["keys"]:
            if prefix + k not in ts:
                raise ArtifactError(f"{self.dir / TENSOR_FILE}: tensor {prefix + k!r} missing ({where})")
            sd[k] = ts[prefix + k]
        for k, first in n.get("aliases", {}).items():
            sd[k] = sd[first]
        for k, v in n.get("extra_state", {}).items():
            sd[k] = self.decode(v, f"{where}.{k}")
        try:
            # assign: the loaded tensors become the parameters (no second copy of a large table)
            m.load_state_dict(sd, strict=True, assign=True)
        except (RuntimeError, KeyError, ValueError) as e:
            msg = " ".join(str(e).split())[:300]
            raise ArtifactError(f"{here}: {n['__module__']} does not take the saved weights ({msg})") from None
        for k, first in n.get("aliases", {}).items():  # re-tie: one Parameter object again
            owner, _, leaf = k.rpartition(".")
            src_owner, _, src_leaf = first.rpartition(".")
            src = m.get_submodule(src_owner)
            setattr(m.get_submodule(owner), leaf, src._parameters.get(src_leaf, src._buffers.get(src_leaf)))
        training = set(n.get("training", ()))
        for name, sub in m.named_modules():
            sub.training = name in training
        params = dict(m.named_parameters())
        for name in n.get("frozen", ()):
            params[name].requires_grad_(False)
        return self.remember(ref, m)

    # -- objects
    def _dataclass(self, n: dict, ref: Any, where: str) -> Any:
        cls = resolve(n["__dataclass__"], f"{self.dir / STATE_FILE}: {where}")
        if not dataclasses.is_dataclass(cls):
            raise self.bad(where, f"{n['__dataclass__']} is not a dataclass (changed since it was saved?)")
        obj = self.remember(ref, cls.__new__(cls))
        names = {f.name for f in dataclasses.fields(cls)}
        saved = n["fields"]
        missing = names - set(saved)
        for k, v in {**saved, **n.get("extra", {})}.items():
            object.__setattr__(obj, k, self.decode(v, f"{where}.{k}"))
        if missing:
            # a field added since the save: its default, if it has one
            for f in dataclasses.fields(cls):
                if f.name in missing:
                    if f.default is not dataclasses.MISSING:
                        object.__setattr__(obj, f.name, f.default)
                    elif f.default_factory is not dataclasses.MISSING:
                        object.__setattr__(obj, f.name, f.default_factory())
                    else:
                        raise self.bad(where, f"{n['__dataclass__']} has a new required field {f.name!r}")
        self._after(obj)
        return obj

    def _object(self, n: dict, ref: Any, where: str) -> Any:
        cls = resolve(n["__object__"], f"{self.dir / STATE_FILE}: {where}")
        obj = self.remember(ref, cls.__new__(cls))
        if "state" in n:
            state = n["state"]
            if not isinstance(state, dict):
                raise self.bad(where, "object state must be a mapping")
            d = obj.__dict__
            for k, v in state.items():
                d[k] = self.decode(v, f"{where}.{k}")
        for k, v in n.get("slots", {}).items():
            object.__setattr__(obj, k, self.decode(v, f"{where}.{k}"))
        self._after(obj)
        return obj

    def _custom(self, n: dict, ref: Any, where: str) -> Any:
        cls = resolve(n["__custom__"], f"{self.dir / STATE_FILE}: {where}")
        rel = n.get("dir")
        if not isinstance(rel, str) or not rel.startswith("custom/") or ".." in rel:
            raise self.bad(where, f"bad custom directory {rel!r}")
        sub = self.dir / rel
        for f in self.files:
            if f.startswith(rel + "/"):
                self.path(f, where)  # present and checksummed before the class reads it
        state = self.decode(n.get("state"), f"{where}.<state>")
        obj = cls.__persist_load__(sub, state)
        return self.remember(ref, obj)

    def _after(self, obj: Any) -> None:
        hook = getattr(type(obj), "_after_load", None)
        if callable(hook):
            obj._after_load()


_DECODERS = {
    "__map__": _Reader._map, "__dict__": _Reader._dict, "__tuple__": _Reader._tuple, "__set__": _Reader._set,
    "__frozenset__": _Reader._frozenset, "__float__": _Reader._float, "__bytes__": _Reader._bytes,
    "__npscalar__": _Reader._npscalar, "__dtype__": _Reader._dtype, "__type__": _Reader._type,
    "__enum__": _Reader._enum, "__path__": _Reader._path, "__ndarray__": _Reader._ndarray,
    "__objarray__": _Reader._objarray, "__sparse__": _Reader._sparse, "__polars_df__": _Reader._polars_df,
    "__polars_series__": _Reader._polars_series, "__tensor__": _Reader._tensor, "__module__": _Reader._module,
    "__dataclass__": _Reader._dataclass, "__object__": _Reader._object, "__custom__": _Reader._custom,
}


def read_json(p: Path, what: str) -> dict:
    """The JSON object in file `p` (the header of `what`), one clear error per failure."""
    try:
        obj = json.loads(p.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{p}: file missing (not {what})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{p}: corrupt ({e})") from None
    if not isinstance(obj, dict):
        raise ArtifactError(f"{p}: corrupt (not a JSON object)")
    return obj


def read_state_header(directory: str | Path) -> dict:
    """state.json of a state directory, checked for format and version (the tree not decoded)."""
    p = Path(directory) / STATE_FILE
    state = read_json(p, "a saved state directory")
    if state.get("format") != FORMAT:
        raise ArtifactError(f"{p}: not a {FORMAT} file")
    v = state.get("format_version")
    if not isinstance(v, int) or v > FORMAT_VERSION:
        raise ArtifactError(f"{p}: format version {v!r}; this funnelrec reads {FORMAT} version ≤ {FORMAT_VERSION}")
    if not isinstance(state.get("files"), dict) or "root" not in state:
        raise ArtifactError(f"{p}: corrupt (no files/root)")
    return state


def load_state(directory: str | Path, verify: bool = True, checksums: dict[str, str] | None = None,
               mmap: bool = False) -> Any:
    """The object saved by `save_state` in `directory`.

    verify: check each file's sha256 before it is read (state.json's list, or `checksums`
    — e.g. an artifact manifest's — which then also covers state.json itself).
    mmap: memory-map the ``.npy`` arrays read-only instead of reading them."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactError(f"{directory}: saved state directory not found")
    if verify and checksums is not None:
        want = checksums.get(STATE_FILE)
        p = directory / STATE_FILE
        if want is not None and p.is_file() and sha256_file(p) != want:
            raise ArtifactError(f"{p}: checksum mismatch (corrupt or modified)")
    state = read_state_header(directory)
    files = dict(state["files"])
    if checksums is not None:
        listed = {k: v for k, v in checksums.items() if k != STATE_FILE}
        if listed != files:
            raise ArtifactError(f"{directory / STATE_FILE}: its file list disagrees with the manifest")
    r = _Reader(directory, files, verify, mmap)
    return r.decode(state["root"], "root")

