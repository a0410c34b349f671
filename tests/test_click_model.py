"""The position-based click model recovers the examination curve that generated the clicks (issue 24)."""

import numpy as np
import pytest

from finetune.click_model import fit_pbm

from test_personal import events_for, store_kind  # noqa: F401  (store_kind: SQLite and PostgreSQL)


def simulate(n_queries=400, per_query=10, shows=30, seed=0, eta=1.0):
    """Impressions of each query's products in a fresh random order each time; clicks = examined (θ_k = 1/k^eta)
    and relevant (γ per pair)."""
    rng = np.random.default_rng(seed)
    theta = 1.0 / np.arange(1, per_query + 1) ** eta
    gamma = rng.beta(0.6, 1.5, size=n_queries * per_query)
    pair, rank, click = [], [], []
    for q in range(n_queries):
        for _ in range(shows):
            order = rng.permutation(per_query)
            ids = q * per_query + order
            r = np.arange(1, per_query + 1)
            c = rng.random(per_query) < theta * gamma[ids]
            pair.append(ids)
            rank.append(r)
            click.append(c)
    return np.concatenate(pair), np.concatenate(rank), np.concatenate(click), theta, gamma


def test_em_recovers_the_examination_curve_and_the_relevance_order():
    pair, rank, click, theta, gamma = simulate()
    fit = fit_pbm(pair, rank, click)
    assert np.allclose(fit.propensity, theta / theta[0], atol=0.05), fit.propensity
    # relevance estimates order the pairs as the truth does (Spearman)
    rho = np.corrcoef(np.argsort(np.argsort(fit.relevance)), np.argsort(np.argsort(gamma)))[0, 1]
    assert rho > 0.8
    # the naive click rate per rank is the biased curve the model corrects: it mixes examination and relevance
    naive = np.bincount(rank - 1, click) / np.bincount(rank - 1)
    assert fit.log_likelihood > -np.inf and fit.iterations > 1
    assert np.allclose(naive / naive[0], theta / theta[0], atol=0.05)  # random orders: naive is unbiased here
    w = fit.weights(np.array([1, 5, 10, 50]), clip=6.0)
    assert w[0] == pytest.approx(1.0) and 4.0 < w[1] < 6.0 and w[2] == w[3] == 6.0  # θ_1/θ_5 ≈ 5, clipped


def test_with_a_fixed_order_the_naive_rate_is_biased_and_the_model_is_not():
    """Logged by a ranker: each query shows its products mostly in one order (a few swaps), as production does.
    The naive click rate per rank then mixes relevance into position; EM separates them."""
    rng = np.random.default_rng(1)
    per_query, n_queries, shows = 10, 600, 30
    theta = 1.0 / np.arange(1, per_query + 1)
    gamma = np.sort(rng.beta(0.6, 1.5, size=(n_queries, per_query)), axis=1)[:, ::-1].ravel()  # best first
    pair, rank, click = [], [], []
    for q in range(n_queries):
        for _ in range(shows):
            order = np.arange(per_query)
            i = rng.integers(0, per_query - 1, size=3)
            for j in i:  # a few adjacent swaps (interleaving, ties, updates): the variation EM needs
                order[[j, j + 1]] = order[[j + 1, j]]
            ids = q * per_query + order
            pair.append(ids)
            rank.append(np.arange(1, per_query + 1))
            click.append(rng.random(per_query) < theta * gamma[ids])
    pair, rank, click = np.concatenate(pair), np.concatenate(rank), np.concatenate(click)
    naive = np.bincount(rank - 1, click) / np.bincount(rank - 1)
    fit = fit_pbm(pair, rank, click)
    truth = theta / theta[0]
    assert np.abs(naive / naive[0] - truth)[-1] > 0.03  # the naive curve falls too fast: relevance is in it
    assert np.abs(fit.propensity - truth).max() < np.abs(naive / naive[0] - truth).max()
    assert np.abs(fit.propensity - truth).max() < 0.06
    biased = fit_pbm(pair, rank, click, prior=1.0)  # a prior pulls the nearly irrelevant deep pairs up
    assert np.abs(biased.propensity - truth).max() > np.abs(fit.propensity - truth).max()


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="1-based"):
        fit_pbm(np.array([0]), np.array([0]), np.array([True]))
    with pytest.raises(ValueError, match="no logged rows"):
        fit_pbm(np.array([], dtype=int), np.array([], dtype=int), np.array([], dtype=bool))
    with pytest.raises(ValueError, match="differ in length"):
        fit_pbm(np.array([0, 1]), np.array([1]), np.array([True]))


def test_the_click_model_fits_on_the_stores_logged_searches_a_page_at_a_time(tmp_path, store_kind):  # noqa: F811
    """Searches logged as impressions and clicks sent with their search ids, read back from the store in pages:
    the examination curve that generated the clicks comes out (SQLite and PostgreSQL)."""
    import time

    from engine.events import Impression
    from finetune.logged import click_rows

    ev = events_for(tmp_path, kind=store_kind)
    rng = np.random.default_rng(3)
    ids = [f"P{i}" for i in range(6)]
    theta = 1.0 / np.arange(1, 7)
    queries = [f"q{i}" for i in range(60)]
    gamma = {(q, p): rng.beta(1.0, 1.0) for q in queries for p in ids}
    now = time.time() - 3600
    imps, clicks = [], []
    for n in range(1800):
        q = queries[n % len(queries)]
        shown = [ids[i] for i in rng.permutation(6)]
        imp = Impression(f"s{n:05d}", now + n, None, q, None, products=shown)
        imps.append(imp)
        for r, p in enumerate(shown, start=1):
            if rng.random() < theta[r - 1] * gamma[(q, p)]:
                clicks.append((f"anon:{imp.search_id}", p, ids.index(p), imp.ts, q, (imp.search_id, r, None)))
    ev.log_impressions(imps)
    users, pids, rows, ts, qs, links = (list(c) for c in zip(*clicks))
    ev.append_bulk(users, pids, np.asarray(rows), ["click"] * len(users), np.asarray(ts), qs, links)
    pages = []
    real = ev.store.impression_pages

    def counted(since, until, page):
        for rows_ in real(since, until, page):
            pages.append(len(rows_))
            yield rows_

    ev.store.impression_pages = counted
    got = click_rows(ev, now - 1, now + 10_000, {"click": 1.0}, page=250)
    assert got.searches == 1800 and max(pages) == 250 and len(pages) == 8  # 7 full pages and the rest
    assert len(got.pair) == 1800 * 6 and int(got.clicked.sum()) == len(clicks)
    fit = fit_pbm(got.pair, got.rank, got.clicked)
    assert np.abs(fit.propensity - theta / theta[0]).max() < 0.1, fit.propensity
    assert click_rows(ev, now + 900, now + 901, {"click": 1.0}).searches == 1  # a time window
