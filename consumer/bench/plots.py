"""The benchmark's plots, beside its figures: the latency phase over time and its spread."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from training.report import pyplot

TARGET_P99_MS = 250


def split_warmup(
    sent_s: NDArray[np.float64], delay_ms: NDArray[np.float64], warmup_s: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(measured, warm-up) latencies: by when each output's input was produced, from the first."""
    warming = sent_s < warmup_s
    return delay_ms[~warming], delay_ms[warming]


def plot_latency(
    sent_s: NDArray[np.float64], delay_ms: NDArray[np.float64], offered_eps: float, path: Path, warmup_s: float = 0.0
) -> None:
    """Each output's latency against when its input was produced, with p50 and p99 per second
    (a start-up burst or a stall shows where the percentiles alone cannot; the warm-up shaded),
    and the spread of the measured outputs (after the warm-up)."""
    plt = pyplot()
    fig, (over_time, spread) = plt.subplots(1, 2, figsize=(12, 4.5))
    floor = max(float(delay_ms.min(initial=1.0)), 1.0)
    second = np.floor(sent_s).astype(np.int64)
    seconds = np.unique(second)
    per_second = [delay_ms[second == s] for s in seconds]
    over_time.scatter(sent_s, np.maximum(delay_ms, floor), s=1, alpha=0.15, color="grey", label="outputs")
    for q, color in ((50, "tab:blue"), (99, "tab:orange")):
        over_time.plot(seconds + 0.5, [np.percentile(d, q) for d in per_second], color=color, label=f"p{q} per second")
    if warmup_s > 0:
        over_time.axvspan(0, warmup_s, color="tab:grey", alpha=0.12, label="warm-up (reported apart)")
    over_time.axhline(TARGET_P99_MS, linestyle="--", color="tab:red", label=f"target p99 {TARGET_P99_MS} ms")
    over_time.set(yscale="log", xlabel="seconds since the first input", ylabel="ms from input to output",
                  title=f"latency at {offered_eps:,.0f} events/s")
    over_time.legend(loc="upper right", fontsize="small")
    delay_ms, _ = split_warmup(sent_s, delay_ms, warmup_s)
    bins = np.logspace(np.log10(floor), np.log10(max(float(delay_ms.max(initial=floor)), floor * 2)), 60)
    spread.hist(np.maximum(delay_ms, floor), bins=bins, color="grey")
    for q, color in ((50, "tab:blue"), (99, "tab:orange")):
        value = float(np.percentile(delay_ms, q))
        spread.axvline(value, color=color, label=f"p{q} {value:,.0f} ms")
    spread.axvline(TARGET_P99_MS, linestyle="--", color="tab:red")
    spread.set(xscale="log", xlabel="ms from input to output", ylabel="outputs", title=f"{len(delay_ms):,} outputs")
    spread.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
