"""Pools: lineage through select/concat, .npy storage without pickles, lazy history."""
import numpy as np
import pytest

from collapsekit.errors import RunStateError
from collapsekit.pool import REAL, Pool, PoolHistory


def make(n, generation, offset=0):
    return Pool.fresh({"tokens": np.arange(n * 3).reshape(n, 3) + offset, "y": np.arange(n)}, generation)


def test_fresh_pool_lineage_counts_from_zero():
    pool = make(4, 2)
    assert pool.origin_generation.tolist() == [2, 2, 2, 2]
    assert pool.origin_index.tolist() == [0, 1, 2, 3]


def test_select_and_concat_keep_lineage():
    merged = Pool.concat([make(3, REAL), make(2, 0, offset=100)])
    picked = merged.select([4, 0])
    assert picked.origin_generation.tolist() == [0, REAL]
    assert picked.origin_index.tolist() == [1, 0]
    assert picked.arrays["tokens"][0].tolist() == [103, 104, 105]


def test_mask_select():
    pool = make(4, 1)
    kept = pool.select(np.array([True, False, True, False]))
    assert kept.origin_index.tolist() == [0, 2]


def test_concat_rejects_different_arrays():
    other = Pool.fresh({"x": np.zeros(2)}, 0)
    with pytest.raises(ValueError, match="different arrays"):
        Pool.concat([make(2, 0), other])


def test_length_mismatch_and_reserved_names_rejected():
    with pytest.raises(ValueError, match="items"):
        Pool({"x": np.zeros(3)}, np.zeros(2, dtype=np.int64), np.zeros(2, dtype=np.int64))
    with pytest.raises(ValueError, match="reserved"):
        Pool.fresh({"origin_index": np.zeros(2)}, 0)


def test_save_load_roundtrip_is_npy_without_pickle(tmp_path):
    pool = make(5, 3)
    files = pool.save(tmp_path / "p")
    assert sorted(files.values()) == ["origin_generation.npy", "origin_index.npy", "tokens.npy", "y.npy"]
    for name in files.values():  # loadable with pickles forbidden: plain arrays only
        np.load(tmp_path / "p" / name, allow_pickle=False)
    back = Pool.load(tmp_path / "p")
    assert isinstance(back.arrays["tokens"], np.memmap)
    np.testing.assert_array_equal(back.arrays["tokens"], pool.arrays["tokens"])
    np.testing.assert_array_equal(back.origin_generation, pool.origin_generation)


def test_truncated_file_is_reported_by_name(tmp_path):
    make(5, 0).save(tmp_path / "p")
    path = tmp_path / "p" / "tokens.npy"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(RunStateError, match="tokens.npy"):
        Pool.load(tmp_path / "p")


def test_history_is_lazy_and_indexable(tmp_path):
    for g in range(3):
        make(2 + g, g).save(tmp_path / f"g{g}")
    history = PoolHistory(lambda g: tmp_path / f"g{g}", 3)
    assert len(history) == 3
    assert history.sizes() == [2, 3, 4]
    assert history[-1].origin_generation[0] == 2
    with pytest.raises(IndexError):
        history[3]


def test_weights_follow_select_concat_and_files(tmp_path):
    weighted = make(3, REAL).with_weights([2.0, 0.5, 1.0])
    merged = Pool.concat([weighted, make(2, 0)])                 # an unweighted pool's items weigh 1
    assert merged.weights.tolist() == [2.0, 0.5, 1.0, 1.0, 1.0]
    assert merged.select([4, 0]).weights.tolist() == [1.0, 2.0]
    assert Pool.concat([make(1, 0), make(1, 1)]).weights is None
    merged.save(tmp_path / "w")
    assert Pool.load(tmp_path / "w").weights.tolist() == merged.weights.tolist()
    assert "weight" not in Pool.load(tmp_path / "w").arrays


@pytest.mark.parametrize("weights, fragment", [([1.0, 2.0], "shape"), ([1.0, -1.0, 1.0], ">= 0"),
                                               ([1.0, float("nan"), 1.0], "finite")])
def test_bad_weights_and_the_reserved_name_are_refused(weights, fragment):
    with pytest.raises(ValueError, match=fragment):
        make(3, 0).with_weights(weights)
    with pytest.raises(ValueError, match="reserved for per-item loss weights"):
        Pool.fresh({"weight": np.zeros(2)}, 0)


def test_batches_carry_the_weights():
    from collapsekit.task import PoolBatches, pool_batch

    pool = make(4, 0).with_weights([1.0, 2.0, 3.0, 4.0])
    assert PoolBatches(pool).__getitems__([3, 1])["weight"].tolist() == [4.0, 2.0]
    assert "weight" not in pool_batch(make(4, 0), slice(0, 2))
