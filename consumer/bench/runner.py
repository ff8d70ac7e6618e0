"""`seqscore bench`: the whole pipeline on the real local stack, beside a per-event baseline.

Phases, each on fresh topics, a fresh consumer group and a fresh Redis key prefix:
 1. throughput: one `seqscore serve` child (all its workers) in the group, then N simulated
    events produced, which it drains; steady state is the 5 %..95 % stretch (start-up and
    model load excluded), stage shares come from the scorer's own stage histograms over it;
 2. latency: a producer at a fixed rate (default half the throughput) for a warm-up and then
    a fixed time; latency is output produce timestamp minus input produce timestamp, both as
    stored by the broker, joined by event_id; outputs of the warm-up's inputs are reported apart;
 3. baseline: the same model, broker and Redis, one event at a time (consumer/bench/baseline.py);
 4. inference alone per batch size; Redis bytes per customer; scorer peak RSS;
 5. with --instances 2: two scorers in one group, every event_id counted.
Figures are ratios within one run and medians over --repeat runs: these machines are noisy.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from numpy.typing import NDArray

from consumer.bench.cpu import CpuMeter, find_pid, process_cpu_seconds, process_tree
from consumer.bench.harness import ScorerProcess, predictions_by_event, read_topic, running, wait_for
from consumer.bench.infer_alone import time_batches
from consumer.bench.loadgen import event_values, send
from consumer.bench.plots import plot_latency, split_warmup
from consumer.ops.watch import AlertFlips, Scrape, scrape
from consumer.serve.topics import ensure_topics, topic_names
from consumer.serve.workers import worker_count
from consumer.settings import Settings, mask_url
from state.errors import ConfigError, KafkaUnavailable, SeqscoreError
from state.store import RECORD_DTYPE, STORED_HEADER_BYTES
from training.defaults import DEFAULT_WINDOW
from training.simulate import simulate

if TYPE_CHECKING:
    from consumer.serve.scoring import ModelRunner

BASELINE_EVENTS = 2_000  # docs/design.md, "Numbers the checks use": the per-event baseline runs on a ~2k sample
BASELINE_WARMUP = 50
STEADY = (0.05, 0.95)
SCRAPE_EVERY_S = 0.5  # each /metrics scrape costs the scorer CPU: the observer must not slow the measured


def note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class BenchOptions:
    events: int = 200_000
    customers: int = 20_000
    window: int = DEFAULT_WINDOW
    model: Path | None = None
    instances: int = 1
    workers: int = 0  # of the measured scorer (SEQSCORE_WORKERS; 0: one per usable core)
    latency_seconds: float = 20.0
    # the latency run's first seconds, at the same rate, reported apart: a fresh producer,
    # consumer and topics settle (librdkafka's first acknowledgements of a new producer and the
    # alert burst of empty state), which a long-running scorer does once per start
    warmup_seconds: float = 5.0
    rate: float | None = None
    baseline_seconds: float = 20.0
    repeat: int = 1
    seed: int = 0
    exactly_once: bool = False  # also a throughput run with Kafka transactions, as a ratio
    workdir: Path = Path("data/bench")


@dataclass
class Phase:
    """Names of one phase: topics, group and key prefix, as settings and as the child's environment."""

    settings: Settings
    env: dict[str, str]


def make_phase(settings: Settings, run_id: str, tag: str) -> Phase:
    base = f"bench-{run_id}-{tag}"
    topics = settings.topics.model_copy(
        update={
            "events": f"{base}-events",
            "dlq": f"{base}-events.dlq",
            "next_actions": f"{base}-next-actions",
            "churn_alerts": f"{base}-churn-alerts",
            "profiles": f"{base}-profiles",
        }
    )
    prefix = f"bench{run_id}{tag}"
    phase_settings = settings.model_copy(
        update={"topics": topics, "group_id": base, "state": settings.state.model_copy(update={"key_prefix": prefix})}
    )
    env = {
        "SEQSCORE_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "SEQSCORE_REDIS_URL": settings.redis_url,
        "SEQSCORE_GROUP_ID": base,
        "SEQSCORE_STATE__KEY_PREFIX": prefix,
        "SEQSCORE_TOPICS__EVENTS": topics.events,
        "SEQSCORE_TOPICS__DLQ": topics.dlq,
        "SEQSCORE_TOPICS__NEXT_ACTIONS": topics.next_actions,
        "SEQSCORE_TOPICS__CHURN_ALERTS": topics.churn_alerts,
        "SEQSCORE_TOPICS__PROFILES": topics.profiles,
    }
    ensure_topics(phase_settings)
    return Phase(phase_settings, env)


