"""`seqscore` command line. Heavy imports (TensorFlow, pyarrow) happen inside commands,
so `seqscore --help` and the light commands answer in about a second."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TypeAlias

from state.errors import ConfigError, SeqscoreError
from training.defaults import DEFAULT_BUDGET_S, DEFAULT_WINDOW

if TYPE_CHECKING:
    from training.history import TopicReplay

EXIT_USAGE = 2
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line, without the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _int_in(low: int, high: int | None = None, low_means: str = "") -> Callable[[str], int]:
    """An argparse type: a whole number of at least `low` (and at most `high`)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
        if value < low or (high is not None and value > high):
            bounds = f">= {low}" if high is None else f"{low}{low_means} to {high}"
            raise argparse.ArgumentTypeError(f"expected a number {bounds}, got {value}")
        return value

    return parse


_positive_int = _int_in(1)
_workers = _int_in(0, 64, " (one per usable core)")


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1], got '{text}'") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1], got {value}")
    return value


def _alert_policy(text: str) -> object:
    from training.alerts import ThresholdRule

    kind, _, value = text.partition(":")
    if kind == "f1" and not value:
        return ThresholdRule("f1", 0.0)
    if kind in ("budget", "precision"):
        try:
            share = float(value)
        except ValueError:
            share = -1.0
        if 0.0 < share < 1.0:
            return ThresholdRule(kind, share)
    raise argparse.ArgumentTypeError(f"expected budget:SHARE, precision:TARGET (between 0 and 1) or f1, got '{text}'")


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got '{text}'") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


def _date(text: str) -> str:
    from datetime import date

    try:
        date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date YYYY-MM-DD, got '{text}'") from None
    return text


def cmd_config(args: argparse.Namespace) -> int:
    from consumer.settings import load_settings

    print(json.dumps(load_settings().masked(), indent=2))
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    from consumer.serve.topics import ensure_topics
    from consumer.settings import load_settings

    settings = load_settings()
    created = ensure_topics(settings)
    for name in settings.topics.names():
        print(f"{name}\t{'created' if name in created else 'exists'}")
    return 0


def cmd_schemas(args: argparse.Namespace) -> int:
    from state.events import json_schemas

    stale = []
    for name, schema in json_schemas().items():
        path = args.dir / name
        text = json.dumps(schema, indent=2, sort_keys=True) + "\n"
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(str(path))
        else:
            args.dir.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}", file=sys.stderr)
    if stale:
        print(f"seqscore schemas: stale, run `seqscore schemas`: {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    import time

    from training.simulate import simulate, summarize

    if args.out is None and args.kafka_topic is None:
        raise ConfigError("give --out PATH and/or --kafka-topic TOPIC")
    if args.out is not None:
        from training.history import history_format

        history_format(args.out)
    started = time.monotonic()
    history = simulate(
        args.customers, seed=args.seed, start=args.start, end=args.end, activity_scale=args.activity_scale
    )
    generated = time.monotonic() - started
    print(
        f"simulated {history.n_events:,} events of {args.customers:,} customers in {generated:.1f}s "
        f"({history.n_events / max(generated, 1e-9):,.0f} events/s)",
        file=sys.stderr,
    )
    if args.out is not None:
        from training.history import history_table, profiles_table, write_table

        write_table(history_table(history), args.out)
        print(f"wrote {args.out}", file=sys.stderr)
        if args.profiles_out is not None:
            write_table(profiles_table(history), args.profiles_out)
            print(f"wrote {args.profiles_out}", file=sys.stderr)
    if args.kafka_topic is not None:
        import time as _time

        from consumer.bench.loadgen import StreamPlan, stream
        from consumer.settings import load_settings

        settings = load_settings()
        plan = StreamPlan(
            rate=args.rate,
            malformed=args.malformed,
            duplicates=args.duplicates,
            out_of_order=args.out_of_order,
            seed=args.seed,
            shift_to=int(_time.time()) if args.shift_to_now else None,
        )
        report = stream(history, args.kafka_topic, settings.kafka_config(), plan)
        print(
            f"streamed {report.sent:,} records to {args.kafka_topic} in {report.seconds:.1f}s: "
            f"{report.valid:,} valid, {sum(report.malformed.values()):,} malformed, "
            f"{report.duplicates:,} duplicates",
            file=sys.stderr,
        )
    summary = summarize(history)
    summary["generation_seconds"] = round(generated, 2)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(summary)
    return 0


def _fractions(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three fractions like 0.7,0.15,0.15, got '{text}'") from None
    if len(parts) != 3 or any(p <= 0 for p in parts) or abs(sum(parts) - 1.0) > 1e-6:
        raise argparse.ArgumentTypeError(f"expected three positive fractions summing to 1, got '{text}'")
    return (parts[0], parts[1], parts[2])


def _timestamp(text: str) -> int:
    from datetime import UTC, datetime

    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an ISO-8601 time or date, got '{text}'") from None
    return int((stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)).timestamp())


def _instant(text: str) -> float:
    """An ISO-8601 time or date (UTC without a zone), or epoch seconds."""
    try:
        return _timestamp(text)
    except argparse.ArgumentTypeError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an ISO-8601 time or date, or epoch seconds, got '{text}'") from None
    if not 0 <= value < 1e11:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"expected epoch seconds, got {text}")
    return value


