"""Prometheus metrics of one app, in a registry of its own (several apps may share a process)."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

UNKNOWN_MODEL = "<unknown>"
"""Model label of requests for models that are not served (keeps label values bounded)."""


class ServingMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("polynl_infer_requests", "Inference requests by model and HTTP status",
                                ["model", "status"], registry=self.registry)
        self.latency = Histogram("polynl_infer_latency_seconds", "Inference request latency, body read to reply",
                                 ["model"], registry=self.registry,
                                 buckets=(.001, .002, .005, .01, .02, .05, .1, .2, .5, 1, 2, 5, 10, 30))
        self.batch_size = Histogram("polynl_batch_size", "Rows (axis 0) per executed batch", ["model"],
                                    registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
        self.admitted = Gauge("polynl_admitted_requests", "Requests admitted and not yet answered", ["model"],
                              registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
