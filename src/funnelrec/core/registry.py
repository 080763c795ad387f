"""One registry per kind of component.

    >>> from funnelrec.core.registry import Registry
    >>> MODELS = Registry("model")
    >>> @MODELS.register("lr")
    ... class LR: ...
    >>> MODELS.get("lr") is LR
    True

An unknown name raises `UnknownComponentError` listing the known ones; nothing falls back to
a default silently.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from funnelrec.core.errors import UnknownComponentError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            try:
                obj.registered_name = name  # type: ignore[attr-defined]
            except (AttributeError, TypeError):
                pass
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "(none registered)"
            raise UnknownComponentError(
                f"unknown {self.kind} {name!r}; known: {known}"
            ) from None

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.get(name)(*args, **kwargs)  # type: ignore[operator]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)


# One registry per kind. Components register themselves on import of their package.
DATASETS: Registry[Any] = Registry("dataset")
RECALL_CHANNELS: Registry[Any] = Registry("recall channel")
RANKERS: Registry[Any] = Registry("ranking model")
RECALL_MODELS: Registry[Any] = Registry("recall model")
VECTOR_INDEXES: Registry[Any] = Registry("vector index")
EXPOSURE_STORES: Registry[Any] = Registry("exposure store")
RESULT_CACHES: Registry[Any] = Registry("result cache")
HISTORY_STORES: Registry[Any] = Registry("history store")  # online/state.py: real-time user history
FEATURE_TRANSFORMERS: Registry[Any] = Registry("feature transformer")
RERANKERS: Registry[Any] = Registry("re-ranker")
STATISTICS: Registry[Any] = Registry("statistic")
MERGE_STRATEGIES: Registry[Any] = Registry("merge strategy")
RERANKERS: Registry[Any] = Registry("re-ranker")
