"""The quality page: `python -m training.quality --data DIR` (`make quality`) trains with the
default flags, as a new user would, on the simulator and on the real logs in DIR, and writes
docs/quality.md with the model beside every baseline, and plots beside it.

Protocols (the same as an outside check of this project uses):

- Next action: cases in file order, the first 2/3 train (`seqscore train --events F
  --registry R`, nothing else), the last 1/3 evaluate (`seqscore evaluate --json`); every
  prefix of an evaluation case predicts its next event; an activity never seen in training
  is a miss. Baselines on the same prefixes: most frequent, Markov, and back-off n-grams
  of order 2-4 fitted on the training cases (the next activity after the longest context
  seen, ties broken by first sight).
- Churn at an as-of date T: train on the events before T (`--churn-horizon-days H`), score
  every customer with events before T at T (`seqscore evaluate --as-of T`); churn = no
  event in [T, T + H). Baselines: recency (days since the last event) and BG/NBD fitted on
  daily repeat-event summaries up to T, ranked by expected events in the horizon.

The real logs are not part of this repository (their licences are not recorded here): the
folder is an argument, and each known log's churn protocol is in KNOWN_LOGS.
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from training import bgnbd
from training.history import history_table, write_table
from training.metrics import roc_auc
from training.simulate import simulate

# file name -> (as-of date, churn horizon in days) of its churn protocol, None: next action only
KNOWN_LOGS: dict[str, tuple[str, int] | None] = {
    "bpi13-incidents.csv": ("2012-05-01", 7),
    "env-permit.csv": None,
}
SIMULATED = ("simulator", 8_000, ("2022-01-15", 120))
DAY = 86_400


@dataclass
class Row:
    log: str
    task: str  # "next action" | "churn as of T"
    model: float
    baselines: dict[str, float]
    examples: int
    train_seconds: float
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def best_baseline(self) -> tuple[str, float]:
        name = max(self.baselines, key=lambda k: self.baselines[k])
        return name, self.baselines[name]


def read_cases(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Events per case in file order, sorted by time (ties keep file order)."""
    cases: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
    with path.open() as f:
        for row in csv.DictReader(f):
            cases[row["customer_id"]].append((row["ts"], row["activity"]))
    for events in cases.values():
        events.sort(key=lambda e: e[0])
    return cases


def split_cases(path: Path, out: Path) -> tuple[Path, Path]:
    """The first 2/3 of the cases (in file order) and the rest, as two history files."""
    with path.open() as f:
        rows = list(csv.DictReader(f))
    ids = list(dict.fromkeys(r["customer_id"] for r in rows))
    train_ids = set(ids[: round(len(ids) * 2 / 3)])
    files = (out / f"{path.stem}-train.csv", out / f"{path.stem}-test.csv")
    for target, keep in zip(files, (True, False), strict=True):
        with target.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["customer_id", "ts", "activity"])
            writer.writeheader()
            writer.writerows(
                {k: r[k] for k in ("customer_id", "ts", "activity")}
                for r in rows
                if (r["customer_id"] in train_ids) == keep
            )
    return files


def count_baselines(train: Path, test: Path) -> dict[str, float]:
    """Most frequent, Markov and the best back-off n-gram (orders 2-4) on every test prefix."""
    train_cases, test_cases = read_cases(train), read_cases(test)
    out = {}
    for name, order in (("most frequent", 0), ("Markov", 1), ("n-gram 2", 2), ("n-gram 3", 3), ("n-gram 4", 4)):
        tables: list[dict[tuple[str, ...], collections.Counter[str]]] = [
            collections.defaultdict(collections.Counter) for _ in range(order + 1)
        ]
        for events in train_cases.values():
            acts = [a for _, a in events]
            for i in range(1, len(acts)):
                for k in range(min(order, i) + 1):
                    tables[k][tuple(acts[i - k : i])][acts[i]] += 1
        hit = total = 0
        for events in test_cases.values():
            acts = [a for _, a in events]
            for i in range(1, len(acts)):
                guess = next(
                    (
                        tables[k][tuple(acts[i - k : i])].most_common(1)[0][0]
                        for k in range(min(order, i), -1, -1)
                        if tables[k].get(tuple(acts[i - k : i]))
                    ),
                    None,
                )
                hit += guess == acts[i]
                total += 1
        out[name] = hit / max(total, 1)
    best = max(v for k, v in out.items() if k.startswith("n-gram"))
    return {"most frequent": out["most frequent"], "Markov": out["Markov"], "best n-gram (2-4)": best}


