"""The funnel config the candidate-ranker tests fit on the `world` fixture (conftest.py)."""

from __future__ import annotations

from funnelrec.pipeline.config import FunnelConfig


def tiny_funnel_config(epochs: int = 1, /, **rank) -> FunnelConfig:
    """itemCF + hot → merge 60 → the ranker `rank` configures (its `epochs` overrides the default)."""
    return FunnelConfig.from_dict({
        "recall": {"channels": [{"name": "itemcf", "n": 40}, {"name": "hot", "n": 30}], "merge": {"total": 60}},
        "rank": {"epochs": epochs, "user_columns": ["age_band", "gender"], "item_columns": ["tags"],
                 "match_columns": ["tags"], "ridge_lambda": 0.0, **rank}})
