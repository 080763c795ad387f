"""The dataset contract and its loaders. Importing this package registers the loaders."""

from funnelrec.data.dataset import Dataset, IdMap, TrainData
from funnelrec.data.schema import Schema

__all__ = ["Dataset", "IdMap", "Schema", "TrainData", "load_dataset"]


def load_dataset(name: str, **kwargs):
    """Load a registered dataset by name ('movielens-100k', 'synthetic', 'tabular')."""
    from funnelrec.core.registry import DATASETS
    from funnelrec.data import movielens  # noqa: F401  (registers)

    try:
        from funnelrec.data import synthetic  # noqa: F401
    except ImportError:
        pass
    try:
        from funnelrec.data import tabular  # noqa: F401
    except ImportError:
        pass
    return DATASETS.get(name)(**kwargs)
