"""Shared parts of the Python round-trip scripts.

Both scripts produce the same deterministic records (see ``make_records``),
remember where each one was acknowledged, read every partition back and hand
what they read to ``check_roundtrip``, which reports every way the result can
differ from what was sent.
"""

import argparse
import sys
import time
from dataclasses import dataclass, field

PARTITIONS = 3
DISTINCT_KEYS = 211
NULL_VALUE_EVERY = 1000
MAX_REPORTED_ERRORS = 25


@dataclass(frozen=True)
class Record:
    """One produced record: the index it was produced at, and its contents."""

    index: int
    key: bytes
    value: bytes | None
    headers: list = field(default_factory=list)  # [(str, bytes)]
    timestamp: int = 0  # epoch milliseconds


@dataclass(frozen=True)
class Received:
    """One consumed record, normalised across clients."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list  # [(str, bytes)], in wire order
    timestamp: int
    create_time: bool  # timestamp type is CreateTime


def parse_args(description):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--bootstrap", required=True, help="HOST:PORT of the broker")
    parser.add_argument("--topic", required=True, help="topic to create (must not exist)")
    parser.add_argument("--records", type=int, default=10_000, help="records to produce")
    parser.add_argument(
        "--timeout", type=float, default=240.0, help="overall deadline in seconds"
    )
    args = parser.parse_args()
    if args.records <= 0:
        parser.error("--records must be positive")
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    return args


class Deadline:
    """An overall time bound for the script."""

    def __init__(self, name, seconds):
        self.name = name
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def remaining(self):
        left = self.end - time.monotonic()
        if left <= 0:
            fail(self.name, f"overall deadline of {self.seconds:g} s passed")
        return left

    def expired(self):
        return time.monotonic() >= self.end


def fail(name, message):
    print(f"{name}: FAIL: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def make_records(count, now_ms=None):
    """``count`` records over ``DISTINCT_KEYS`` keys.

    Values hold arbitrary bytes (not UTF-8) of varying length, and every
    ``NULL_VALUE_EVERY``-th is null. Headers vary: none, empty values, binary
    values and a repeated key. Timestamps lie in the hour before ``now_ms``
    and are not monotonic, so a broker that rewrote or sorted them shows up.
    """
    if now_ms is None:
        now_ms = int(time.time() * 1000)
    base = now_ms - 3_600_000
    records = []
    for i in range(count):
        key = f"key-{i % DISTINCT_KEYS:03d}".encode()
        if i % NULL_VALUE_EVERY == NULL_VALUE_EVERY - 1:
            value = None
        else:
            value = f"value-{i:05d}|".encode() + bytes((i * 31 + j * 7) % 256 for j in range(i % 97))
        kind = i % 4
        if kind == 0:
            headers = []
        elif kind == 1:
            headers = [("idx", str(i).encode())]
        elif kind == 2:
            headers = [
                ("idx", str(i).encode()),
                ("bin", bytes([i % 256, (i >> 8) % 256, 0, 255])),
                ("empty", b""),
            ]
        else:
            headers = [
                ("dup", b"first"),
                ("idx", str(i).encode()),
                ("dup", f"second-{i % 7}".encode()),
            ]
        timestamp = base + ((i * 7919) % count) * 3
        records.append(Record(i, key, value, headers, timestamp))
    return records


def check_roundtrip(name, records, acks, received, end_offsets, start_offsets):
    """Compares what was read with what was sent and acknowledged.

    ``acks`` maps a record's index to the (partition, offset) its produce was
    acknowledged at; ``received`` maps each partition to the records read from
    it in the order the client delivered them; ``end_offsets`` and
    ``start_offsets`` are the partitions' high watermarks and log start
    offsets as the client's offset lookup reported them. Exits the script
    on any difference; returns the per-partition counts otherwise.
    """
    errors = []

    def error(message):
        errors.append(message)

    # Acknowledgements: every record exactly once, at distinct positions.
    at = {}
    for record in records:
        ack = acks.get(record.index)
        if ack is None:
            error(f"record {record.index} was never acknowledged")
            continue
        partition, offset = ack
        if not 0 <= partition < PARTITIONS or offset < 0:
            error(f"record {record.index} acknowledged at partition {partition} offset {offset}")
            continue
        if (partition, offset) in at:
            error(
                f"records {at[(partition, offset)]} and {record.index} were both "
                f"acknowledged at partition {partition} offset {offset}"
            )
        at[(partition, offset)] = record.index

    # Produce order is kept within a partition.
    by_partition = {}
    for (partition, offset), index in at.items():
        by_partition.setdefault(partition, []).append((offset, index))
    for partition, entries in by_partition.items():
        entries.sort()
        indexes = [index for _, index in entries]
        for earlier, later in zip(indexes, indexes[1:]):
            if earlier > later:
                error(
                    f"partition {partition}: record {later} was appended after record "
                    f"{earlier} although it was produced before it"
                )
                break

    # Offsets: the log starts at 0 and ends after the acknowledged records.
    counts = []
    for partition in range(PARTITIONS):
        acked = sum(1 for p, _ in at if p == partition)
        counts.append(acked)
        if start_offsets.get(partition) != 0:
            error(f"partition {partition}: log start offset {start_offsets.get(partition)}, expected 0")
        if end_offsets.get(partition) != acked:
            error(
                f"partition {partition}: end offset (high watermark) "
                f"{end_offsets.get(partition)}, expected {acked} (records acknowledged there)"
            )

    # Consumed records: dense from 0, in offset order, equal to what was sent.
    by_index = {record.index: record for record in records}
    consumed = 0
    key_partition = {}
    for partition in range(PARTITIONS):
        got = received.get(partition, [])
        consumed += len(got)
        if len(got) != counts[partition]:
            error(f"partition {partition}: read {len(got)} records, {counts[partition]} were acknowledged")
        for position, rec in enumerate(got):
            where = f"partition {partition} offset {rec.offset}"
            if rec.partition != partition:
                error(f"{where}: delivered as partition {rec.partition}")
            if rec.offset != position:
                error(
                    f"partition {partition}: record #{position} read has offset {rec.offset} "
                    f"(offsets must be dense from 0 and in order)"
                )
                break
            index = at.get((partition, rec.offset))
            if index is None:
                error(f"{where}: no record was acknowledged there")
                continue
            sent = by_index[index]
            if rec.key != sent.key:
                error(f"{where} (record {index}): key {rec.key!r}, sent {sent.key!r}")
            if rec.value != sent.value:
                error(f"{where} (record {index}): value {short(rec.value)}, sent {short(sent.value)}")
            if rec.headers != sent.headers:
                error(f"{where} (record {index}): headers {rec.headers!r}, sent {sent.headers!r}")
            if rec.timestamp != sent.timestamp:
                error(f"{where} (record {index}): timestamp {rec.timestamp}, sent {sent.timestamp}")
            if not rec.create_time:
                error(f"{where} (record {index}): timestamp type is not CreateTime")
            if rec.key is not None:
                first = key_partition.setdefault(rec.key, partition)
                if first != partition:
                    error(f"key {rec.key!r} is in partitions {first} and {partition}")
    if consumed != len(records):
        error(f"read {consumed} records in all, produced {len(records)}")

    if errors:
        shown = errors[:MAX_REPORTED_ERRORS]
        more = len(errors) - len(shown)
        lines = "\n  ".join(shown)
        suffix = f"\n  ... and {more} more" if more else ""
        fail(name, f"{len(errors)} mismatches:\n  {lines}{suffix}")
    return counts


def short(value, limit=40):
    if value is None:
        return "null"
    text = repr(value[:limit])
    return f"{text}... ({len(value)} bytes)" if len(value) > limit else text
