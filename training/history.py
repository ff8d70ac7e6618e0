"""History files (CSV or Parquet, the event contract's fields as columns): writing and reading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from state.errors import ConfigError
from training.simulate import AGE_GROUPS, CHANNELS, GENDERS, SimulatedHistory

HISTORY_FORMATS = (".csv", ".parquet")


def history_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in HISTORY_FORMATS:
        raise ConfigError(f"{path}: history files end in .csv or .parquet, not '{suffix or '(none)'}'")
    return suffix


def history_table(history: SimulatedHistory) -> pa.Table:
    """One row per event, oldest first, with the contract's column names."""
    amount = np.where(history.amount > 0, history.amount, np.nan)
    return pa.table(
        {
            "event_id": pa.array(history.event_ids()),
            "customer_id": pa.array(history.customer_ids[history.event_customer]),
            "ts": pa.array(history.event_ts.astype("datetime64[s]")).cast(pa.timestamp("s", tz="UTC")),
            "activity": pa.array(history.activity_names()),
            "activity_detail": pa.array(history.detail_names()),
            "channel": pa.array(np.array(CHANNELS)[history.channel]),
            "amount": pa.array(amount, from_pandas=True),
        }
    )


def profiles_table(history: SimulatedHistory) -> pa.Table:
    return pa.table(
        {
            "customer_id": pa.array(history.customer_ids),
            "signup": pa.array(history.signup.astype("datetime64[s]")).cast(pa.timestamp("s", tz="UTC")),
            "gender": pa.array(np.array(GENDERS)[history.gender]),
            "age_group": pa.array(np.array(AGE_GROUPS)[history.age_group]),
        }
    )


def write_table(table: pa.Table, path: Path) -> None:
    """Write CSV (ISO-8601 times with zone) or Parquet by the file's suffix, atomically."""
    kind = history_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    if kind == ".parquet":
        pq.write_table(table, tmp, compression="zstd")
    else:
        columns = []
        for name in table.column_names:
            column = table[name]
            if pa.types.is_timestamp(column.type):
                text = np.char.add(np.datetime_as_string(column.to_numpy().astype("datetime64[s]"), unit="s"), "Z")
                column = pa.array(text)
            columns.append(column)
        pacsv.write_csv(pa.table(columns, names=table.column_names), tmp)
    tmp.replace(path)
