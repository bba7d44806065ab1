"""Prometheus metrics, fed by engine `StepStats` and by request timings in the API process.

Every metric is exported as `unmask:<name>`. Those with a vLLM counterpart are also exported
under vLLM's name (`vllm:<name>`, same labels, buckets and value), so the Gateway API Inference
Extension endpoint picker, KEDA/HPA examples and Grafana dashboards written for vLLM read them
with their defaults. Invariant: a twin is only ever updated through `Twin`, so the two series
are equal at every scrape.
"""

from __future__ import annotations

from typing import Any

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
EDIT_BUCKETS = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
POST_BUCKETS = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
TOKEN_BUCKETS = tuple(m * 10**e for e in range(7) for m in (1, 2, 5))  # vLLM's 1-2-5 series

# unmask name -> vLLM names of the same series (vLLM >= 0.10 names; older aliases beside them)
VLLM_NAMES: dict[str, tuple[str, ...]] = {
    "num_requests_waiting": ("num_requests_waiting",),
    "num_requests_running": ("num_requests_running",),
    "kv_cache_usage_perc": ("kv_cache_usage_perc", "gpu_cache_usage_perc"),
    "prompt_tokens": ("prompt_tokens",),
    "generation_tokens": ("generation_tokens",),
    "request_success": ("request_success",),
    "num_preemptions": ("num_preemptions",),
    "prefix_cache_queries": ("prefix_cache_queries",),
    "prefix_cache_hits": ("prefix_cache_hits",),
    "time_to_first_token_seconds": ("time_to_first_token_seconds",),
    "inter_token_latency_seconds": ("inter_token_latency_seconds",
                                    "time_per_output_token_seconds"),
    "e2e_request_latency_seconds": ("e2e_request_latency_seconds",),
    "request_queue_time_seconds": ("request_queue_time_seconds",),
    "request_prompt_tokens": ("request_prompt_tokens",),
    "request_generation_tokens": ("request_generation_tokens",),
}


class Twin:
    """An `unmask:` metric and its `vllm:` twins, moved together: `.labels(...)` gives a child
    whose `set`/`inc`/`observe` go to every one of them."""

    def __init__(self, metrics: list[Any]) -> None:
        self.metrics = metrics

    def labels(self, *values: str) -> Twin:
        return Twin([m.labels(*values) for m in self.metrics])

    def set(self, value: float) -> None:
        for m in self.metrics:
            m.set(value)

    def inc(self, amount: float = 1.0) -> None:
        for m in self.metrics:
            m.inc(amount)

    def observe(self, value: float) -> None:
        for m in self.metrics:
            m.observe(value)


class Metrics:
    def __init__(self, model_name: str) -> None:
        self.registry = r = CollectorRegistry()
        labels = ["model_name"]
        self.model_name = model_name

        def names(name: str) -> list[str]:
            return [f"unmask:{name}", *(f"vllm:{v}" for v in VLLM_NAMES.get(name, ()))]

        def gauge(name: str, doc: str) -> Twin:
            return Twin([Gauge(n, doc, labels, registry=r) for n in names(name)])

        def counter(name: str, doc: str, extra: tuple[str, ...] = ()) -> Twin:
            return Twin([Counter(n, doc, [*labels, *extra], registry=r) for n in names(name)])

        def hist(name: str, doc: str, buckets: tuple[float, ...]) -> Twin:
            return Twin([Histogram(n, doc, labels, buckets=buckets, registry=r)
                         for n in names(name)])

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
        self.edits_per_block = hist("edits_per_block", "LLaDA2.1 token edits in a completed "
                                    "editing block.", EDIT_BUCKETS)
        self.post_steps_per_block = hist("post_steps_per_block", "Mask-free iterations a "
                                         "completed editing block took.", POST_BUCKETS)
        self.request_prompt = hist("request_prompt_tokens", "Prompt tokens per finished "
                                   "request.", TOKEN_BUCKETS)
        self.request_generation = hist("request_generation_tokens", "Generated tokens per "
                                       "finished request.", TOKEN_BUCKETS)
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
        for n in s.edits_per_block:
            self.edits_per_block.labels(m).observe(n)
        for n in s.post_steps_per_block:
            self.post_steps_per_block.labels(m).observe(n)
        if s.num_preempted:
            self.preemptions.labels(m).inc(s.num_preempted)
        if s.prefix_query_tokens:
            self.prefix_queries.labels(m).inc(s.prefix_query_tokens)
            self.prefix_hits.labels(m).inc(s.prefix_hit_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)
