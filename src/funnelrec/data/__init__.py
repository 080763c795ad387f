"""The dataset contract and its loaders. Importing this package registers the loaders in
`DATASETS` (movielens-100k, synthetic, tabular), so `DATASETS.names()` lists every one."""

import inspect

from funnelrec.data import movielens, synthetic, tabular  # noqa: F401  (each registers its loader)
from funnelrec.data.dataset import Dataset, IdMap, TrainData
from funnelrec.data.schema import Schema

__all__ = ["Dataset", "IdMap", "Schema", "TrainData", "load_dataset"]


def load_dataset(name: str, /, **kwargs):
    """Load a registered dataset by name (one of `DATASETS.names()`); `kwargs` go to its loader
    (positional-only `name`, so a loader's own `name=` option passes through)."""
    from funnelrec.core.errors import ConfigError
    from funnelrec.core.registry import DATASETS

    loader = DATASETS.get(name)
    try:  # a misspelt option is the user's error, named in one line (not a TypeError trace)
        inspect.signature(loader).bind(**kwargs)
    except TypeError as e:
        raise ConfigError(f"dataset {name!r}: {e}") from None
    return loader(**kwargs)
