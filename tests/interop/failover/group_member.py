#!/usr/bin/env python3
"""A consumer group member that consumes and commits until SIGTERM.

For the failover tests (tests/tests/cluster_failover.rs), with
confluent-kafka or kafka-python (--client). It subscribes to a topic in a
group, reads from the earliest offset where nothing is committed, and after
each poll that returned records (at most every --commit-interval-ms)
commits synchronously, with explicit offsets, the position after the last
record it read of each partition. It checks nothing itself and reports on
stdout, one line each:

    assigned P,P,...                 its partitions after a rebalance
    rec PARTITION OFFSET VALUE       a record read
    commit ok P:OFFSET,P:OFFSET,...  a commit the coordinator acknowledged
    commit err ERROR                 a commit that failed (it tries again
                                     with the next one)

On SIGTERM it commits what it read once more, closes the consumer (which
leaves the group), prints ``closed`` and exits 0. Client errors go to
stderr.
"""

import argparse
import signal
import sys
import time

SESSION_TIMEOUT_MS = 10000
HEARTBEAT_INTERVAL_MS = 1000
# How long one poll may block, in seconds.
POLL_S = 0.2
# kafka-python polls longer: a join it starts within a poll must finish
# within that poll (see tests/interop/groups/kafka_python_group.py).
KAFKA_PYTHON_POLL_MS = 1000
# Records handed over by one poll at most (so commits keep their pace).
RECORDS_PER_POLL_MAX = 500
# Bound on one synchronous commit, in seconds.
COMMIT_S = 10


def log(message):
    print(f"[{time.monotonic():.3f}] group_member: {message}", file=sys.stderr, flush=True)


def emit(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Confluent:
    """confluent-kafka (librdkafka)."""

    def __init__(self, args):
        from confluent_kafka import Consumer

        self.consumer = Consumer(
            {
                "bootstrap.servers": args.bootstrap,
                "group.id": args.group,
                "session.timeout.ms": SESSION_TIMEOUT_MS,
                "heartbeat.interval.ms": HEARTBEAT_INTERVAL_MS,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 100,
                "socket.connection.setup.timeout.ms": 5000,
                "reconnect.backoff.max.ms": 1000,
                "error_cb": lambda err: log(f"client error: {err}"),
            }
        )
        self.consumer.subscribe(
            [args.topic],
            on_assign=lambda _, parts: emit_assigned(parts),
        )

    def poll(self):
        """The records of one poll, as (partition, offset, value)."""
        records = []
        msg = self.consumer.poll(POLL_S)
        while msg is not None:
            if msg.error() is not None:
                log(f"consume error: {msg.error()}")
            else:
                records.append((msg.partition(), msg.offset(), msg.value().decode()))
            if len(records) >= RECORDS_PER_POLL_MAX:
                break
            msg = self.consumer.poll(0)
        return records

    def commit(self, topic, offsets):
        from confluent_kafka import TopicPartition

        parts = [TopicPartition(topic, p, o) for p, o in sorted(offsets.items())]
        result = self.consumer.commit(offsets=parts, asynchronous=False)
        errors = [f"{tp.partition}: {tp.error}" for tp in result if tp.error is not None]
        if errors:
            raise RuntimeError(f"partition errors {errors}")

    def close(self):
        self.consumer.close()


class KafkaPython:
    """kafka-python."""

    def __init__(self, args):
        from kafka import KafkaConsumer
        from kafka.consumer.subscription_state import ConsumerRebalanceListener

        class Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):
                pass

            def on_partitions_assigned(self, assigned):
                emit_assigned(assigned)

        self.consumer = KafkaConsumer(
            bootstrap_servers=args.bootstrap.split(","),
            group_id=args.group,
            client_id="failover-group-member",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            session_timeout_ms=SESSION_TIMEOUT_MS,
            heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
            fetch_max_wait_ms=100,
            request_timeout_ms=15000,
            reconnect_backoff_max_ms=1000,
        )
        # Knowing the topic's partitions before joining keeps clear of the
        # same kafka-python bug.
        self.consumer.partitions_for_topic(args.topic)
        self.consumer.subscribe([args.topic], listener=Listener())

    def poll(self):
        batch = self.consumer.poll(timeout_ms=KAFKA_PYTHON_POLL_MS, max_records=RECORDS_PER_POLL_MAX)
        return [
            (rec.partition, rec.offset, rec.value.decode())
            for records in batch.values()
            for rec in records
        ]

    def commit(self, topic, offsets):
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        self.consumer.commit(
            {TopicPartition(topic, p): OffsetAndMetadata(o, "", -1) for p, o in offsets.items()},
            timeout_ms=COMMIT_S * 1000,
        )

    def close(self):
        self.consumer.close()


def emit_assigned(parts):
    emit("assigned " + ",".join(str(tp.partition) for tp in sorted(parts, key=lambda t: t.partition)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--client", required=True, choices=["confluent", "kafka-python"])
    parser.add_argument("--bootstrap", required=True, help="HOST:PORT,... of the brokers")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--commit-interval-ms", type=int, default=200)
    parser.add_argument("--max-seconds", type=float, default=150.0)
    args = parser.parse_args()

    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    member = Confluent(args) if args.client == "confluent" else KafkaPython(args)
    log(f"{args.client} member of {args.group} subscribed to {args.topic}")

    read = {}  # partition -> the offset after the last record read
    committed = {}
    last_commit = 0.0

    def commit():
        nonlocal last_commit
        last_commit = time.monotonic()
        pending = {p: o for p, o in read.items() if committed.get(p) != o}
        if not pending:
            return
        try:
            member.commit(args.topic, pending)
        except Exception as exc:  # noqa: BLE001 - every failure is reported the same way
            emit(f"commit err {type(exc).__name__}: {exc}".replace("\n", " "))
            return
        committed.update(pending)
        emit("commit ok " + ",".join(f"{p}:{o}" for p, o in sorted(pending.items())))

    started = time.monotonic()
    while not stopping and time.monotonic() - started < args.max_seconds:
        for partition, offset, value in member.poll():
            emit(f"rec {partition} {offset} {value}")
            read[partition] = offset + 1
        if time.monotonic() - last_commit >= args.commit_interval_ms / 1000:
            commit()
    commit()
    member.close()
    emit("closed")


if __name__ == "__main__":
    main()
