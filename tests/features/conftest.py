"""The hand-computed world of test_transformers.py (its docstring lists every value)."""

import polars as pl
import pytest

from funnelrec.data.dataset import Dataset, TrainData
from funnelrec.data.schema import Schema

YEAR = 365.25 * 86400


@pytest.fixture(scope="session")
def world() -> TrainData:
    users = pl.DataFrame({"user_id": [1, 2, 3, 4], "gender": ["M", "F", "M", "F"], "age": [20, 30, 40, 50]})
    items = pl.DataFrame({"item_id": [10, 20, 30], "genres": [["a", "b"], ["b"], ["c"]],
                          "publish_time": [0, int(YEAR), None]})
    inter = pl.DataFrame({"user_id": [1, 1, 1, 2, 2, 3], "item_id": [10, 20, 30, 10, 20, 30],
                          "timestamp": [100, 200, 300, 150, 250, 50], "rating": [5.0, 2.0, 4.0, 4.0, 5.0, 1.0]})
    schema = Schema(interactions={"user_id": "categorical", "item_id": "categorical", "timestamp": "time",
                                  "rating": "label"},
                    users={"user_id": "categorical", "gender": "categorical", "age": "numeric"},
                    items={"item_id": "categorical", "genres": "multi", "publish_time": "time"})
    ds = Dataset.build("hand", inter, schema, users=users, items=items)
    assert ds.users["user_id"].to_list() == [1, 2, 3, 4] and ds.items["item_id"].to_list() == [10, 20, 30]
    return TrainData(ds, ds.interactions)