def seqscore(*args: str) -> str:
    """Run the CLI as a user would; its progress goes to our stderr, its stdout is returned."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEQSCORE_")} | {"TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-m", "consumer.cli", *args], stdout=subprocess.PIPE, text=True, env=env, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"quality: seqscore {args[0]} exited {done.returncode}")
    return done.stdout


def train(events: Path, registry: Path, *extra: str) -> tuple[float, dict[str, Any]]:
    started = time.monotonic()
    seqscore("train", "--events", str(events), "--registry", str(registry), "--promote", "always", *extra)
    seconds = time.monotonic() - started
    manifest = json.loads((registry / "CURRENT" / "manifest.json").read_text())
    return seconds, manifest


def settings_of(manifest: dict[str, Any]) -> dict[str, Any]:
    model = manifest["training"]["model"]
    return {
        "window": manifest["features"]["window"],
        "recipe": f"{model['layers']}x{model['units']} units, dropout {model['dropout']}, "
        f"lr {model['learning_rate']:.2g}, batch {model['batch_size']}",
        "trials": len(manifest["training"].get("trials", [])),
        "served": f"next action: {manifest['choice']['next_action']['served']}, "
        f"churn: {manifest['choice']['churn']['served']}",
    }


def next_action_row(name: str, path: Path, work: Path) -> Row:
    train_file, test_file = split_cases(path, work)
    print(f"quality: {name}: next action (train on {train_file.name}) ...", file=sys.stderr, flush=True)
    seconds, manifest = train(train_file, work / f"{name}-next")
    metrics = json.loads(
        seqscore("evaluate", "--model", str(work / f"{name}-next"), "--events", str(test_file), "--json")
    )
    na = metrics["next_action"]
    return Row(
        name,
        "next action",
        na["accuracy"],
        count_baselines(train_file, test_file),
        na["n_examples"],
        seconds,
        settings_of(manifest),
    )


def churn_row(name: str, path: Path, work: Path, as_of: str, horizon_days: int) -> Row:
    cutoff = int(datetime.fromisoformat(as_of).replace(tzinfo=UTC).timestamp())
    history_file = work / f"{name}-before.csv"
    events = read_events_flat(path)
    with history_file.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["customer_id", "ts", "activity"])
        writer.writerows(
            (c, datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), a) for c, t, a in events if t < cutoff
        )
    print(f"quality: {name}: churn as of {as_of} ...", file=sys.stderr, flush=True)
    seconds, manifest = train(history_file, work / f"{name}-churn", "--churn-horizon-days", str(horizon_days))
    metrics = json.loads(
        seqscore("evaluate", "--model", str(work / f"{name}-churn"), "--events", str(path), "--as-of", as_of, "--json")
    )
    recency, bg = churn_baselines(events, cutoff, horizon_days)
    return Row(
        name,
        f"churn as of {as_of}, {horizon_days} days",
        metrics["churn"]["roc_auc"],
        {"recency": recency, "BG/NBD": bg},
        metrics["churn"]["n_examples"],
        seconds,
        settings_of(manifest),
    )


def read_events_flat(path: Path) -> list[tuple[str, int, str]]:
    with path.open() as f:
        return [
            (r["customer_id"], int(datetime.fromisoformat(r["ts"].replace("Z", "+00:00")).timestamp()), r["activity"])
            for r in csv.DictReader(f)
        ]


def churn_baselines(events: list[tuple[str, int, str]], cutoff: int, horizon_days: int) -> tuple[float, float]:
    """ROC AUC of recency and of BG/NBD (daily repeat events up to the cut-off) as of `cutoff`."""
    days: dict[str, set[int]] = collections.defaultdict(set)
    future: set[str] = set()
    for customer, ts, _ in events:
        if ts < cutoff:
            days[customer].add(ts // DAY)
        elif ts < cutoff + horizon_days * DAY:
            future.add(customer)
    customers = sorted(days)
    first = np.array([min(days[c]) for c in customers], dtype=np.int64) * DAY
    last = np.array([max(days[c]) for c in customers], dtype=np.int64) * DAY
    count = np.array([len(days[c]) for c in customers], dtype=np.int64)
    label = np.array([c not in future for c in customers], dtype=float)
    x, t_x, big_t = bgnbd.summary_at(last, first, count, np.full(len(customers), cutoff // DAY * DAY))
    expected = bgnbd.fit(x, t_x, big_t).expected_events(x, t_x, big_t, horizon_days * DAY / bgnbd.WEEK)
    silence = (cutoff - last) / DAY
    return roc_auc(label, silence), roc_auc(label, -expected)


def write_page(rows: list[Row], out: Path, plots: Path) -> None:
    plots.mkdir(parents=True, exist_ok=True)
    _plot(rows, plots / "quality.png")
    lines = [
        "# Model quality on real logs and the simulator",
        "",
        f"Generated by `make quality` on {datetime.now(UTC):%Y-%m-%d} (`python -m training.quality`), with "
        "`seqscore train` at its default flags; protocols in `training/quality.py`. The real logs are public "
        "(BPI Challenge 2013 incidents, Volvo IT Belgium; an environmental permit application process, CoSeLoG; "
        "both published on 4TU.ResearchData) and are not part of this repository.",
        "",
        "| log | scored | model | baselines | best baseline | margin | examples | training | settings chosen |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        best_name, best = r.best_baseline
        baselines = ", ".join(f"{k} {v:.3f}" for k, v in r.baselines.items())
        settings = "; ".join(f"{k}: {v}" for k, v in r.settings.items())
        lines.append(
            f"| {r.log} | {r.task} | **{r.model:.3f}** | {baselines} | {best_name} | {r.model - best:+.3f} | "
            f"{r.examples:,} | {r.train_seconds:.0f} s | {settings} |"
        )
    lines += [
        "",
        "Next action: accuracy. Churn: ROC AUC.",
        "",
        f"![model against baselines]({plots.name}/quality.png)",
        "",
        "What the table does not show (the churn ceiling on `bpi13-incidents`, the drift in `env-permit`) is in",
        "[quality-notes.md](quality-notes.md), written by hand.",
        "",
    ]
    out.write_text("\n".join(lines))


def _plot(rows: list[Row], path: Path) -> None:
    from training.report import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, len(rows), figsize=(3.2 * len(rows), 3.6), squeeze=False)
    for ax, r in zip(axes[0], rows, strict=True):
        names = ["model", *r.baselines]
        values = [r.model, *r.baselines.values()]
        ax.bar(range(len(names)), values, color=["tab:blue"] + ["tab:gray"] * len(r.baselines))
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title(f"{r.log}\n{r.task}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.quality", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"), help="folder of real logs (.csv)")
    parser.add_argument("--out", type=Path, default=Path("docs/quality.md"))
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="seqscore-quality-"))
    rows: list[Row] = []
    name, customers, (as_of, horizon) = SIMULATED
    simulated = work / "simulator.csv"
    write_table(history_table(simulate(customers, seed=1)), simulated)
    rows.append(next_action_row(name, simulated, work))
    rows.append(churn_row(name, simulated, work, as_of, horizon))
    for file_name, protocol in KNOWN_LOGS.items():
        path = args.data / file_name
        if not path.is_file():
            print(f"quality: {path} not found, left out", file=sys.stderr)
            continue
        rows.append(next_action_row(path.stem, path, work))
        if protocol is not None:
            rows.append(churn_row(path.stem, path, work, *protocol))
    write_page(rows, args.out, args.out.parent / "quality")
    print(f"quality: wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