def _quiet_tensorflow() -> None:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _replay_config(events: str) -> TopicReplay | None:
    """How to replay `kafka://TOPIC` history: training reads no serving settings itself."""
    if not events.startswith("kafka://"):
        return None
    from consumer.settings import load_settings
    from training.history import TopicReplay

    settings = load_settings()
    return TopicReplay(settings.kafka_config(), settings.max_event_bytes)


def cmd_train(args: argparse.Namespace) -> int:
    _quiet_tensorflow()
    from training.model import ModelConfig
    from training.train import TrainOptions, run

    given = {"units": args.units, "layers": args.layers, "batch_size": args.batch_size, "window": args.window}
    fixed = {name: value for name, value in given.items() if value is not None}
    options = TrainOptions(
        events=args.events,
        registry=args.registry,
        profiles=args.profiles,
        level=args.level,
        window=args.window or DEFAULT_WINDOW,
        horizon_days=args.churn_horizon_days,
        split=args.split,
        fractions=args.fractions,
        epochs=args.epochs,
        trials=args.trials,
        budget_s=args.budget,
        seed=args.seed,
        promote=args.promote,
        fixed=fixed,
        alerts=args.alerts,
        model=replace(ModelConfig(), **{k: v for k, v in fixed.items() if k != "window"}),
        replay=_replay_config(args.events),
    )
    manifest = run(options)
    result = {"version": manifest["version"], "promotion": manifest["promotion"], "metrics": manifest["metrics"]}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_metrics(manifest["version"], manifest["metrics"])
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    _quiet_tensorflow()
    from training.train import evaluate_model

    result = evaluate_model(args.model, args.events, args.profiles, args.as_of, progress=True,
                            replay=_replay_config(args.events))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_metrics(result["model_version"], result)
    return 0


def _print_metrics(version: str, result: dict[str, object]) -> None:
    na, ch = result["next_action"], result["churn"]
    assert isinstance(na, dict) and isinstance(ch, dict)
    base, cbase = na["baselines"], ch["baselines"]
    print(f"model {version}")
    print(
        f"next action  accuracy {na['accuracy']:.4f}  top-3 {na['top3_accuracy']:.4f}  macro F1 "
        f"{na['macro_f1']:.4f}  ({na['n_examples']:,} examples)"
    )
    print("  baselines  " + "  ".join(f"{k} {v['accuracy']:.4f}" for k, v in base.items()))
    print(
        f"churn        ROC AUC {ch['roc_auc']:.4f}  PR AUC {ch.get('pr_auc', float('nan')):.4f}  Brier "
        f"{ch.get('brier', float('nan')):.4f}  threshold {ch.get('threshold', float('nan')):.3f}  "
        f"({ch['n_examples']:,} examples)"
    )
    print("  baselines  " + "  ".join(f"{k} {v['roc_auc']:.4f}" for k, v in cbase.items()))