def peak_rss_mb(pids: list[int]) -> float:
    """The processes' peak resident memory (`VmHWM`) together: a scorer and its workers."""
    total = 0.0
    for pid in pids:
        try:
            lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        except OSError:
            return float("nan")
        total += next((int(line.split()[1]) / 1024 for line in lines if line.startswith("VmHWM:")), float("nan"))
    return total


def steady_state(samples: list[Scrape], total: int) -> tuple[float, dict[str, float]]:
    """Events/s between the samples that first passed 5 % and 95 % of `total`, and each
    stage's share of the loop's time over the same stretch."""
    def events(s: Scrape) -> float:
        return s.counters.get("seqscore_events_total", 0.0)

    lo_at = next(i for i, s in enumerate(samples) if events(s) >= STEADY[0] * total)
    hi_at = next(i for i, s in enumerate(samples) if events(s) >= STEADY[1] * total)
    if hi_at == lo_at:  # drained within one scrape: measure from the scrape before
        if lo_at == 0:
            raise ConfigError(f"{total:,} events were drained before the first scrape; give more --events")
        lo_at -= 1
    lo, hi = samples[lo_at], samples[hi_at]
    eps = (events(hi) - events(lo)) / max(hi.at - lo.at, 1e-9)
    spent = {k: hi.stage_seconds.get(k, 0.0) - lo.stage_seconds.get(k, 0.0) for k in hi.stage_seconds}
    busy = sum(v for k, v in spent.items() if k != "poll") or 1.0
    return eps, {k: round(v / busy, 4) for k, v in spent.items() if k != "poll"}


def drain(scorers: list[ScorerProcess], total: int, timeout_s: float) -> list[Scrape]:
    """Scrape the scorers (summed) every SCRAPE_EVERY_S until they consumed `total` events."""
    samples: list[Scrape] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        parts = [scrape(s.url("/metrics")) for s in scorers]
        merged = Scrape(at=time.monotonic())
        for part in parts:
            for key, value in part.counters.items():
                merged.counters[key] = merged.counters.get(key, 0.0) + value
            for key, value in part.stage_seconds.items():
                merged.stage_seconds[key] = merged.stage_seconds.get(key, 0.0) + value
        samples.append(merged)
        if merged.counters.get("seqscore_events_total", 0.0) >= total:
            return samples
        time.sleep(SCRAPE_EVERY_S)
    raise TimeoutError(f"the scorer did not consume {total:,} events within {timeout_s:.0f}s")


