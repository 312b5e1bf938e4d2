#!/usr/bin/env python3
"""Round trip through a Kafka broker with kafka-python (a pure-Python client).

Creates a 3-partition topic with the admin API, produces keyed records with
headers and explicit timestamps (with kafka-python's default settings, which
include idempotence), then reads every partition from the beginning by
manual assignment without a consumer group and checks the result with
roundtrip_common.check_roundtrip. Prints one "kafka_python_roundtrip: OK ..."
line on success; exits 1 with the mismatches otherwise.
"""

import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import kafka  # noqa: E402
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition  # noqa: E402
from kafka.errors import KafkaError  # noqa: E402

from roundtrip_common import (  # noqa: E402
    PARTITIONS,
    Deadline,
    Received,
    check_roundtrip,
    fail,
    make_records,
    parse_args,
)

NAME = "kafka_python_roundtrip"
CREATE_TIME = 0


def create_topic(bootstrap, topic, deadline):
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap,
        request_timeout_ms=30000,
        client_id=NAME,
    )
    try:
        admin.create_topics(
            {topic: {"num_partitions": PARTITIONS, "replication_factor": 1}},
            timeout_ms=30000,
        )
        admin.wait_for_topics([topic], timeout_ms=int(min(60, deadline.remaining()) * 1000))
        described = admin.describe_topics([topic])
    except KafkaError as exc:
        fail(NAME, f"creating {topic} with {PARTITIONS} partitions failed: {exc!r}")
    finally:
        admin.close()
    partitions = described[0].get("partitions", []) if described else []
    if len(partitions) != PARTITIONS:
        fail(NAME, f"{topic} was created with {len(partitions)} partitions, asked for {PARTITIONS}")


def main():
    args = parse_args(__doc__.splitlines()[0])
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    deadline = Deadline(NAME, args.timeout)
    records = make_records(args.records)

    create_topic(args.bootstrap, args.topic, deadline)

    # Produce, remembering where each record was acknowledged.
    producer = KafkaProducer(
        bootstrap_servers=args.bootstrap,
        client_id=NAME,
        linger_ms=5,
        request_timeout_ms=30000,
        delivery_timeout_ms=60000,
        max_block_ms=30000,
    )
    futures = []
    for record in records:
        futures.append(
            producer.send(
                args.topic,
                key=record.key,
                value=record.value,
                headers=record.headers,
                timestamp_ms=record.timestamp,
            )
        )
    producer.flush(timeout=min(90, deadline.remaining()))
    acks = {}
    for record, future in zip(records, futures):
        try:
            metadata = future.get(timeout=max(1, min(30, deadline.remaining())))
        except KafkaError as exc:
            fail(NAME, f"record {record.index}: delivery failed: {exc!r}")
        acks[record.index] = (metadata.partition, metadata.offset)
    producer.close(timeout=10)

    # Read back by manual assignment, without a group.
    consumer = KafkaConsumer(
        bootstrap_servers=args.bootstrap,
        client_id=NAME,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="none",
        request_timeout_ms=30000,
        fetch_max_wait_ms=200,
    )
    partitions = [TopicPartition(args.topic, p) for p in range(PARTITIONS)]
    consumer.assign(partitions)
    try:
        start_offsets = {
            tp.partition: offset
            for tp, offset in consumer.beginning_offsets(partitions, timeout_ms=30000).items()
        }
        end_offsets = {
            tp.partition: offset
            for tp, offset in consumer.end_offsets(partitions, timeout_ms=30000).items()
        }
    except KafkaError as exc:
        fail(NAME, f"ListOffsets failed: {exc!r}")
    consumer.seek_to_beginning(*partitions)

    received = {p: [] for p in range(PARTITIONS)}
    expected = sum(end_offsets.values())
    total = 0
    while total < expected:
        if deadline.expired():
            counts = {p: len(r) for p, r in received.items()}
            fail(NAME, f"read only {counts} of end offsets {end_offsets} before the deadline")
        try:
            batches = consumer.poll(timeout_ms=1000)
        except KafkaError as exc:
            fail(NAME, f"consume error: {exc!r}")
        for tp, messages in batches.items():
            for msg in messages:
                received[tp.partition].append(
                    Received(
                        partition=msg.partition,
                        offset=msg.offset,
                        key=msg.key,
                        value=msg.value,
                        headers=[(k, v) for k, v in (msg.headers or [])],
                        timestamp=msg.timestamp,
                        create_time=msg.timestamp_type == CREATE_TIME,
                    )
                )
                total += 1
    consumer.close()

    counts = check_roundtrip(NAME, records, acks, received, end_offsets, start_offsets)
    print(
        f"{NAME}: OK {len(records)} records over {PARTITIONS} partitions {counts} "
        f"(kafka-python {kafka.__version__})",
        flush=True,
    )


if __name__ == "__main__":
    try:
        main()
    except KafkaError as exc:
        fail(NAME, f"client error: {exc!r}")
