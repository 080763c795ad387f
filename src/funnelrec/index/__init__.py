"""Vector indexes (faiss by factory string, hnswlib, scipy's KD-tree, Milvus) for embedding recall."""

from funnelrec.index.milvus import MilvusBackend  # registers "milvus" (pymilvus is imported only when used)
from funnelrec.index.vector import (
    FaissBackend,
    HnswlibBackend,
    KDTreeBackend,
    VectorIndex,
    mips_augment,
    parse_factory,
)

__all__ = ["FaissBackend", "MilvusBackend", "HnswlibBackend", "KDTreeBackend", "VectorIndex", "mips_augment", "parse_factory"]
