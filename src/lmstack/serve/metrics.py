"""Prometheus metrics for GET /metrics: requests, tokens, latency, queue depth and KV-cache use.

Each app has its own registry (two servers in one process do not share counters). Gauges that mirror
the engine's state are read when scraped, so they are never stale.
"""

from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Paths that get their own label; everything else is counted as "other" so a scanner cannot blow up the series.
KNOWN_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics")


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("lmstack_requests", "HTTP requests by path and status code",
                                ["path", "status"], registry=registry)
        self.prompt_tokens = Counter("lmstack_prompt_tokens", "prompt tokens of finished requests", registry=registry)
        self.completion_tokens = Counter("lmstack_completion_tokens", "tokens generated", registry=registry)
        self.aborted = Counter("lmstack_aborted_requests", "requests stopped early (client gone, shutdown)",
                               registry=registry)
        self.time_to_first_token = Histogram("lmstack_time_to_first_token_seconds",
                                             "from accepting a request to its first token",
                                             buckets=LATENCY_BUCKETS, registry=registry)
        self.inter_token_latency = Histogram("lmstack_inter_token_latency_seconds",
                                             "between consecutive tokens of one sequence",
                                             buckets=LATENCY_BUCKETS, registry=registry)
        self.queue_depth = Gauge("lmstack_queue_depth", "requests accepted but not yet generating", registry=registry)
        self.running = Gauge("lmstack_running_sequences", "sequences in the running batch", registry=registry)
        self.kv_blocks_free = Gauge("lmstack_kv_blocks_free", "free KV-cache blocks", registry=registry)
        self.kv_blocks_total = Gauge("lmstack_kv_blocks_total", "KV-cache blocks in the pool", registry=registry)
        self.kv_usage = Gauge("lmstack_kv_cache_usage_ratio", "fraction of KV blocks in use", registry=registry)

    def count_request(self, path: str, status: int) -> None:
        self.requests.labels(path if path in KNOWN_PATHS else "other", str(status)).inc()

    def watch(self, queue_depth: Callable[[], int], running: Callable[[], int], free_blocks: Callable[[], int],
              total_blocks: int) -> None:
        """Read the engine's state at scrape time."""
        self.queue_depth.set_function(queue_depth)
        self.running.set_function(running)
        self.kv_blocks_free.set_function(free_blocks)
        self.kv_blocks_total.set(total_blocks)
        self.kv_usage.set_function(lambda: 1.0 - free_blocks() / total_blocks)

    def render(self) -> bytes:
        return generate_latest(self.registry)