class Bench:
    def __init__(self, options: BenchOptions, settings: Settings) -> None:
        self.options = options
        self.settings = settings
        self.run_id = uuid.uuid4().hex[:8]
        self.workdir = options.workdir / self.run_id
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.registry = Path()
        self.phases: list[Phase] = []

    # -- inputs ---------------------------------------------------------------------------
    def records(self, n: int, seed: int) -> list[tuple[bytes, bytes]]:
        """n simulated events of the bench's customers, in time order, ending now."""
        history = simulate(self.options.customers, seed=seed)
        if history.n_events < n:
            scale = 1.05 * n / max(history.n_events, 1)
            history = simulate(self.options.customers, seed=seed, activity_scale=scale)
        values = event_values(history, shift_to=int(time.time()))
        return [record for _, record in zip(range(n), values, strict=False)]

    def model(self) -> Path:
        """A registry whose CURRENT is the model to serve: the given one, or trained now."""
        from training.registry import Registry, resolve_model_dir

        if self.options.model is not None:
            version = resolve_model_dir(self.options.model).resolve()
            registry = self.workdir / "models"
            registry.mkdir(exist_ok=True)
            (registry / version.name).symlink_to(version)
            (registry / "CURRENT").symlink_to(version.name)
            Registry(registry).path(version.name)
            return registry
        from training.history import history_table, write_table
        from training.train import TrainOptions, run

        events = self.workdir / "train.parquet"
        write_table(history_table(simulate(min(self.options.customers, 4000), seed=self.options.seed + 1)), events)
        note(f"training a model (window {self.options.window}, LSTM 64) for the benchmark ...")
        run(TrainOptions(events=str(events), registry=self.workdir / "models", window=self.options.window,
                         epochs=2, trials=1, refit=False, seed=self.options.seed, promote="always"))
        return self.workdir / "models"

    def phase(self, tag: str) -> Phase:
        phase = make_phase(self.settings, self.run_id, tag)
        self.phases.append(phase)
        return phase

    # -- phases ---------------------------------------------------------------------------
    def throughput(
        self, records: list[tuple[bytes, bytes]], tag: str, instances: int = 1, env: dict[str, str] | None = None
    ) -> dict[str, Any]:
        phase = self.phase(tag)
        kafka = self.settings.kafka_config()
        logs = [self.workdir / f"{tag}-{i}.log" for i in range(instances)]
        # scale-out runs single-worker instances: the group's members are then the instances
        workers = {"SEQSCORE_WORKERS": str(self.options.workers if instances == 1 else 1)}
        scorers = [ScorerProcess(phase.env | workers | (env or {}), self.registry, log).start() for log in logs]
        try:
            # every loop in the group first (instances, or an instance's workers, whose readiness
            # needs partitions for each), or the first to join drains alone while the group
            # settles: the events are produced once the partitions are shared
            for scorer in scorers:
                scorer.wait_ready(timeout=300)
            partitions = phase.settings.topics.events_partitions
            wait_for(lambda: sum(s.metric("seqscore_assigned_partitions") for s in scorers) == partitions
                     and all(s.metric("seqscore_assigned_partitions") > 0 for s in scorers),
                     timeout=120, interval=0.5, what="partitions shared by every instance")
            send(records, phase.settings.topics.events, kafka, progress=False)
            note(f"[{tag}] {len(records):,} events produced; {instances} scorer(s) draining ...")
            samples = drain(scorers, len(records), timeout_s=max(600.0, len(records) / 100))
            rss = max(peak_rss_mb(process_tree(s.process.pid)) for s in scorers if s.process is not None)
            outputs = None
            if instances > 1:
                outputs = predictions_by_event(
                    read_topic(self.settings.kafka_config(), phase.settings.topics.next_actions, len(records))
                )
        finally:
            for scorer in scorers:
                scorer.stop()
        eps, shares = steady_state(samples, len(records))
        result: dict[str, Any] = {
            "eps": eps, "stage_share": shares, "rss_mb": rss, "prefix": phase.settings.state.key_prefix
        }
        if outputs is not None:
            sent = {orjson_event_id(v) for _, v in records}
            result["missing"] = len(sent - set(outputs))
            result["duplicated"] = sum(1 for v in outputs.values() if len(v) > 1)
        note(f"[{tag}] steady state {eps:,.0f} events/s")
        return result

    def latency(self, rate: float, records: list[tuple[bytes, bytes]]) -> dict[str, Any]:
        phase = self.phase("latency")
        warmup, seconds = self.options.warmup_seconds, self.options.latency_seconds
        note(f"[latency] producing at {rate:,.0f} events/s: {warmup:.0f}s of warm-up, {seconds:.0f}s measured ...")
        workers = {"SEQSCORE_WORKERS": str(self.options.workers)}
        with running(phase.env | workers, self.registry, self.workdir / "latency.log") as scorer:
            scorer.wait_ready(timeout=300)
            meter = CpuMeter(self.stack_pids(scorer)).start()
            sent, took = send(records, phase.settings.topics.events, self.settings.kafka_config(), rate=rate,
                              progress=False, deadline_s=warmup + seconds)
            cpu = meter.cores()
            outputs = read_topic(self.settings.kafka_config(), phase.settings.topics.next_actions, sent)
            alert_messages = int(scorer.metric("seqscore_churn_alerts_total"))
            scorer.stop()
        flips = AlertFlips()
        if alert_messages:
            for message in read_topic(self.settings.kafka_config(), phase.settings.topics.churn_alerts, alert_messages):
                flips.add(orjson.loads(message.value() or b"{}"))
        inputs = read_topic(self.settings.kafka_config(), phase.settings.topics.events, sent)
        produced = {orjson_event_id(m.value() or b"{}"): m.timestamp()[1] for m in inputs}
        output_ids = [(orjson_event_id(m.value() or b"{}"), m.timestamp()[1]) for m in outputs]
        pairs = np.array(  # (input, output) broker timestamps in ms
            [(produced[e], at) for e, at in output_ids if e in produced], np.float64
        ).reshape(-1, 2)
        sent_s = (pairs[:, 0] - pairs[:, 0].min(initial=np.inf)) / 1000
        delays = pairs[:, 1] - pairs[:, 0]
        measured, warming = split_warmup(sent_s, delays, warmup)
        plot = (self.workdir / "latency.png").resolve()  # the JSON is read from anywhere
        plot_latency(sent_s, delays, sent / took, plot, warmup)
        return {
            "plot": str(plot),
            "cpu_cores": cpu,
            "offered_eps": sent / took,
            **percentiles(measured),
            "n": float(len(measured)),
            "warmup": {"seconds": warmup, **percentiles(warming), "n": len(warming)},
            "churn_alerts": flips.summary(),
        }

    def stack_pids(self, scorer: ScorerProcess) -> dict[str, int | list[int] | None]:
        """The processes sharing the cores in the latency phase: the scorer (with its workers), the load generator
        (this process), and the broker and Redis where they run on this machine."""
        import redis

        redis_pid = int(redis.Redis.from_url(self.settings.redis_url).info("server").get("process_id", 0))
        local = redis_pid and process_cpu_seconds(redis_pid) is not None
        return {
            "scorer": process_tree(scorer.process.pid) if scorer.process is not None else None,
            "broker": find_pid("kafka.Kafka"),
            "redis": redis_pid if local else None,
            "load generator": os.getpid(),
        }

    def baseline(self, records: list[tuple[bytes, bytes]], runner: Any, tag: str) -> float:
        """One per-event run on topics, a group and state of its own (`tag`): a repeat on the
        same ones would meet its events again as duplicates."""
        from consumer.bench.baseline import run_baseline

        phase = self.phase(tag)
        send(records, phase.settings.topics.events, self.settings.kafka_config(), progress=False)
        note(f"[baseline] one event at a time: {len(records) - BASELINE_WARMUP:,} events, "
             f"at most {self.options.baseline_seconds:.0f}s ...")
        result = run_baseline(runner, self.settings.kafka_config(), self.settings.redis_url,
                              phase.settings.state.key_prefix, phase.settings.topics.events,
                              phase.settings.topics.next_actions, len(records) - BASELINE_WARMUP,
                              self.options.baseline_seconds, warmup_events=BASELINE_WARMUP)
        note(f"[baseline] {result.eps:,.0f} events/s ({result.events:,} events)")
        return result.eps

    def redis_bytes(self, prefix: str, capacity: int, sample: int = 2000) -> tuple[float, float]:
        """Mean MEMORY USAGE per customer over a sample, and over the sampled full windows."""
        import redis

        client = redis.Redis.from_url(self.settings.redis_url)
        keys = []
        for key in client.scan_iter(match=f"{prefix}:*:w", count=1000):
            keys.append(key)
            if len(keys) >= sample:
                break
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.memory_usage(key, samples=0)
            pipe.strlen(key)
        replies = pipe.execute()
        usage, lengths = np.array(replies[0::2], dtype=np.float64), np.array(replies[1::2])
        full = usage[lengths == STORED_HEADER_BYTES + RECORD_DTYPE.itemsize * capacity]
        return float(usage.mean()) if len(usage) else float("nan"), float(full.mean()) if len(full) else float("nan")

    def cleanup(self) -> None:
        """Delete the bench's topics and Redis keys."""
        import redis
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(self.settings.kafka_config())
        # each name once: a deletion naming a topic twice left those topics behind
        names = list(dict.fromkeys(name for phase in self.phases for name in phase.settings.topics.names()))
        if not names:
            return
        for future in admin.delete_topics(names, operation_timeout=30).values():
            with contextlib.suppress(Exception):  # best effort: a topic left behind is only disk
                future.result(timeout=60)
        client = redis.Redis.from_url(self.settings.redis_url)
        for phase in self.phases:
            for key in client.scan_iter(match=f"{phase.settings.state.key_prefix}:*", count=1000):
                client.unlink(key)


