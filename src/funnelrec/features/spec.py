"""`FeatureSpec`: what a ranking model needs to know about its input to build its layers.

It lives in features/ (below models/ in docs/ARCHITECTURE.md's table) because the feature
encoder produces it and every model consumes it; models/ranking/base.py re-exports it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FeatureSpec:
    """What a model needs to know about its input to build its layers."""

    n_embeddings: int  # rows of the shared embedding table (incl. row 0 = padding)
    n_fields: int  # F, columns of "sparse"
    n_dense: int = 0  # Dn
    seq_len: int = 0  # L (0 = no sequence features)
    n_domains: int = 1
    tasks: tuple[str, ...] = ("ctr",)
    field_names: tuple[str, ...] = ()  # name of each "sparse" column (len F when known)
    # FieldEmbedder mean-pools the adjacent columns of a multi-valued field (same name in
    # field_names) into ONE field over its non-padding values (RecBole's token_seq fields)
    pool_multi: bool = False