def cmd_models(args: argparse.Namespace) -> int:
    from training.registry import Registry

    registry = Registry(args.registry)
    if args.action == "list":
        current = registry.current()
        for version in registry.versions():
            manifest = registry.manifest(version)
            m = manifest.get("metrics", {})
            print(
                f"{'*' if version == current else ' '} {version}  next acc "
                f"{m.get('next_action', {}).get('accuracy', float('nan')):.4f}  churn AUC "
                f"{m.get('churn', {}).get('roc_auc', float('nan')):.4f}  data {manifest['data']['source']}"
            )
        return 0
    if args.action == "show":
        if not args.version:
            raise ConfigError("models show: give a VERSION")
        manifest = registry.manifest(args.version)
        manifest.pop("smoke", None)
        print(json.dumps(manifest, indent=2))
        return 0
    if args.action == "promote":
        if not args.version:
            raise ConfigError("models promote: give a VERSION")
        registry.promote(args.version, reason="manual promote")
        print(f"CURRENT -> {args.version}")
        return 0
    version = registry.rollback()
    print(f"CURRENT -> {version}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import faulthandler
    import signal

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 PID` prints every stack
    _quiet_tensorflow()
    from consumer.serve.loop import Scorer, install_signal_handlers
    from consumer.serve.workers import WORKER_ENV, WorkerPool, follow_parent, worker_count
    from consumer.settings import load_settings

    follow_parent()
    if index := os.environ.get(WORKER_ENV):  # a worker of an instance: say which in every line
        worker_format = logging.Formatter(LOG_FORMAT.replace("%(name)s", f"[worker {index}] %(name)s"))
        for handler in logging.getLogger().handlers:
            handler.setFormatter(worker_format)
    settings = load_settings()
    workers = worker_count(settings)
    if workers > 1:
        pool = WorkerPool(settings, workers)
        install_signal_handlers(pool)
        return pool.run()
    scorer = Scorer(settings)
    install_signal_handlers(scorer)
    scorer.run()
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    from consumer.ops.watch import watch
    from consumer.settings import load_settings

    settings = load_settings()
    url = args.metrics_url or f"http://{settings.metrics_host}:{settings.metrics_port}/metrics"
    try:
        watch(url, settings.kafka_config(), settings.topics.next_actions, settings.topics.churn_alerts, args.seconds)
    except OSError as exc:
        raise ConfigError(f"cannot read the scorer's metrics at {url}: {exc}") from None
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import faulthandler

    faulthandler.enable()  # a native crash in a long run says where it happened
    _quiet_tensorflow()
    from consumer.bench.runner import BenchOptions, run_bench, table
    from consumer.settings import load_settings

    options = BenchOptions(
        events=args.events, customers=args.customers, window=args.window, model=args.model,
        instances=args.instances, workers=args.workers, latency_seconds=args.latency_seconds,
        warmup_seconds=args.warmup_seconds, rate=args.rate,
        baseline_seconds=args.baseline_seconds, repeat=args.repeat, seed=args.seed, exactly_once=args.exactly_once,
    )

    def write(result: dict[str, object]) -> None:
        print(table(result))
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=2) + "\n")
            print(f"wrote {args.json}", file=sys.stderr)

    run_bench(options, load_settings(), write)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from consumer.ops.sweep import sweep
    from consumer.serve.emit import iso
    from consumer.serve.loop import BatchReport, Scorer
    from consumer.settings import load_settings

    settings = load_settings()
    if not settings.silence.enabled:
        raise ConfigError("sweep: silence scoring is off (SEQSCORE_SILENCE__ENABLED=false)")

    def progress(clock: int, report: BatchReport) -> None:
        print(f"\rsweep: clocks at {iso(clock)}: {report.silences} silences scored, {report.alerts} alerts",
              end="", file=sys.stderr, flush=True)

    report = sweep(Scorer(settings), args.as_of, progress)
    print(file=sys.stderr)
    print(f"swept to {iso(args.as_of)}: {report.silences} silent customers scored, {report.alerts} churn alerts")
    return 0


def cmd_segments(args: argparse.Namespace) -> int:
    from consumer.clients import redis_client
    from consumer.segments import scan as segments
    from consumer.settings import load_settings
    from training.registry import Registry

    settings = load_settings()
    try:
        last = segments.parse_last(args.last)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    registry = Registry(settings.registry)
    current = registry.current()
    vocabulary = registry.manifest(current)["features"]["vocabulary"] if current else []
    client = redis_client(settings, "page")
    snapshot = segments.scan(client, settings.state.key_prefix, max(len(last), 3))
    try:
        rows = segments.select(snapshot, last, args.predicted, args.min_churn)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    records = segments.rows_of(snapshot, rows, segments.names_by_code(vocabulary))
    text = segments.to_csv(records)
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text)
    print(f"{len(records)} of {len(snapshot)} customers in the segment"
          + (f"; wrote {args.out}" if args.out else ""), file=sys.stderr)
    return 0


def cmd_erase(args: argparse.Namespace) -> int:
    from confluent_kafka import Consumer

    from consumer.clients import state_store
    from consumer.ops.erasure import erase_customer
    from consumer.serve.emit import Emitter
    from consumer.settings import load_settings

    settings = load_settings()
    store = state_store(settings, "command", None, None)  # an erasure reads no window
    consumer = Consumer(settings.kafka_config(**{"group.id": "seqscore-erase", "log_level": 2}))
    try:
        removed = erase_customer(store, args.customer, consumer, settings.topics.events)
    finally:
        consumer.close()
    # a tombstone on the compacted profiles topic: every scorer forgets the customer, and
    # compaction removes their profile from the log
    emitter = Emitter(settings.kafka_config())
    emitter.send(settings.topics.profiles, args.customer, None)
    emitter.wait_delivered()
    print(f"erased customer {args.customer}: {removed} Redis keys, tombstone on {settings.topics.profiles}")
    return 0


def cmd_state(args: argparse.Namespace) -> int:
    from consumer.ops.rebuild import rebuild_state
    from consumer.settings import load_settings

    report = rebuild_state(load_settings(), args.from_topic, args.since, args.batch)
    print(report.summary())
    return 0


def cmd_dlq(args: argparse.Namespace) -> int:
    from consumer.ops.dlq import replay
    from consumer.settings import load_settings

    until_ms = None if args.until is None else int(args.until * 1000)
    report = replay(load_settings(), int(args.since * 1000), until_ms, args.reason, args.dry_run)
    print(report.summary())
    return 0


def _print_summary(summary: dict[str, object]) -> None:
    per = summary["events_per_customer"]
    acc = summary["next_action_accuracy_held_out"]
    assert isinstance(per, dict) and isinstance(acc, dict)
    lines = [
        f"customers        {summary['customers']:,} ({summary['customers_with_events']:,} with events in range)",
        f"events           {summary['events']:,}  {summary['range'][0]} .. {summary['range'][1]}",  # type: ignore[index]
        f"per customer     p50 {per['p50']:.0f}  p90 {per['p90']:.0f}  p99 {per['p99']:.0f}  max {per['max']}  "
        f"single {per['share_single']:.1%}  <=25 {per['share_le_25']:.1%}  >100 {per['over_100']:,}",
        "activities       " + "  ".join(f"{k} {v:.1%}" for k, v in summary["activity_share"].items()),  # type: ignore[attr-defined]
        f"churn rate       {summary['churn_rate_inactivity_rule']:.1%} (no activity in the last "
        f"{summary['churn_horizon_days']} days)",
        "next activity    held-out accuracy: " + "  ".join(f"{k} {v:.1%}" for k, v in acc.items()),
    ]
    print("\n".join(lines))


_Commands: TypeAlias = "argparse._SubParsersAction[_Parser]"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="seqscore", description="Streaming event scoring: next best action and churn risk.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    # in the order `seqscore --help` lists them
    for add in (
        _add_config, _add_topics, _add_schemas, _add_simulate, _add_train, _add_evaluate, _add_serve,
        _add_segments, _add_sweep, _add_bench, _add_watch, _add_erase, _add_state, _add_models, _add_dlq,
    ):
        add(commands)
    return parser


def _add_config(commands: _Commands) -> None:
    p = commands.add_parser("config", help="print the effective settings (secrets masked)")
    p.set_defaults(func=cmd_config)


def _add_topics(commands: _Commands) -> None:
    p = commands.add_parser("topics", help="create the project's Kafka topics if missing")
    p.set_defaults(func=cmd_topics)


def _add_schemas(commands: _Commands) -> None:
    p = commands.add_parser("schemas", help="write the contract's JSON Schemas (or --check them)")
    p.add_argument("--dir", type=Path, default=Path("docs/schemas"))
    p.add_argument("--check", action="store_true", help="exit 1 when the files are stale")
    p.set_defaults(func=cmd_schemas)


def _add_simulate(commands: _Commands) -> None:
    p = commands.add_parser("simulate", help="generate a realistic synthetic history (file and/or Kafka)")
    p.add_argument("--customers", type=_positive_int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start", type=_date, default="2021-01-01")
    p.add_argument("--end", type=_date, default="2022-06-01")
    p.add_argument(
        "--activity-scale", type=_non_negative_float, default=1.0, help="multiply every customer's event rate"
    )
    p.add_argument("--out", type=Path, help="history file, .csv or .parquet")
    p.add_argument("--profiles-out", type=Path, help="customer profiles file, .csv or .parquet")
    p.add_argument("--kafka-topic", help="stream the events to this topic")
    p.add_argument("--rate", type=_non_negative_float, default=0.0, help="events/s when streaming; 0 = max")
    p.add_argument("--malformed", type=_fraction, default=0.0, help="fraction of malformed records")
    p.add_argument("--duplicates", type=_fraction, default=0.0, help="fraction of records sent twice")
    p.add_argument("--out-of-order", type=_fraction, default=0.0, help="fraction of records delivered late")
    p.add_argument("--shift-to-now", action="store_true", help="move event times so the last is now")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.set_defaults(func=cmd_simulate)


def _add_train(commands: _Commands) -> None:
    p = commands.add_parser("train", help="train next-action + churn models from history and publish a version")
    p.add_argument("--events", required=True, help="history .csv/.parquet, or kafka://TOPIC to replay")
    p.add_argument("--registry", type=Path, default=None, help="model registry (default: SEQSCORE_REGISTRY)")
    p.add_argument("--profiles", help="customer profiles .csv/.parquet (customer_id, gender, age_group)")
    p.add_argument("--level", choices=("coarse", "fine"), default="coarse")
    p.add_argument(
        "--window",
        type=_positive_int,
        default=None,
        help=f"events per window (default: chosen, at most {DEFAULT_WINDOW})",
    )
    p.add_argument("--churn-horizon-days", type=_positive_int, default=120)
    p.add_argument("--split", choices=("time", "customer"), default="time")
    p.add_argument("--fractions", type=_fractions, default=(0.7, 0.15, 0.15))
    p.add_argument(
        "--epochs",
        type=_positive_int,
        default=None,
        help="maximum epochs (default: sized to the data; early stopping on validation loss)",
    )
    p.add_argument(
        "--trials",
        type=_positive_int,
        default=None,
        help="recipe search trials (default: sized to the data; 1 = the default recipe)",
    )
    p.add_argument(
        "--budget",
        type=_int_in(10),
        default=int(DEFAULT_BUDGET_S),
        help="wall-clock cap of the recipe search and the refit, seconds",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--promote", choices=("auto", "always", "never"), default="auto")
    p.add_argument(
        "--alerts",
        type=_alert_policy,
        default="budget:0.02",
        help="churn alert threshold: budget:SHARE of the customers scored per day (default budget:0.02), "
        "precision:TARGET, or f1",
    )
    p.add_argument("--units", type=_positive_int, default=None, help="LSTM units (default: chosen)")
    p.add_argument("--layers", type=int, choices=(1, 2, 3), default=None, help="LSTM layers (default: chosen)")
    p.add_argument("--batch-size", type=_positive_int, default=None, help="(default: chosen)")
    p.add_argument("--json", action="store_true", help="print version, promotion and metrics as JSON")
    p.set_defaults(func=cmd_train)


def _add_evaluate(commands: _Commands) -> None:
    p = commands.add_parser("evaluate", help="evaluate a model on a history against baselines")
    p.add_argument("--model", type=Path, required=True, help="a version directory, or a registry (its CURRENT)")
    p.add_argument("--events", required=True, help="history .csv/.parquet, or kafka://TOPIC")
    p.add_argument("--profiles")
    p.add_argument("--as-of", type=_timestamp, help="score every customer at this instant (churn on silence)")
    p.add_argument("--json", action="store_true", help="exactly one JSON object on stdout")
    p.set_defaults(func=cmd_evaluate)


def _add_serve(commands: _Commands) -> None:
    p = commands.add_parser("serve", help="run the streaming scorer (a consumer-group member)")
    p.set_defaults(func=cmd_serve)


def _add_segments(commands: _Commands) -> None:
    p = commands.add_parser("segments", help="export customers by last activities, predicted next action, churn risk")
    p.add_argument("--last", default="", help="their last activities, oldest first, '*' = any one: 'A,B,*,C'")
    p.add_argument("--predicted", default=None, help="predicted next activity")
    p.add_argument("--min-churn", type=_fraction, default=0.0, help="minimum churn risk (latest scoring)")
    p.add_argument("--out", type=Path, default=None, help="CSV file (default: stdout)")
    p.set_defaults(func=cmd_segments)


def _add_sweep(commands: _Commands) -> None:
    p = commands.add_parser("sweep", help="score silent customers up to an event time (backfills), as serving does")
    p.add_argument("--as-of", type=_timestamp, required=True, help="event time to move every partition's clock to")
    p.set_defaults(func=cmd_sweep)


def _add_bench(commands: _Commands) -> None:
    p = commands.add_parser("bench", help="measure the pipeline on the local stack against a per-event baseline")
    p.add_argument("--events", type=_positive_int, default=200_000, help="events for the throughput run")
    p.add_argument("--customers", type=_positive_int, default=20_000)
    p.add_argument("--window", type=_positive_int, default=DEFAULT_WINDOW,
                   help="window of the model trained for the run")
    p.add_argument("--model", type=Path, help="serve this version or registry instead of training one")
    p.add_argument("--instances", type=_positive_int, default=1, help="also run this many scorers in one group")
    p.add_argument("--workers", type=_workers, default=0,
                   help="workers of the measured scorer (SEQSCORE_WORKERS); 0 (default): one per usable core")
    p.add_argument("--rate", type=_non_negative_float, help="latency run events/s (default: half the throughput)")
    p.add_argument("--latency-seconds", type=_non_negative_float, default=20.0, help="measured latency run")
    p.add_argument("--warmup-seconds", type=_non_negative_float, default=5.0,
                   help="at the same rate before the measured run, reported apart (start-up settles)")
    p.add_argument("--baseline-seconds", type=_non_negative_float, default=20.0)
    p.add_argument("--repeat", type=_positive_int, default=1, help="throughput and baseline runs (medians)")
    p.add_argument("--exactly-once", action="store_true",
                   help="also drain with processing_guarantee=exactly_once (Kafka transactions), as a ratio")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the figures as JSON here")
    p.set_defaults(func=cmd_bench)


def _add_watch(commands: _Commands) -> None:
    p = commands.add_parser("watch", help="live view of a running scorer: throughput, latency, outputs")
    p.add_argument("--seconds", type=_non_negative_float, default=60.0, help="how long to watch")
    p.add_argument("--metrics-url", help="the scorer's /metrics URL (default: from the settings)")
    p.set_defaults(func=cmd_watch)


def _add_erase(commands: _Commands) -> None:
    p = commands.add_parser("erase", help="remove everything stored about a customer (GDPR erasure)")
    p.add_argument("--customer", required=True, help="customer id")
    p.set_defaults(func=cmd_erase)


def _add_state(commands: _Commands) -> None:
    p = commands.add_parser("state", help="maintain the Redis state: rebuild windows from the events topic")
    state_commands = p.add_subparsers(dest="state_command", required=True, parser_class=_Parser)
    p = state_commands.add_parser(
        "rebuild",
        help="re-derive every customer's window (raw history) from the retained events topic",
        description="Reads TOPIC from the beginning (or --since) up to its end offsets at start, with a "
        "throwaway consumer that commits nothing, and applies the valid events to the windows under "
        "SEQSCORE_STATE__KEY_PREFIX (idempotent: existing events are not appended twice). Only windows "
        "are rebuilt: alert state starts empty and profiles are not touched. Run it while no scorer "
        "writes the prefix.",
    )
    p.add_argument("--from-topic", required=True, metavar="TOPIC", help="the retained events topic")
    p.add_argument(
        "--since", type=_timestamp, help="start at the first record at or after this time (Kafka record time)"
    )
    p.add_argument("--batch", type=_positive_int, default=1000, help="events per Redis call (default 1000)")
    p.set_defaults(func=cmd_state)


def _add_models(commands: _Commands) -> None:
    p = commands.add_parser("models", help="list | show VERSION | promote VERSION | rollback")
    p.add_argument("action", choices=("list", "show", "promote", "rollback"))
    p.add_argument("version", nargs="?")
    p.add_argument("--registry", type=Path, default=None, help="model registry (default: SEQSCORE_REGISTRY)")
    p.set_defaults(func=cmd_models)


def _add_dlq(commands: _Commands) -> None:
    p = commands.add_parser("dlq", help="the dead-letter topic: replay records once their cause is fixed")
    dlq_commands = p.add_subparsers(dest="dlq_command", required=True, parser_class=_Parser)
    p = dlq_commands.add_parser(
        "replay",
        help="send dead-lettered records back to the events topic",
        description="Reads the dead-letter topic from the beginning up to its end offsets at start (a "
        "throwaway consumer, read_committed, commits nothing) and re-produces each selected record's "
        "original key, value and headers to the events topic (seqscore.* headers dropped, "
        "seqscore.replayed-from=dlq:PARTITION:OFFSET added), waiting for acknowledgements. Selection is by "
        "the DLQ record's Kafka timestamp, i.e. when the scorer dead-lettered it.",
    )
    p.add_argument("--since", type=_instant, required=True, help="ISO-8601 time or date (UTC if no zone), "
                   "or epoch seconds; records dead-lettered at or after it")
    p.add_argument("--until", type=_instant, help="and before this time (same forms)")
    p.add_argument("--reason", action="extend", nargs="+", metavar="REASON",
                   help="only records with this seqscore.reason (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="count what would be replayed, produce nothing")
    p.set_defaults(func=cmd_dlq)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        stream=sys.stderr,
        format=LOG_FORMAT,
    )
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        if getattr(args, "registry", "absent") is None:
            from consumer.settings import load_settings

            args.registry = load_settings().registry
        return func(args)
    except SeqscoreError as exc:
        print(f"seqscore {args.command}: {_redacted(str(exc))}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, ConfigError) else 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        message = _service_error(exc)
        if message is None:
            raise
        print(f"seqscore {args.command}: {_redacted(message)}", file=sys.stderr)
        return 1


def _redacted(text: str) -> str:
    """An error message with every secret of the settings (and any URL password) masked."""
    from consumer.settings import load_settings, mask_url

    try:
        return load_settings().redact(text)
    except SeqscoreError:
        return mask_url(text)


def _service_error(exc: Exception) -> str | None:
    """One line for a Redis or Kafka client error that reached the top (wrong credentials,
    TLS, unreachable); None for anything else, which is a bug and keeps its traceback."""
    redis = sys.modules.get("redis")
    if redis is not None and isinstance(exc, redis.RedisError):
        from consumer.settings import load_settings, mask_url

        try:
            url = mask_url(load_settings().redis_url)
        except SeqscoreError:
            url = "SEQSCORE_REDIS_URL"
        if isinstance(exc, redis.AuthenticationError | redis.exceptions.NoPermissionError):
            return f"Redis at {url} refused the credentials: {exc} (check the user and password in SEQSCORE_REDIS_URL)"
        return f"Redis at {url}: {type(exc).__name__}: {exc}"
    kafka = sys.modules.get("confluent_kafka")
    if kafka is not None and isinstance(exc, kafka.KafkaException):
        return f"Kafka: {exc}"
    return None


if __name__ == "__main__":
    sys.exit(main())