def orjson_event_id(value: bytes) -> str:
    return str(orjson.loads(value).get("event_id", ""))


def percentiles(delay_ms: NDArray[np.float64]) -> dict[str, float]:
    if not len(delay_ms):
        return {k: float("nan") for k in ("p50", "p95", "p99", "max")}
    p50, p95, p99 = np.percentile(delay_ms, (50, 95, 99))
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99), "max": float(delay_ms.max())}


def machine_info(settings: Settings) -> dict[str, Any]:
    import confluent_kafka
    import redis
    import tensorflow as tf

    from training.train import code_version

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    redis_version = redis.Redis.from_url(settings.redis_url).info("server").get("redis_version", "?")
    return {
        "seqscore": code_version(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "numpy": np.__version__,
        "librdkafka": confluent_kafka.libversion()[0],
        "redis_server": redis_version,
        "gpu": [d.name for d in tf.config.list_physical_devices("GPU")] or None,
    }


def preflight(settings: Settings, timeout_s: float = 10.0) -> None:
    """Kafka and Redis answer before a model is trained for the run: a stack that is not up is
    one line within seconds, naming each service that did not answer."""
    import redis

    problems = []
    try:
        topic_names(settings, timeout_s)
    except KafkaUnavailable as exc:
        problems.append(str(exc))
    try:
        redis.Redis.from_url(settings.redis_url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s).ping()
    except redis.RedisError as exc:
        problems.append(f"Redis at {mask_url(settings.redis_url)}: {type(exc).__name__}: {exc}")
    if problems:
        raise SeqscoreError("; ".join(problems) + " (the bench runs on the local stack: deploy/stack up)")


@dataclass
class _Measured:
    """The main phases' figures, before they are rounded into the result."""

    runs: list[dict[str, Any]]  # the throughput runs
    middle: dict[str, Any]  # the median run: its other figures (stage shares, RSS) are reported
    throughput: float  # median events/s
    baseline: float  # median events/s of the per-event baseline runs
    latency: dict[str, Any]
    redis_bytes: tuple[float, float]  # per customer (sample), with a full window


def _measure(bench: Bench, runner: ModelRunner, records: list[tuple[bytes, bytes]]) -> _Measured:
    """Throughput (--repeat runs), Redis bytes, the per-event baseline (--repeat runs), then
    latency at --rate or half the throughput."""
    options = bench.options
    runs = [bench.throughput(records, f"tp{i}") for i in range(options.repeat)]
    middle = sorted(runs, key=lambda r: r["eps"])[len(runs) // 2]
    throughput = statistics.median(r["eps"] for r in runs)
    redis_bytes = bench.redis_bytes(middle["prefix"], max(bench.settings.state.window, runner.spec.window))
    baseline_sample = records[: BASELINE_EVENTS + BASELINE_WARMUP]
    baselines = [bench.baseline(baseline_sample, runner, f"baseline{i}") for i in range(options.repeat)]
    rate = options.rate or throughput / 2
    stream_seconds = options.warmup_seconds + options.latency_seconds + 5
    latency = bench.latency(rate, bench.records(int(rate * stream_seconds), options.seed + 2))
    return _Measured(runs, middle, throughput, statistics.median(baselines), latency, redis_bytes)


def _result(measured: _Measured, runner: ModelRunner, options: BenchOptions, settings: Settings) -> dict[str, Any]:
    """The figures as reported (`table`, --json); times inference alone on the way."""
    from training.registry import smoke_inputs

    throughput, baseline, latency, middle = measured.throughput, measured.baseline, measured.latency, measured.middle
    per_customer, full_window = measured.redis_bytes
    return {
        "throughput_eps": round(throughput, 1),
        "throughput_runs_eps": [round(r["eps"], 1) for r in measured.runs],
        "baseline_eps": round(baseline, 1),
        "speedup": round(throughput / baseline, 2) if baseline else None,
        "latency_ms": {k: round(latency[k], 1) for k in ("p50", "p95", "p99", "max")},
        "latency_outputs": int(latency["n"]),
        "latency_warmup": {k: round(v, 1) for k, v in latency["warmup"].items()},
        "offered_eps": round(latency["offered_eps"], 1),
        "latency_cpu_cores": latency["cpu_cores"],
        "churn_alerts": latency["churn_alerts"],
        "plots": [latency["plot"]],
        "stage_share": middle["stage_share"],
        "infer_sps_by_batch": time_batches(runner.infer, smoke_inputs(runner.manifest)),
        "infer_device": runner.device,
        "infer_threads": settings.model.threads,
        "workers": worker_count(settings.model_copy(update={"workers": options.workers})),
        "redis_bytes_per_customer": round(per_customer, 1),
        "redis_bytes_full_window": round(full_window, 1),
        "rss_mb": round(middle["rss_mb"], 1),
        "events": options.events,
        "customers": options.customers,
        "window": runner.spec.window,
        "model_version": runner.version,
        "model_units": runner.manifest["training"]["model"]["units"],
        "max_batch": settings.batch.max_batch,
        "repeat": options.repeat,
        "machine": machine_info(settings),
    }


def _comparisons(bench: Bench, records: list[tuple[bytes, bytes]], throughput: float, workers: int) -> dict[str, Any]:
    """Throughput runs to compare with the measured one: a single worker (when the scorer has
    several), --instances scorers in one group, Kafka transactions (--exactly-once)."""
    options = bench.options
    result: dict[str, Any] = {}
    if workers > 1:
        single = bench.throughput(records, "one-worker", env={"SEQSCORE_WORKERS": "1"})
        result["one_worker"] = {
            "throughput_eps": round(single["eps"], 1),
            "ratio": round(throughput / single["eps"], 3) if single["eps"] else None,
        }
    if options.instances > 1:
        scale = bench.throughput(records, "scale", instances=options.instances)
        result["instances"] = {
            "count": options.instances,
            "throughput_eps": round(scale["eps"], 1),
            "missing": scale["missing"],
            "duplicated": scale["duplicated"],
        }
    if options.exactly_once:
        transactional = {"SEQSCORE_PROCESSING_GUARANTEE": "exactly_once", "SEQSCORE_INSTANCE_ID": "bench"}
        eos = bench.throughput(records, "eos", env=transactional)
        result["exactly_once"] = {
            "throughput_eps": round(eos["eps"], 1),
            "ratio": round(eos["eps"] / throughput, 3) if throughput else None,
        }
    return result


def run_bench(options: BenchOptions, settings: Settings, on_result: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    from consumer.serve.scoring import ModelRunner, configure_threads
    from training.registry import resolve_model_dir

    # inference alone and the baseline run in this process, on the scorer's thread count; it is
    # fixed at TensorFlow's first op, which training the bench's model would be
    configure_threads(settings.model.threads)
    preflight(settings)
    bench = Bench(options, settings)
    try:
        bench.registry = bench.model()
        runner = ModelRunner(resolve_model_dir(bench.registry), threads=settings.model.threads)
        records = bench.records(options.events, options.seed)
        measured = _measure(bench, runner, records)
        result = _result(measured, runner, options, settings)
        result.update(_comparisons(bench, records, measured.throughput, result["workers"]))
        on_result(result)
        return result
    finally:
        bench.cleanup()


def warmup_line(r: dict[str, Any]) -> list[str]:
    w = r.get("latency_warmup")
    if not w or not w.get("n"):
        return []
    return [f"  warm-up        the first {w['seconds']:.0f}s, apart from the above: p50 {w['p50']:.0f}  "
            f"p99 {w['p99']:.0f}  max {w['max']:.0f} ms ({w['n']:,.0f} outputs)"]


TARGETS = (
    ("throughput >= 10,000 events/s", lambda r: r["throughput_eps"] >= 10_000),
    ("speedup >= 30x over the per-event baseline", lambda r: (r["speedup"] or 0) >= 30),
    ("p99 latency <= 250 ms at half the saturation rate", lambda r: r["latency_ms"]["p99"] <= 250),
    ("Redis <= 1 KB per customer at window 50", lambda r: r["redis_bytes_full_window"] <= 1024
     or (r["redis_bytes_full_window"] != r["redis_bytes_full_window"] and r["redis_bytes_per_customer"] <= 1024)),
)


def alerts_line(r: dict[str, Any]) -> list[str]:
    """The latency phase's churn-alert traffic: what a marketing team on the topic would get."""
    a = r.get("churn_alerts")
    if not a:
        return []
    return [
        f"churn alerts     {a['alerts']:,} alert and {a['recoveries']:,} recovery messages to {a['customers']:,} "
        f"customers in the latency run ({a['per_customer']:.2f} each, {a['customers_over_2']:,} with more than 2)"
    ]


def table(r: dict[str, Any]) -> str:
    lat, machine, shares = r["latency_ms"], r["machine"], r["stage_share"].items()
    lines = [
        f"seqscore bench: {r['events']:,} events of {r['customers']:,} customers, window {r['window']}, "
        f"LSTM {r['model_units']}, max batch {r['max_batch']}, {r['repeat']} run(s)",
        f"machine          {machine['cores']} cores ({machine['cpu']}), seqscore {machine.get('seqscore', '?')}, "
        f"TF {machine['tensorflow']}, "
        f"Redis {machine['redis_server']}, librdkafka {machine['librdkafka']}",
        f"throughput       {r['throughput_eps']:>10,.0f} events/s   runs {r['throughput_runs_eps']}, "
        f"one scorer with {r.get('workers', 1)} worker(s)",
        f"baseline         {r['baseline_eps']:>10,.0f} events/s   (per event: one Redis round trip, one model call)",
        f"speedup          {r['speedup']:>10.1f}x",
        f"latency          p50 {lat['p50']:.0f}  p95 {lat['p95']:.0f}  p99 {lat['p99']:.0f}  max {lat['max']:.0f} ms"
        f"  at {r['offered_eps']:,.0f} events/s ({r['latency_outputs']:,} outputs)",
        *warmup_line(r),
        "latency cpu      " + "  ".join(f"{k} {v:.2f}" for k, v in r["latency_cpu_cores"].items() if k != "machine")
        + f"  cores; the machine {r['latency_cpu_cores'].get('machine', float('nan')):.2f} of {machine['cores']} busy",
        "stage share      " + "  ".join(f"{k} {v:.0%}" for k, v in sorted(shares, key=lambda kv: -kv[1])),
        *alerts_line(r),
        f"inference ({r['infer_device']}, {r.get('infer_threads', 0) or 'all'} thread(s))  "
        + "  ".join(f"{b}: {v['sps']:,.0f}/s ({v['ms_per_batch']:.1f} ms)" for b, v in r["infer_sps_by_batch"].items()),
        f"redis            {r['redis_bytes_per_customer']:,.0f} B per customer (sample), "
        f"{r['redis_bytes_full_window']:,.0f} B with a full window",
        f"scorer RSS       {r['rss_mb']:,.0f} MB peak, {r.get('workers', 1)} worker(s) together",
    ]
    if r.get("plots"):
        lines.append(f"plots            {', '.join(r['plots'])}")
    if "one_worker" in r:
        o = r["one_worker"]
        lines.append(f"one worker       {o['throughput_eps']:>10,.0f} events/s   "
                     f"(SEQSCORE_WORKERS=1; {r['workers']} workers drain {o['ratio']:.2f}x that)")
    if "instances" in r:
        i = r["instances"]
        lines.append(f"{i['count']} instances      {i['throughput_eps']:>10,.0f} events/s   missing {i['missing']}, "
                     f"processed twice {i['duplicated']} (same 2 cores: correctness and overhead, not speed-up)")
    if "exactly_once" in r:
        e = r["exactly_once"]
        lines.append(f"exactly-once     {e['throughput_eps']:>10,.0f} events/s   {e['ratio']:.2f}x the at-least-once "
                     "throughput (a transaction per batch)")
    lines.append("targets")
    for name, check in TARGETS:
        lines.append(f"  {'met    ' if check(r) else 'not met'}  {name}")
    return "\n".join(lines)
