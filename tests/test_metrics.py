import numpy as np
import pytest
from ranx import Qrels, Run, evaluate

from core import metrics


def random_case(seed, n_q=60, n_docs=80):
    rng = np.random.default_rng(seed)
    qrels, run = {}, {}
    for q in range(n_q):
        qid = f"q{q}"
        judged = rng.choice(n_docs, size=rng.integers(1, 8), replace=False)
        qrels[qid] = {f"d{d}": int(rng.integers(1, 4)) for d in judged}
        retrieved = rng.choice(n_docs, size=rng.integers(0, 50), replace=False)
        scores = rng.permutation(len(retrieved)) + rng.random(len(retrieved))  # distinct scores
        run[qid] = {f"d{d}": float(s) for d, s in zip(retrieved, scores)}
    return qrels, run


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_ranx(seed):
    qrels, run = random_case(seed)
    # ranx drops queries with an empty run; give them a dummy non-relevant result
    run_r = {q: (r or {"none": 0.0}) for q, r in run.items()}
    ref = evaluate(Qrels(qrels), Run(run_r), ["mrr@10", "ndcg@10", "recall@10", "recall@30", "map"])
    assert metrics.mrr(qrels, run, 10) == pytest.approx(ref["mrr@10"], abs=1e-9)
    assert metrics.ndcg(qrels, run, 10) == pytest.approx(ref["ndcg@10"], abs=1e-9)
    assert metrics.recall(qrels, run, 10) == pytest.approx(ref["recall@10"], abs=1e-9)
    assert metrics.recall(qrels, run, 30) == pytest.approx(ref["recall@30"], abs=1e-9)
    assert metrics.average_precision(qrels, run) == pytest.approx(ref["map"], abs=1e-9)


def test_hand_computed_values():
    qrels = {"q": {"a": 3, "b": 1, "z": 2}}
    run = {"q": ["x", "a", "y", "b"]}
    assert metrics.mrr(qrels, run, 10) == 0.5
    assert metrics.mrr(qrels, run, 1) == 0.0
    dcg = 3 / np.log2(3) + 1 / np.log2(5)
    idcg = 3 + 2 / np.log2(3) + 1 / np.log2(4)
    assert metrics.ndcg(qrels, run, 10) == pytest.approx(dcg / idcg)
    assert metrics.recall(qrels, run, 10) == pytest.approx(2 / 3)
    # threshold on judged values: only "a" (3) counts as relevant
    assert metrics.recall(qrels, run, 10, threshold=2.5) == 1.0
    assert metrics.average_precision(qrels, run) == pytest.approx((1 / 2 + 2 / 4) / 3)
    # a query missing from the run scores 0 and still counts
    assert metrics.mrr({**qrels, "q2": {"a": 1}}, run, 10) == 0.25
    assert metrics.recall_curve(qrels, run, [1, 2, 4]) == pytest.approx([0, 1 / 3, 2 / 3])


def test_recall_of_a_query_with_nothing_to_find_is_undefined_and_left_out():
    from eval.significance import intervals, paired

    # q2's judged products are all rated below the threshold: nothing to recall
    qrels = {"q1": {"a": 3, "b": 3}, "q2": {"c": 2, "d": 1}, "q3": {"e": 3}}
    run = {"q1": ["a", "x"], "q2": ["c", "d"], "q3": ["y"]}
    per = metrics.recall(qrels, run, 10, threshold=2.5, per_query=True)
    assert per[0] == 0.5 and np.isnan(per[1]) and per[2] == 0.0
    assert metrics.recall(qrels, run, 10, threshold=2.5) == pytest.approx(0.25)  # over q1 and q3, not 3 queries
    assert metrics.recall_curve(qrels, run, [1, 10], threshold=2.5) == pytest.approx([0.25, 0.25])
    assert metrics.recall({"q": {"a": 1}}, {"q": ["a"]}, 10, threshold=2.5) == 0.0  # none defined: 0
    # intervals and paired differences leave the undefined query out on both sides
    other = np.array([1.0, np.nan, 1.0])
    assert intervals({"recall@10": per})["recall@10"]["mean"] == pytest.approx(0.25)
    d = paired({"recall@10": per}, {"recall@10": other})["recall@10"]
    assert d["diff"] == pytest.approx(0.75) and d["a"] == pytest.approx(0.25)


def test_ties_keep_the_order_the_system_returned():
    qrels = {"q": {"b": 1}}
    assert metrics.mrr(qrels, {"q": {"b": 2.0, "a": 2.0}}, 10) == 1.0  # b returned first among equals
    assert metrics.mrr(qrels, {"q": {"a": 2.0, "b": 2.0}}, 10) == 0.5
