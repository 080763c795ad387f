"""The KD-tree backend (scipy cKDTree): the MIPS→L2 transform on hand-computed vectors, exactness
against faiss's IndexFlatIP / IndexFlatL2, growth by add, explicit ids, and its errors."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
from scipy.spatial import cKDTree

from funnelrec.core.errors import ArtifactError, ConfigError
from funnelrec.index import VectorIndex, mips_augment, parse_factory

faiss.omp_set_num_threads(1)

# four items, one query q = (1, 1); worked by hand:
#   ‖x‖² = 25, 1, 4, 2 → M² = 25, extra coordinate sqrt(25 − ‖x‖²) = 0, √24, √21, √23
#   ⟨q, x⟩ = 7, 1, 2, −2 → MIPS order 0, 2, 1, 3
#   ‖q̃ − x̃‖² = ‖q‖² + M² − 2⟨q, x⟩ = 27 − 2⟨q, x⟩ = 13, 25, 23, 31
#   plain ‖q − x‖² = 13, 1, 2, 8 → L2 order 1, 2, 3, 0 (not the MIPS order: the transform matters)
X4 = np.array([[3, 4], [1, 0], [0, 2], [-1, -1]], np.float32)
Q1 = np.array([[1, 1]], np.float32)


def test_mips_transform_by_hand():
    aug = mips_augment(X4)
    np.testing.assert_allclose(aug[:, 2], [0.0, np.sqrt(24), np.sqrt(21), np.sqrt(23)])
    np.testing.assert_allclose(np.linalg.norm(aug, axis=1), 5.0)  # every x̃ lies on the sphere of radius M
    d2 = ((np.array([1.0, 1.0, 0.0]) - aug) ** 2).sum(1)
    np.testing.assert_allclose(d2, [13, 25, 23, 31])
    dist, pos = cKDTree(aug).query([[1.0, 1.0, 0.0]], k=4)
    assert pos[0].tolist() == [0, 2, 1, 3]
    np.testing.assert_allclose(dist[0] ** 2, [13, 23, 25, 31])


def test_kdtree_index_by_hand_inner_product_and_l2():
    s, i = VectorIndex("KDTree", 2, metric="ip").add(X4).search(Q1, 4)
    assert i[0].tolist() == [0, 2, 1, 3]
    np.testing.assert_array_equal(s[0], [7, 2, 1, -2])
    s, i = VectorIndex("KDTree", 2, metric="l2").add(X4).search(Q1, 4)
    assert i[0].tolist() == [1, 2, 3, 0]
    np.testing.assert_array_equal(s[0], [-1, -2, -8, -13])
    s, i = VectorIndex("KDTree", 2).add(X4).search(Q1, 2, exclude=[[0]])
    assert i[0].tolist() == [2, 1]
    # the query is scaled to norm M inside the tree (a positive factor): a short query keeps the
    # order, and the scores are its own inner products
    s, i = VectorIndex("KDTree", 2).add(X4).search(Q1 * 1e-3, 4)
    assert i[0].tolist() == [0, 2, 1, 3]
    np.testing.assert_allclose(s[0], [7e-3, 2e-3, 1e-3, -2e-3], rtol=1e-5)
    s, i = VectorIndex("KDTree", 2).add(X4).search(np.zeros((1, 2), np.float32), 4)  # ‖q‖ = 0: every score 0
    assert sorted(i[0].tolist()) == [0, 1, 2, 3] and (s == 0).all()


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("dim", [3, 16])
def test_exact_against_faiss_flat(metric, dim):
    rng = np.random.default_rng(dim)
    # norms spread over a factor of ~4, so the extra coordinate is far from constant
    x = (rng.standard_normal((3000, dim)) * rng.uniform(0.5, 2.0, (3000, 1))).astype(np.float32)
    q = rng.standard_normal((60, dim)).astype(np.float32)
    ref = faiss.IndexFlatIP(dim) if metric == "ip" else faiss.IndexFlatL2(dim)
    ref.add(x)
    d_ref, i_ref = ref.search(q, 10)
    s, i = VectorIndex("KDTree8", dim, metric=metric).add(x).search(q, 10)
    np.testing.assert_array_equal(i, i_ref)
    np.testing.assert_allclose(s, d_ref if metric == "ip" else -d_ref, rtol=1e-5, atol=1e-4)


def test_add_twice_equals_one_add_even_when_the_max_norm_grows():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((500, 6)).astype(np.float32)
    b = 3.0 * rng.standard_normal((500, 6)).astype(np.float32)  # larger norms: M changes
    q = rng.standard_normal((30, 6)).astype(np.float32)
    two = VectorIndex("KDTree", 6).add(a).add(b)
    one = VectorIndex("KDTree", 6).add(np.vstack([a, b]))
    np.testing.assert_array_equal(two.search(q, 10)[1], one.search(q, 10)[1])
    truth = np.argsort(-(q.astype(np.float64) @ np.vstack([a, b]).T.astype(np.float64)), axis=1)[:, :10]
    np.testing.assert_array_equal(two.search(q, 10)[1], truth)


def test_add_with_ids_and_round_trip(tmp_path):
    ids = np.array([40, 10, 30, 20], np.int64)
    index = VectorIndex("KDTree", 2).add_with_ids(X4, ids)
    assert index.search(Q1, 4)[1][0].tolist() == [40, 30, 10, 20]
    back = VectorIndex.load(index.save(tmp_path / "kd"), mmap=False)
    assert back.search(Q1, 4)[1][0].tolist() == [40, 30, 10, 20]
    assert sorted(p.name for p in (tmp_path / "kd").iterdir()) == ["index.json", "index.kdtree.npz"]


def test_k_above_ntotal_pads():
    s, i = VectorIndex("KDTree", 2).add(X4).search(Q1, 6)
    assert i[0].tolist() == [0, 2, 1, 3, -1, -1]
    assert np.isneginf(s[0, 4:]).all()


def test_bad_factories_params_and_files(tmp_path):
    assert parse_factory("KDTree32") == ("kdtree", "KDTree32", 0)
    with pytest.raises(ConfigError, match="leaf size"):
        VectorIndex("KDTree0", 4)
    with pytest.raises(ConfigError, match="Rerank"):
        VectorIndex("KDTree,Rerank10", 4)
    index = VectorIndex("KDTree", 2).add(X4)
    with pytest.raises(ConfigError, match="nprobe"):
        index.set_params(nprobe=4)
    with pytest.raises(ConfigError, match="workers"):
        index.set_params(workers=0)
    path = index.save(tmp_path / "kd")
    read_only = VectorIndex.load(path, mmap=True)
    with pytest.raises(ArtifactError, match="read-only"):
        read_only.add(X4)
    (path / "index.kdtree.npz").write_bytes(b"x" * (path / "index.kdtree.npz").stat().st_size)
    with pytest.raises(ArtifactError, match="checksum"):
        VectorIndex.load(path)
    with pytest.raises(ArtifactError, match="KD-tree"):
        VectorIndex.load(path, verify=False)


def test_near_ties_the_transformed_distance_cannot_separate_come_back_in_inner_product_order():
    # one far item sets M = 1e7, so ‖q̃ − x̃‖² = 2M² − 2M⟨q̂, x⟩ ≈ 2e14, whose float64 spacing
    # (~0.03) swallows the 2M · 2e-9 = 0.04 gaps between the near-tied items' inner products
    # (1e-3 · (1 + g · 2e-6), distinct in fp32): the tree returns them in whatever order its
    # traversal meets them; the exact inner products, recomputed from the stored vectors, must
    # order them. The far item has ⟨q, x⟩ = 0: last.
    # The first coordinate (q ignores it) spreads the items apart: with it all 0 the augmented
    # points differ in one coordinate only, and scipy 1.17's cKDTree build crashed on them
    # (SIGSEGV) late in a full test run, never alone.
    rng = np.random.default_rng(0)
    gaps = rng.permutation(20).astype(np.float32)
    near = np.stack([rng.uniform(-0.5, 0.5, 20).astype(np.float32),
                     np.float32(1e-3) * (1 + gaps * np.float32(2e-6))], axis=1)
    assert len(np.unique(near[:, 1])) == 20
    x = np.vstack([np.array([[1e7, 0.0]], np.float32), near]).astype(np.float32)
    q = np.array([[0.0, 1.0]], np.float32)
    truth = 1 + np.argsort(-near[:, 1].astype(np.float64), kind="stable")
    for factory in ("KDTree2", "KDTree"):
        s, i = VectorIndex(factory, 2).add(x).search(q, 21)
        assert i[0, :20].tolist() == truth.tolist() and i[0, 20] == 0
        assert np.all(np.diff(s[0]) <= 0)
