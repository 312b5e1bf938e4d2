#!/usr/bin/env python3
"""confluent-kafka (librdkafka) on the other side of `sluice produce` and
`sluice consume`, for tests/tests/cli.rs.

Two modes, each printing one line per record so the Rust test can compare
bytes exactly:

  read   assigns partitions 0..N-1 of a topic from the beginning (manual
         assignment, nothing committed) and prints the first --expect
         records it gets, then exits; fails if they do not all come before
         the deadline.
  write  produces --records keyed records with headers and explicit
         timestamps, placed by librdkafka's murmur2_random partitioner (the
         one that matches Kafka's Java client), and prints where each landed.

A record line is `PARTITION OFFSET TIMESTAMP KEY VALUE HEADERS`, where KEY
and VALUE are hex (`-` for null) and HEADERS is `-` or `name=hexvalue`
pairs joined by commas (header names are plain ASCII here). Lines are
sorted by partition and offset. Exit status 1 with a message on stderr on
any failure.
"""

import argparse
import sys
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition

NAME = "cli_interop"


def fail(message):
    print(f"{NAME}: FAIL: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def log_errors(err):
    print(f"{NAME}: client error: {err}", file=sys.stderr, flush=True)


def hex_or_dash(data):
    return "-" if data is None else (data.hex() or "")


def headers_text(headers):
    if not headers:
        return "-"
    return ",".join(f"{name}={hex_or_dash(value)}" for name, value in headers)


def record_line(partition, offset, timestamp, key, value, headers):
    # An empty key or value prints as nothing between two spaces; the
    # reader in cli.rs splits on single spaces, so this stays unambiguous.
    return f"{partition} {offset} {timestamp} {hex_or_dash(key)} {hex_or_dash(value)} {headers_text(headers)}"


def common_config(bootstrap):
    return {
        "bootstrap.servers": bootstrap,
        "socket.timeout.ms": 30000,
        "socket.connection.setup.timeout.ms": 10000,
        "error_cb": log_errors,
    }


def read(args):
    deadline = time.monotonic() + args.timeout
    consumer = Consumer(
        {
            **common_config(args.bootstrap),
            "group.id": f"{args.topic}-cli-interop-reader",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "error",
            "fetch.wait.max.ms": 200,
        }
    )
    consumer.assign(
        [TopicPartition(args.topic, p, OFFSET_BEGINNING) for p in range(args.partitions)]
    )
    lines = []
    while len(lines) < args.expect:
        if time.monotonic() >= deadline:
            fail(f"read {len(lines)} of {args.expect} records before the deadline")
        msg = consumer.poll(1.0)
        if msg is None:
            continue
        if msg.error() is not None:
            fail(f"consume error: {msg.error()}")
        _, timestamp = msg.timestamp()
        lines.append(
            (
                msg.partition(),
                msg.offset(),
                record_line(
                    msg.partition(),
                    msg.offset(),
                    timestamp,
                    msg.key(),
                    msg.value(),
                    msg.headers(),
                ),
            )
        )
    consumer.close()
    return lines


def make_record(index):
    """Keys repeat over 89 names; values hold separators, tabs, non-ASCII
    text and bytes that are not UTF-8, but never a newline (cli.rs reads
    `sluice consume` output line by line)."""
    key = f"ck{index % 89:02d}".encode()
    value = f"v{index:05d}:colon\ttab é ".encode() + bytes(
        b for b in ((index * 37 + j * 11) % 256 for j in range(index % 41)) if b != 0x0A
    )
    headers = []
    if index % 3 == 1:
        headers = [("idx", str(index).encode())]
    elif index % 3 == 2:
        headers = [("idx", str(index).encode()), ("bin", bytes([index % 256, 0, 255])), ("e", b"")]
    timestamp = 1_600_000_000_000 + index * 1000
    return key, value, headers, timestamp


def write(args):
    deadline = time.monotonic() + args.timeout
    producer = Producer(
        {
            **common_config(args.bootstrap),
            "linger.ms": 5,
            "partitioner": "murmur2_random",
            "message.timeout.ms": 60000,
        }
    )
    delivered = []
    errors = []

    # librdkafka's delivery reports do not carry the headers back, so the
    # line gets the ones that were sent.
    def on_delivery(err, msg, headers):
        if err is not None:
            errors.append(str(err))
        else:
            timestamp = msg.timestamp()[1]
            delivered.append(
                (
                    msg.partition(),
                    msg.offset(),
                    record_line(
                        msg.partition(),
                        msg.offset(),
                        timestamp,
                        msg.key(),
                        msg.value(),
                        headers,
                    ),
                )
            )

    for index in range(args.records):
        key, value, headers, timestamp = make_record(index)
        while True:
            try:
                producer.produce(
                    args.topic,
                    key=key,
                    value=value,
                    headers=headers,
                    timestamp=timestamp,
                    on_delivery=lambda err, msg, sent=headers: on_delivery(err, msg, sent),
                )
                break
            except BufferError:
                producer.poll(0.1)
                if time.monotonic() >= deadline:
                    fail("the producer's queue stayed full until the deadline")
        producer.poll(0)
    left = producer.flush(max(1.0, deadline - time.monotonic()))
    if left:
        fail(f"{left} records still undelivered after flush")
    if errors:
        fail(f"{len(errors)} delivery failures, first: {errors[0]}")
    return delivered


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["read", "write"])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--partitions", type=int, default=1, help="read: partitions to assign")
    parser.add_argument("--expect", type=int, default=0, help="read: records to wait for")
    parser.add_argument("--records", type=int, default=0, help="write: records to produce")
    parser.add_argument("--timeout", type=float, default=120.0, help="deadline in seconds")
    args = parser.parse_args()
    lines = read(args) if args.mode == "read" else write(args)
    for _, _, line in sorted(lines):
        print(line)
    sys.stdout.flush()


if __name__ == "__main__":
    try:
        main()
    except KafkaException as exc:
        fail(f"client error: {exc!r}")
