"""Clipped IPS estimates of a new ranking's clicks from logged searches, and the ship guard they feed (issue 24)."""

import numpy as np
import pytest

from finetune.counterfactual import guard, ips_clicks_at_k


def logged_world(n_searches=3000, n=10, seed=0):
    """Searches that each showed n products in the logging ranker's order (noisy by relevance); clicks from the
    position-based model θ_r = 1/r, γ per product."""
    rng = np.random.default_rng(seed)
    theta = 1.0 / np.arange(1, n + 1)
    gamma = rng.beta(0.7, 1.5, size=(n_searches, n))
    logged = np.argsort(np.argsort(-(gamma + rng.normal(0, 0.3, gamma.shape)), axis=1), axis=1) + 1  # rank per item
    clicked = rng.random(gamma.shape) < theta[logged - 1] * gamma
    search = np.repeat(np.arange(n_searches), n)
    return search, logged.ravel(), clicked.ravel(), gamma, theta


def ranks_by(score):
    return (np.argsort(np.argsort(-score, axis=1), axis=1) + 1).ravel()


def expected_clicks(gamma, ranks, theta, k=10):
    r = ranks.reshape(gamma.shape)
    return float((gamma * theta[np.minimum(r, len(theta)) - 1] * (r <= k)).sum(axis=1).mean())


def test_the_estimate_matches_the_clicks_a_ranking_would_draw():
    search, logged, clicked, gamma, theta = logged_world()
    for name, score in (("ideal", gamma), ("reversed", -gamma)):
        new = ranks_by(score)
        est = ips_clicks_at_k(search, logged, new, clicked, theta, k=10, clip=1e9).mean()
        truth = expected_clicks(gamma, new, theta)
        assert est == pytest.approx(truth, rel=0.08), name  # unbiased without clipping
    same = ips_clicks_at_k(search, logged, logged, clicked, theta)
    assert np.allclose(same, np.bincount(search, clicked))  # the logged ranking counts its own clicks


def test_the_guard_ships_a_better_ranker_and_refuses_a_shuffled_one():
    search, logged, clicked, gamma, theta = logged_world()
    rng = np.random.default_rng(5)
    better = guard(search, logged, logged, ranks_by(gamma), clicked, theta)
    assert better["ship"] and better["diff"] > 0 and better["ci_low"] > 0
    shuffled = guard(search, logged, logged, ranks_by(rng.random(gamma.shape)), clicked, theta)  # no signal
    assert not shuffled["ship"] and shuffled["diff"] < 0
    same = guard(search, logged, logged, logged, clicked, theta)
    assert not same["ship"] and same["diff"] == 0


def test_top_k_and_clipping():
    # one search, a click at logged rank 5 (θ 0.2): moved to rank 1 it counts 1/0.2 = 5, clipped to 3; below k none
    theta = 1.0 / np.arange(1, 11)
    s, lr, c = np.array([0]), np.array([5]), np.array([True])
    assert ips_clicks_at_k(s, lr, np.array([1]), c, theta, clip=100)[0] == pytest.approx(5.0)
    assert ips_clicks_at_k(s, lr, np.array([1]), c, theta, clip=3)[0] == pytest.approx(3.0)
    assert ips_clicks_at_k(s, lr, np.array([11]), c, theta, k=10)[0] == 0.0
    with pytest.raises(ValueError, match="1-based"):
        ips_clicks_at_k(s, np.array([0]), np.array([1]), c, theta)
