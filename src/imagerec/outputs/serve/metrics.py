"""Prometheus metrics of one service: requests by endpoint and status, latency, batch sizes and errors.

Each app gets its own registry, so that two apps in one process (tests, or a user's own) never share counts.
"""

from __future__ import annotations

from typing import Any

ENDPOINTS = frozenset({"/", "/v1/predict", "/v1/model", "/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"})
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServiceMetrics:
    """The counters and histograms `/metrics` shows, in the text format Prometheus scrapes."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "imagerec_requests", "HTTP requests answered", ["endpoint", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "imagerec_request_latency_seconds", "Time to answer a request", ["endpoint"], buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )  # fmt: skip
        self.batch_size = Histogram(
            "imagerec_batch_size", "Images per model batch", buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.images = Counter("imagerec_images", "Images predicted", registry=self.registry)
        self.errors = Counter(
            "imagerec_errors", "Requests refused or failed, by kind", ["kind"], registry=self.registry
        )

    def observe_request(self, path: str, status: int, seconds: float) -> None:
        endpoint = path if path in ENDPOINTS else "other"  # a label per unknown path would grow without bound
        self.requests.labels(endpoint=endpoint, status=str(status)).inc()
        self.latency.labels(endpoint=endpoint).observe(seconds)

    def observe_batch(self, size: int) -> None:
        self.batch_size.observe(size)
        self.images.inc(size)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def value(self, name: str, labels: dict[str, str] | None = None) -> Any:
        """One sample's current value (None when absent), e.g. `value("imagerec_batch_size_count")`."""
        return self.registry.get_sample_value(name, labels or {})
