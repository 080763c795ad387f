"""Recall channels and the merge. Importing this package registers every channel in
`RECALL_CHANNELS` (hot, fresh, itemcf, usercf, swing, tag, geo, author, cache, ease, and vector
where its module is present)."""

import importlib

from funnelrec.recall import hot, itemcf  # noqa: F401  (register)
from funnelrec.recall.base import RecallChannel, RecallContext

for _mod in ("fresh", "usercf", "swing", "tag", "geo", "author", "cache", "vector", "ease"):
    try:
        importlib.import_module(f"funnelrec.recall.{_mod}")
    except ModuleNotFoundError as e:  # a channel module not written yet; any other error surfaces
        if e.name != f"funnelrec.recall.{_mod}":
            raise

__all__ = ["RecallChannel", "RecallContext"]
