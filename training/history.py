"""History files (CSV or Parquet, the event contract's fields as columns): reading and writing.

A loaded History holds flat arrays sorted by (customer, event time): what labels,
baselines, training and evaluation share. `--events kafka://TOPIC` replays a topic up
to the end offsets seen at start.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from numpy.typing import NDArray

from state.encoding import AGE_GROUPS, GENDERS, activity_codes
from state.errors import ConfigError
from state.events import DEFAULT_MAX_EVENT_BYTES
from training.simulate import CHANNELS, SimulatedHistory

REQUIRED_COLUMNS = ("customer_id", "ts", "activity")
_TEXT_COLUMNS = ("customer_id", "activity", "activity_detail", "event_id", "gender", "age_group")


@dataclass
class History:
    """Events sorted by (customer, time); names are dictionary-coded (distinct names + index per event)."""

    customer_ids: NDArray[Any]  # distinct customers (str), sorted
    customer: NDArray[np.int64]  # per event: index into customer_ids
    ts: NDArray[np.int64]  # epoch seconds
    activity_names: NDArray[Any]  # distinct coarse names
    activity: NDArray[np.int64]  # per event: index into activity_names
    detail_names: NDArray[Any]  # distinct fine names (the coarse name where absent)
    detail: NDArray[np.int64]
    customer_start: NDArray[np.int64]  # per event: index of its customer's first event
    gender: NDArray[np.int64]  # per event, -1 unknown
    age_group: NDArray[np.int64]  # per event, -1 unknown
    source: str

    def __len__(self) -> int:
        return len(self.ts)

    @property
    def seq_start(self) -> NDArray[np.bool_]:
        return self.customer_start == np.arange(len(self.ts))

    def names(self, level: str) -> tuple[NDArray[Any], NDArray[np.int64]]:
        """(distinct names, index per event) at the coarse or fine level."""
        return (self.activity_names, self.activity) if level == "coarse" else (self.detail_names, self.detail)

    def codes(self, level: str) -> NDArray[np.uint32]:
        """Activity codes per event, as state stores them."""
        names, index = self.names(level)
        return activity_codes(names)[index]

    def time_range(self) -> tuple[int, int]:
        return int(self.ts.min()), int(self.ts.max())

    def select(self, keep: NDArray[np.bool_]) -> History:
        """A sub-history of the kept events (order and coding preserved)."""
        customer = self.customer[keep]
        n = len(customer)
        first = np.ones(n, dtype=bool)
        first[1:] = customer[1:] != customer[:-1]
        start = np.maximum.accumulate(np.where(first, np.arange(n), 0)).astype(np.int64)
        return History(
            self.customer_ids,
            customer,
            self.ts[keep],
            self.activity_names,
            self.activity[keep],
            self.detail_names,
            self.detail[keep],
            start,
            self.gender[keep],
            self.age_group[keep],
            self.source,
        )


def _dictionary(column: pa.ChunkedArray) -> tuple[NDArray[Any], NDArray[np.int64]]:
    """(distinct values sorted, index per row) of a string column, computed by Arrow."""
    encoded = pc.dictionary_encode(column.combine_chunks())
    values = encoded.dictionary.to_numpy(zero_copy_only=False).astype(str)
    order = np.argsort(values, kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return values[order], rank[encoded.indices.to_numpy(zero_copy_only=False)]


def _build(
    table: pa.Table, ts: NDArray[np.int64], gender: NDArray[np.int64], age_group: NDArray[np.int64], source: str
) -> History:
    customer_ids, customer = _dictionary(table["customer_id"])
    activity_names, activity = _dictionary(table["activity"])
    detail_names, detail = _dictionary(table["activity_detail"])
    order = np.lexsort((ts, customer))  # stable: ties keep file order
    customer = customer[order]
    n = len(order)
    first = np.ones(n, dtype=bool)
    first[1:] = customer[1:] != customer[:-1]
    start = np.maximum.accumulate(np.where(first, np.arange(n), 0)).astype(np.int64)
    return History(
        customer_ids,
        customer,
        ts[order].astype(np.int64),
        activity_names,
        activity[order],
        detail_names,
        detail[order],
        start,
        gender[order],
        age_group[order],
        source,
    )


def parse_timestamps(values: NDArray[Any], what: str) -> NDArray[np.int64]:
    """ISO-8601 (zone, 'Z' or none = UTC) or plain dates -> epoch seconds; each distinct text parsed once."""
    unique, inverse = np.unique(np.asarray(values, dtype=object).astype(str), return_inverse=True)
    seconds = np.empty(len(unique), dtype=np.int64)
    for i, text in enumerate(unique):
        try:
            stamp = datetime.fromisoformat(text)
        except ValueError:
            row = int(np.flatnonzero(inverse == i)[0])
            raise ConfigError(f"{what}: row {row + 1}: unparsable timestamp {text!r}") from None
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=UTC)
        seconds[i] = int(stamp.timestamp())
    return seconds[inverse]


def _timestamps(column: pa.ChunkedArray, what: str) -> NDArray[np.int64]:
    if pa.types.is_timestamp(column.type):
        if column.null_count:
            raise ConfigError(f"{what}: row {_first_null(column) + 1}: empty timestamp")
        return column.cast(pa.timestamp("s", tz=column.type.tz)).cast(pa.int64()).to_numpy()
    if pa.types.is_date(column.type):
        return column.cast(pa.date32()).cast(pa.int32()).to_numpy().astype(np.int64) * 86_400
    if column.null_count:
        raise ConfigError(f"{what}: row {_first_null(column) + 1}: empty timestamp")
    return parse_timestamps(column.to_numpy(zero_copy_only=False), what)


def _first_null(column: pa.ChunkedArray) -> int:
    return int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])


def read_table(path: Path) -> pa.Table:
    kind = history_format(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        if kind == ".parquet":
            return pq.read_table(path)
        names = pacsv.read_csv(path, read_options=pacsv.ReadOptions(skip_rows_after_names=0)).column_names
        types = {name: pa.string() for name in (*_TEXT_COLUMNS, "ts") if name in names}
        return pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types=types))
    except pa.ArrowInvalid as exc:
        if "Empty CSV file" in str(exc):
            raise ConfigError(f"{path}: empty file") from exc
        raise ConfigError(f"{path}: cannot read: {exc}") from exc


def _check_text(table: pa.Table, name: str, what: str) -> None:
    column = table[name]
    bad = pc.or_kleene(column.is_null(), pc.equal(pc.utf8_length(column.cast(pa.string())), 0))
    if pc.any(bad).as_py():
        row = int(np.flatnonzero(bad.to_numpy(zero_copy_only=False))[0])
        raise ConfigError(f"{what}: row {row + 1}: empty {name}")


def _drop_repeated_event_ids(table: pa.Table) -> pa.Table:
    """Keep the first row of each event_id (producer retries, replays), as the scorer does."""
    if "event_id" not in table.column_names or table["event_id"].null_count == table.num_rows:
        return table
    ids = pc.dictionary_encode(table["event_id"].combine_chunks()).indices.to_numpy(zero_copy_only=False)
    ids = np.where(table["event_id"].is_null().to_numpy(zero_copy_only=False), -1 - np.arange(len(ids)), ids)
    _, first = np.unique(ids, return_index=True)
    if len(first) == table.num_rows:
        return table
    return table.take(pa.array(np.sort(first)))


def history_from_table(table: pa.Table, source: str, profiles: pa.Table | None = None) -> History:
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise ConfigError(f"{source}: missing column {missing[0]!r} (need {', '.join(REQUIRED_COLUMNS)})")
    if table.num_rows == 0:
        raise ConfigError(f"{source}: no events")
    for name in ("customer_id", "activity"):
        _check_text(table, name, source)
    table = _drop_repeated_event_ids(table)
    ts = _timestamps(table["ts"], source)
    columns = {name: table[name].cast(pa.string()) for name in ("customer_id", "activity")}
    detail = table["activity_detail"].cast(pa.string()) if "activity_detail" in table.column_names else None
    if detail is not None:
        detail = pc.if_else(pc.equal(pc.utf8_length(pc.fill_null(detail, "")), 0), columns["activity"], detail)
    columns["activity_detail"] = detail if detail is not None else columns["activity"]
    gender = np.full(len(ts), -1, dtype=np.int64)
    age = np.full(len(ts), -1, dtype=np.int64)
    if profiles is not None:
        gender, age = _profile_columns(columns["customer_id"], profiles)
    return _build(pa.table(columns), ts, gender, age, source)


def _profile_columns(
    customer_column: pa.ChunkedArray, profiles: pa.Table
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    customers = customer_column.to_numpy(zero_copy_only=False).astype(str)
    if "customer_id" not in profiles.column_names:
        raise ConfigError("profiles: missing column 'customer_id'")
    ids = profiles["customer_id"].cast(pa.string()).to_numpy(zero_copy_only=False).astype(str)
    order = np.argsort(ids)
    ids = ids[order]

    def index_of(column: str, values: tuple[str, ...]) -> NDArray[np.int64]:
        if column not in profiles.column_names:
            return np.full(len(ids), -1, dtype=np.int64)
        raw = profiles[column].cast(pa.string()).to_numpy(zero_copy_only=False).astype(object)[order]
        lookup = {v: i for i, v in enumerate(values)}
        return np.array([lookup.get(v, -1) for v in raw], dtype=np.int64)

    genders, ages = index_of("gender", GENDERS), index_of("age_group", AGE_GROUPS)
    pos = np.clip(np.searchsorted(ids, customers.astype(str)), 0, max(len(ids) - 1, 0))
    found = ids[pos] == customers.astype(str) if len(ids) else np.zeros(len(customers), dtype=bool)
    return np.where(found, genders[pos], -1), np.where(found, ages[pos], -1)


@dataclass(frozen=True)
class TopicReplay:
    """How to replay `kafka://TOPIC` history: the librdkafka settings and the event size limit
    the scorer applies (training reads no serving settings of its own)."""

    kafka_config: dict[str, Any]
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES


def load_history(source: str, profiles: str | None = None, replay: TopicReplay | None = None) -> History:
    """Read a CSV/Parquet file, or replay `kafka://TOPIC` up to its end offsets at start."""
    profile_table = read_table(Path(profiles)) if profiles else None
    is_topic = source.startswith("kafka://")
    if is_topic and replay is None:
        raise ConfigError(f"{source}: replaying a topic needs the Kafka settings")
    table = replay_topic(source.removeprefix("kafka://"), replay) if is_topic and replay else read_table(Path(source))
    return history_from_table(table, source, profile_table)


def replay_topic(topic: str, replay: TopicReplay, timeout_s: float = 30.0) -> pa.Table:
    """Valid events of `topic` from the beginning up to the end offsets seen now."""
    from confluent_kafka import Consumer, TopicPartition

    from state.errors import InvalidEvent
    from state.events import decode_event

    consumer = Consumer(
        {**replay.kafka_config, "group.id": f"seqscore-replay-{topic}", "enable.auto.commit": False,
         "auto.offset.reset": "earliest"}
    )
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            raise ConfigError(f"kafka://{topic}: no such topic")
        ends = {}
        for p in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
            if high > low:
                ends[p] = high
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        rows: dict[str, list[Any]] = {k: [] for k in ("customer_id", "ts", "activity", "activity_detail", "event_id")}
        done: set[int] = set()
        invalid = 0
        while len(done) < len(ends):
            for msg in consumer.consume(1000, 0.5):
                if msg.error() is not None:
                    continue
                partition, offset = int(msg.partition() or 0), int(msg.offset() or 0)
                if offset >= ends[partition] - 1:
                    done.add(partition)
                if offset >= ends[partition]:
                    continue
                try:
                    event = decode_event(msg.value(), replay.max_event_bytes)
                except InvalidEvent:
                    invalid += 1
                    continue
                rows["customer_id"].append(event.customer_id)
                rows["ts"].append(event.ts_seconds)
                rows["activity"].append(event.activity)
                rows["activity_detail"].append(event.activity_detail or event.activity)
                rows["event_id"].append(event.event_id)
        if invalid:
            print(f"replay kafka://{topic}: skipped {invalid:,} invalid records", file=sys.stderr)
    finally:
        consumer.close()
    table = pa.table({k: pa.array(v) for k, v in rows.items() if k != "ts"})
    return table.append_column("ts", pa.array(np.array(rows["ts"], dtype=np.int64)).cast(pa.timestamp("s", tz="UTC")))


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
