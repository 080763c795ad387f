"""Business rules of the filter stage: items a user's own recent events rule out.

    rules:
      - {types: [purchase], ttl_s: 2592000}    # what was bought is not offered again for 30 days

A rule names event types (the funnel's EVENT_TYPES, or a team's own types mapped to one by
`labels.map.<type>.means`) and a time to live: an item the user had such an event on less than
`ttl_s` seconds before the request is removed between merge and pre-rank, like the client's
`exclude` ids. The service keeps each user's events of the rules' types in the history store
(online/state.py) under a key of their own, so the views after a purchase never push it out;
`rule_exclusions` is the pure part.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from funnelrec.core.errors import ConfigError


@dataclass(frozen=True)
class RuleSpec:
    """Remove items the user had an event of `types` on within the last `ttl_s` seconds."""

    types: list[str] = field(default_factory=lambda: ["purchase"])
    ttl_s: int = 30 * 86400

    def __post_init__(self) -> None:
        if not self.types:
            raise ConfigError("rules[].types: at least one event type is required")
        if isinstance(self.ttl_s, bool) or not isinstance(self.ttl_s, int) or self.ttl_s < 1:
            raise ConfigError(f"rules[].ttl_s must be an integer ≥ 1 (seconds), got {self.ttl_s!r}")


def check_rules(rules: Sequence[RuleSpec], meaning: Mapping[str, str] | None = None) -> None:
    """Every rule type is a history event type (directly or through `meaning`): ConfigError
    naming the key otherwise (an impression or follow never enters the history)."""
    from funnelrec.online.state import HISTORY_TYPES

    meaning = meaning or {}
    for i, r in enumerate(rules):
        for t in r.types:
            if meaning.get(t, t) not in HISTORY_TYPES:
                raise ConfigError(f"rules[{i}].types: {t!r} never enters the user's history; rules read "
                                  f"{', '.join(HISTORY_TYPES)} (or a labels.map type that means one of them)")


def rule_types(rules: Sequence[RuleSpec], meaning: Mapping[str, str] | None = None) -> set[str]:
    """The funnel event types any rule reads (a team's own names resolved through `meaning`)."""
    meaning = meaning or {}
    return {meaning.get(t, t) for r in rules for t in r.types}


def rule_exclusions(rules: Sequence[RuleSpec], keys: np.ndarray, ts: np.ndarray, types: Sequence[str],
                    now: int, meaning: Mapping[str, str] | None = None) -> np.ndarray:
    """Item keys the rules remove for one user, from the user's history events (keys, ts,
    type names): an event of a rule's type with now − ts < ttl_s. Sorted, unique."""
    if not rules or not len(keys):
        return np.empty(0, np.int64)
    meaning = meaning or {}
    keys, ts = np.asarray(keys, np.int64), np.asarray(ts, np.int64)
    names = np.asarray([meaning.get(t, t) for t in types], dtype=object)  # both sides in the funnel's names
    drop = np.zeros(len(keys), bool)
    for r in rules:
        wanted = {meaning.get(t, t) for t in r.types}
        drop |= np.isin(names, list(wanted)) & (now - ts < r.ttl_s)
    return np.unique(keys[drop])
