"""The index job on Ray Data gives the single-process build's indexes (tokens, vectors, groups, rankings)."""

import os

import numpy as np
import pytest

if not os.environ.get("CI"):
    pytest.importorskip("ray", reason="pip install -e '.[scale]'")

from indexer.bm25 import BM25Index  # noqa: E402
from indexer.build import build_indexes  # noqa: E402
from indexer.dense import DenseIndex  # noqa: E402

from conftest import make_config  # noqa: E402


@pytest.fixture(scope="module")
def ray_runner():
    import ray

    from indexer.distributed import RayRunner

    runner = RayRunner(2)
    yield runner
    ray.shutdown()


def test_the_ray_build_equals_the_single_process_build(demo_dir, tiny_model, tmp_path, ray_runner):
    def cfg(name):
        return make_config(
            tmp_path / name,
            demo_dir / "catalog.jsonl",
            search={"stages": ["bm25", "dense"]},
            dense={"model": str(tiny_model), "base_model": str(tiny_model), "max_length": 32},
            bm25={"fields": {"words": 0.3, "chars": 0.7}},
        )

    single, distributed = cfg("single"), cfg("ray")
    build_indexes(single, progress=False)
    build_indexes(distributed, progress=False, runner=ray_runner)
    assert ray_runner.workers == 2
    a = BM25Index.load((single.index_dir / "bm25").resolve(), single.text)
    b = BM25Index.load((distributed.index_dir / "bm25").resolve(), distributed.text)
    for f in ("words", "chars"):
        assert a.retrievers[f].vocab_dict == b.retrievers[f].vocab_dict
        np.testing.assert_array_equal(a.doc_tokens[f].ids, b.doc_tokens[f].ids)
        np.testing.assert_array_equal(a.doc_tokens[f].indptr, b.doc_tokens[f].indptr)
    for q in ("蓝牙耳机", "华为 手机", "猫粮 成猫"):
        np.testing.assert_array_equal(a.search(q, 10).rows, b.search(q, 10).rows)
    da = DenseIndex.load((single.index_dir / "dense").resolve(), None)
    db = DenseIndex.load((distributed.index_dir / "dense").resolve(), None)
    va, vb = da.index.reconstruct_batch(np.arange(da.n)), db.index.reconstruct_batch(np.arange(db.n))
    np.testing.assert_allclose(va, vb, atol=1e-5)  # the same encoder on other batches: float rounding only
    np.testing.assert_array_equal(da.groups, db.groups)
