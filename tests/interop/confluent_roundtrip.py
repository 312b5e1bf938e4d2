#!/usr/bin/env python3
"""Round trip through a Kafka broker with confluent-kafka (librdkafka).

Creates a 3-partition topic with the admin API, produces keyed records with
headers and explicit timestamps, then reads every partition from the
beginning by manual assignment (no group membership: the group id is only
there because librdkafka's assign() needs one, and nothing is committed) and
checks the result with roundtrip_common.check_roundtrip. Prints one
"confluent_roundtrip: OK ..." line on success; exits 1 with the mismatches
otherwise.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import confluent_kafka  # noqa: E402
from confluent_kafka import (  # noqa: E402
    OFFSET_BEGINNING,
    TIMESTAMP_CREATE_TIME,
    Consumer,
    KafkaException,
    Producer,
    TopicPartition,
    libversion,
)
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

from roundtrip_common import (  # noqa: E402
    PARTITIONS,
    Deadline,
    Received,
    check_roundtrip,
    fail,
    make_records,
    parse_args,
)

NAME = "confluent_roundtrip"


def log_errors(err):
    print(f"{NAME}: client error: {err}", file=sys.stderr, flush=True)


def common_config(bootstrap):
    return {
        "bootstrap.servers": bootstrap,
        "socket.timeout.ms": 30000,
        "socket.connection.setup.timeout.ms": 10000,
        "error_cb": log_errors,
    }


def create_topic(bootstrap, topic, deadline):
    admin = AdminClient(common_config(bootstrap))
    futures = admin.create_topics(
        [NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)],
        operation_timeout=30,
        request_timeout=30,
    )
    try:
        futures[topic].result(timeout=min(60, deadline.remaining()))
    except KafkaException as exc:
        fail(NAME, f"CreateTopics({topic}, {PARTITIONS} partitions) failed: {exc}")
    # Wait (bounded) until the metadata shows every partition with a leader.
    last = None
    while not deadline.expired():
        try:
            metadata = admin.list_topics(topic=topic, timeout=min(10, deadline.remaining()))
        except KafkaException as exc:
            last = f"metadata request failed: {exc}"
            continue
        described = metadata.topics.get(topic)
        if described is None or described.error is not None:
            last = f"topic not in metadata ({described.error if described else 'absent'})"
        elif len(described.partitions) != PARTITIONS:
            last = f"metadata shows {len(described.partitions)} partitions"
        elif any(p.leader < 0 or p.error is not None for p in described.partitions.values()):
            last = "a partition has no leader"
        else:
            return
    fail(NAME, f"topic {topic} never became usable: {last}")


def main():
    args = parse_args(__doc__.splitlines()[0])
    deadline = Deadline(NAME, args.timeout)
    records = make_records(args.records)

    create_topic(args.bootstrap, args.topic, deadline)

    # Produce, remembering where each record was acknowledged.
    producer = Producer(
        {
            **common_config(args.bootstrap),
            "linger.ms": 5,
            "message.timeout.ms": 60000,
            "request.timeout.ms": 30000,
        }
    )
    acks = {}
    errors = []

    def delivered(index, err, msg):
        if err is not None:
            errors.append(f"record {index}: delivery failed: {err}")
        else:
            acks[index] = (msg.partition(), msg.offset())

    for record in records:
        while True:
            try:
                producer.produce(
                    args.topic,
                    key=record.key,
                    value=record.value,
                    headers=record.headers,
                    timestamp=record.timestamp,
                    on_delivery=lambda err, msg, i=record.index: delivered(i, err, msg),
                )
                break
            except BufferError:
                producer.poll(0.1)
                deadline.remaining()
        producer.poll(0)
    left = producer.flush(min(90, deadline.remaining()))
    if left:
        fail(NAME, f"{left} records still undelivered after flush")
    if errors:
        fail(NAME, f"{len(errors)} delivery failures, first: {errors[0]}")

    # Read back by manual assignment from the beginning of every partition.
    consumer = Consumer(
        {
            **common_config(args.bootstrap),
            "group.id": f"{args.topic}-reader",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "error",
            "fetch.wait.max.ms": 200,
        }
    )
    start_offsets = {}
    end_offsets = {}
    for partition in range(PARTITIONS):
        try:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(args.topic, partition), timeout=min(30, deadline.remaining())
            )
        except KafkaException as exc:
            fail(NAME, f"ListOffsets for partition {partition} failed: {exc}")
        start_offsets[partition] = low
        end_offsets[partition] = high
    consumer.assign([TopicPartition(args.topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])

    received = {p: [] for p in range(PARTITIONS)}
    expected = sum(end_offsets.values())
    total = 0
    while total < expected:
        if deadline.expired():
            counts = {p: len(r) for p, r in received.items()}
            fail(NAME, f"read only {counts} of end offsets {end_offsets} before the deadline")
        msg = consumer.poll(1.0)
        if msg is None:
            continue
        if msg.error() is not None:
            fail(NAME, f"consume error: {msg.error()}")
        timestamp_type, timestamp = msg.timestamp()
        received[msg.partition()].append(
            Received(
                partition=msg.partition(),
                offset=msg.offset(),
                key=msg.key(),
                value=msg.value(),
                headers=[(k, v) for k, v in (msg.headers() or [])],
                timestamp=timestamp,
                create_time=timestamp_type == TIMESTAMP_CREATE_TIME,
            )
        )
        total += 1
    consumer.close()

    counts = check_roundtrip(NAME, records, acks, received, end_offsets, start_offsets)
    print(
        f"{NAME}: OK {len(records)} records over {PARTITIONS} partitions {counts} "
        f"(confluent-kafka {confluent_kafka.__version__}, librdkafka {libversion()[0]})",
        flush=True,
    )


if __name__ == "__main__":
    try:
        main()
    except KafkaException as exc:
        fail(NAME, f"client error: {exc!r}")
