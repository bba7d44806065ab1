"""Prometheus metrics, fed by engine `StepStats` and by request timings in the API process.

Names follow vLLM where a counterpart exists (the three gauges the Gateway API Inference
Extension reads, counters, latency histograms with vLLM's buckets), under the `unmask:` prefix.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from server.core import StepStats

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
               7.5, 10.0, 20.0, 40.0, 80.0)
LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
                   60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
TPF_BUCKETS = (1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0)
SPB_BUCKETS = (1, 2, 3, 4, 6, 8, 10, 12, 16, 20, 24, 28, 32)


class Metrics:
    def __init__(self, model_name: str) -> None:
        self.registry = r = CollectorRegistry()
        labels = ["model_name"]
        self.model_name = model_name

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(f"unmask:{name}", doc, labels, registry=r)

        def counter(name: str, doc: str, extra: tuple[str, ...] = ()) -> Counter:
            return Counter(f"unmask:{name}", doc, [*labels, *extra], registry=r)

        def hist(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(f"unmask:{name}", doc, labels, buckets=buckets, registry=r)

        self.waiting = gauge("num_requests_waiting", "Requests waiting for admission.")
        self.running = gauge("num_requests_running", "Requests in the running batch.")
        self.kv_usage = gauge("kv_cache_usage_perc",
                              "Fraction of KV pages held by live requests (0-1; cached "
                              "prefix pages with no reference excluded).")
        self.prompt_tokens = counter("prompt_tokens", "Prompt tokens of admitted requests.")
        self.generation_tokens = counter("generation_tokens", "Generated tokens.")
        self.success = counter("request_success", "Finished requests.", ("finished_reason",))
        self.preemptions = counter("num_preemptions", "Sequences preempted.")
        self.prefix_queries = counter("prefix_cache_queries", "Prompt tokens looked up.")
        self.prefix_hits = counter("prefix_cache_hits", "Prompt tokens found in the cache.")
        self.steps = counter("denoise_steps", "Engine steps (forwards).")
        self.ttft = hist("time_to_first_token_seconds", "Time to first token.", TTFT_BUCKETS)
        self.itl = hist("inter_token_latency_seconds", "Time between output deltas.",
                        ITL_BUCKETS)
        self.e2e = hist("e2e_request_latency_seconds", "Request latency.", LATENCY_BUCKETS)
        self.queue = hist("request_queue_time_seconds", "Time waiting for admission.",
                          LATENCY_BUCKETS)
        self.tpf = hist("tokens_per_forward", "Tokens committed per forward, per step.",
                        TPF_BUCKETS)
        self.spb = hist("steps_per_block", "Denoise steps a diffusion block took.", SPB_BUCKETS)
        for m in (self.waiting, self.running, self.kv_usage):
            m.labels(model_name).set(0)

    def on_step(self, s: StepStats) -> None:
        m = self.model_name
        self.waiting.labels(m).set(s.num_waiting)
        self.running.labels(m).set(s.num_running)
        self.kv_usage.labels(m).set(s.pages_used / s.pages_total if s.pages_total else 0.0)
        if s.num_tokens:
            self.steps.labels(m).inc()
        if s.num_logit_rows:
            self.tpf.labels(m).observe(s.tokens_per_forward)
        for n in s.steps_per_block:
            self.spb.labels(m).observe(n)
        if s.num_preempted:
            self.preemptions.labels(m).inc(s.num_preempted)
        if s.prefix_query_tokens:
            self.prefix_queries.labels(m).inc(s.prefix_query_tokens)
            self.prefix_hits.labels(m).inc(s.prefix_hit_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)
