"""The column an attribute channel reads when its config names none: picked from the schema, so
a channel's default fits any data meeting the contract (no dataset's column names in code)."""

from __future__ import annotations

from typing import Any

from funnelrec.core.errors import ConfigError


def schema_column(dataset: Any, kinds: tuple[str, ...], key: str, name_hint: str = "") -> str:
    """The first items column of the schema whose kind is in `kinds` (a column whose name holds
    `name_hint`, when given, wins) present in the items table; ConfigError naming the config
    `key` to set when there is none."""
    items = dataset.items.columns
    cols = [c for k in kinds for c in dataset.schema.columns("items", k) if c in items and c != "item_id"]
    cols = sorted(cols, key=lambda c: (name_hint not in c) if name_hint else 0)
    if not cols:
        raise ConfigError(f"{key}: no items column of kind {' or '.join(kinds)} in the schema to default to; "
                          f"set it to one of: {', '.join(c for c in items if c not in ('item_id', 'item_idx'))}")
    return cols[0]
