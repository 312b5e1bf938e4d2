#!/usr/bin/env python3
"""Committed and aborted transactions of kafka-python (a pure-Python client).

Creates a topic, runs the transactions of --plan with one transactional
producer (each writes to every partition, waits for every acknowledgement,
then commits or aborts), waits (bounded) until the log end offsets and the
last stable offsets reach the records plus a marker per transaction, then
reads every partition from the beginning at read_committed and at
read_uncommitted by manual assignment, each until its position reaches the
log end, and checks with txn_common.check_plan_read. Prints one
"kafka_python_commit_abort: OK ..." line on success.
"""

import logging
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import kafka  # noqa: E402
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition  # noqa: E402
from kafka.errors import KafkaError  # noqa: E402

from txn_common import (  # noqa: E402
    Deadline,
    check_plan_read,
    fail,
    log,
    plan_args,
    plan_ends,
    plan_records,
    summary,
)

NAME = "kafka_python_commit_abort"


def create_topic(bootstrap, topic, partitions, deadline):
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30000, client_id=NAME)
    try:
        admin.create_topics(
            {topic: {"num_partitions": partitions, "replication_factor": 1}}, timeout_ms=30000
        )
        admin.wait_for_topics([topic], timeout_ms=int(min(30, deadline.remaining()) * 1000))
    except KafkaError as exc:
        fail(NAME, f"creating {topic} with {partitions} partitions failed: {exc!r}")
    finally:
        admin.close()


def consumer(bootstrap, isolation):
    return KafkaConsumer(
        bootstrap_servers=bootstrap,
        client_id=f"{NAME}-{isolation}",
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="none",
        isolation_level=isolation,
        request_timeout_ms=30000,
        fetch_max_wait_ms=100,
    )


def wait_for_ends(bootstrap, topic, partitions, wanted, deadline, within_s=15):
    """Waits until end_offsets at both isolation levels (the high watermark
    and the last stable offset) are ``wanted`` on every partition."""
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    readers = {iso: consumer(bootstrap, iso) for iso in ("read_uncommitted", "read_committed")}
    end = time.monotonic() + min(within_s, deadline.remaining())
    try:
        while True:
            seen = {
                iso: {tp.partition: o for tp, o in c.end_offsets(tps, timeout_ms=10000).items()}
                for iso, c in readers.items()
            }
            if all(ends == wanted for ends in seen.values()):
                return
            if time.monotonic() >= end:
                fail(NAME, f"end offsets {seen} did not reach {wanted} within {within_s} s")
            time.sleep(0.1)
    finally:
        for c in readers.values():
            c.close()


def read_partitions(bootstrap, topic, partitions, isolation, ends, deadline):
    """Reads every partition from offset 0 until the consumer's position
    reaches ``ends`` (positions move past markers and, at read_committed,
    past aborted records)."""
    reader = consumer(bootstrap, isolation)
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    reader.assign(tps)
    reader.seek_to_beginning(*tps)
    read = {p: [] for p in range(partitions)}
    try:
        while any(reader.position(tp) < ends[tp.partition] for tp in tps):
            if deadline.expired():
                positions = {tp.partition: reader.position(tp) for tp in tps}
                fail(NAME, f"{isolation}: positions {positions}, log ends {ends}, at the deadline")
            for tp, messages in reader.poll(timeout_ms=500).items():
                read[tp.partition].extend((m.offset, m.value) for m in messages)
        return read
    finally:
        reader.close()


def main():
    args = plan_args(__doc__.splitlines()[0])
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    deadline = Deadline(NAME, args.timeout)
    create_topic(args.bootstrap, args.topic, args.partitions, deadline)

    producer = KafkaProducer(
        bootstrap_servers=args.bootstrap,
        client_id=NAME,
        transactional_id=f"{args.topic}-txn",
        linger_ms=5,
        request_timeout_ms=10000,
        delivery_timeout_ms=30000,
        max_block_ms=30000,
    )
    producer.init_transactions()
    for txn, committed, records in plan_records(args.plan, args.partitions):
        producer.begin_transaction()
        futures = [
            producer.send(args.topic, key=value, value=value, partition=partition)
            for partition, value in records
        ]
        producer.flush(timeout=min(30, deadline.remaining()))
        for future in futures:
            future.get(timeout=max(1, min(30, deadline.remaining())))
        if committed:
            producer.commit_transaction()
        else:
            producer.abort_transaction()
        log(NAME, f"transaction {txn}: {'committed' if committed else 'aborted'} {len(records)} records")
    producer.close(timeout=10)

    ends = plan_ends(args.plan, args.partitions)
    wait_for_ends(args.bootstrap, args.topic, args.partitions, ends, deadline)
    committed_read = read_partitions(
        args.bootstrap, args.topic, args.partitions, "read_committed", ends, deadline
    )
    uncommitted_read = read_partitions(
        args.bootstrap, args.topic, args.partitions, "read_uncommitted", ends, deadline
    )
    result = check_plan_read(NAME, args.plan, args.partitions, committed_read, uncommitted_read)
    print(f"{NAME}: OK {summary(result)} (kafka-python {kafka.__version__})", flush=True)


if __name__ == "__main__":
    try:
        main()
    except KafkaError as exc:
        fail(NAME, f"client error: {exc!r}")
