"""The service's Prometheus metrics: requests, latency per endpoint and per search step, the candidate cache,
reloads, the engine version, the impression log."""

from __future__ import annotations


class Metrics:
    """Prometheus counters and histograms of one app (its own registry: several apps in one process
    never collide)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        buckets = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0)
        self.requests = Counter(
            "ecomsearch_requests_total", "HTTP requests", ["endpoint", "method", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "ecomsearch_request_seconds", "HTTP request latency", ["endpoint"], buckets=buckets, registry=self.registry
        )
        self.stage = Histogram(
            "ecomsearch_stage_seconds", "Time per search step", ["stage"], buckets=buckets, registry=self.registry
        )
        self.cache = Counter(
            "ecomsearch_candidate_cache_total", "Candidate cache lookups", ["result"], registry=self.registry
        )
        self.reloads = Counter(
            "ecomsearch_reloads_total", "Engine reloads that switched versions", registry=self.registry
        )
        self.version = Gauge("ecomsearch_engine_version", "The engine version answering", registry=self.registry)
        self.impressions = Counter(
            "ecomsearch_impressions_total",
            "Search impressions by outcome: logged, dropped (queue full), failed (store error)",
            ["outcome"],
            registry=self.registry,
        )
