"""Vector indexes (faiss by factory string, hnswlib, scipy's KD-tree) for embedding recall."""

from funnelrec.index.vector import (
    FaissBackend,
    HnswlibBackend,
    KDTreeBackend,
    VectorIndex,
    mips_augment,
    parse_factory,
)

__all__ = ["FaissBackend", "HnswlibBackend", "KDTreeBackend", "VectorIndex", "mips_augment", "parse_factory"]
