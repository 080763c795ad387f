"""Vector indexes (faiss by factory string, hnswlib) for embedding recall."""

from funnelrec.index.vector import FaissBackend, HnswlibBackend, VectorIndex, parse_factory

__all__ = ["FaissBackend", "HnswlibBackend", "VectorIndex", "parse_factory"]
