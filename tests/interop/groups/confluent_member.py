#!/usr/bin/env python3
"""One confluent-kafka group member, driven by confluent_group.py.

Checks nothing itself: it subscribes to a topic in a group (auto-commit on)
and reports what happens as JSON lines on stdout, one per event:
``subscribed``, ``assign``/``revoke``/``lost`` (with the partitions concerned and the ones it
owns afterwards), ``rec`` (partition, offset and record number of each
record consumed), ``error`` (a client or consume error), ``state`` (answer to
a ``commit`` command) and ``closed``. It reads commands from stdin, one per
line: ``commit`` commits synchronously and reports positions and committed
offsets of its partitions; ``close`` closes the consumer (which commits and
sends LeaveGroup) and exits. End of stdin counts as ``close``.
"""

import argparse
import json
import os
import queue
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from confluent_kafka import Consumer, KafkaError, KafkaException  # noqa: E402

from group_common import index_of  # noqa: E402

_out_lock = threading.Lock()


def emit(event, **fields):
    with _out_lock:
        sys.stdout.write(json.dumps({"ev": event, **fields}) + "\n")
        sys.stdout.flush()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--session-timeout-ms", type=int, required=True)
    parser.add_argument("--assignor", default="range")
    args = parser.parse_args()

    owned = set()

    def on_assign(consumer, partitions):
        parts = sorted(tp.partition for tp in partitions)
        owned.update(parts)
        emit("assign", parts=parts, owned=sorted(owned))

    def on_revoke(consumer, partitions):
        parts = sorted(tp.partition for tp in partitions)
        owned.difference_update(parts)
        emit("revoke", parts=parts, owned=sorted(owned))

    def on_lost(consumer, partitions):
        parts = sorted(tp.partition for tp in partitions)
        owned.difference_update(parts)
        emit("lost", parts=parts, owned=sorted(owned))

    def on_error(err):
        emit("error", where="client", msg=str(err))

    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            "session.timeout.ms": args.session_timeout_ms,
            "heartbeat.interval.ms": 1000,
            "partition.assignment.strategy": args.assignor,
            "enable.auto.commit": True,
            "auto.commit.interval.ms": 1000,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 100,
            "socket.connection.setup.timeout.ms": 10000,
            "error_cb": on_error,
        }
    )
    consumer.subscribe([args.topic], on_assign=on_assign, on_revoke=on_revoke, on_lost=on_lost)
    emit("subscribed", assignor=args.assignor)

    commands = queue.Queue()

    def read_commands():
        for line in sys.stdin:
            commands.put(line.strip())
        commands.put("close")

    threading.Thread(target=read_commands, daemon=True).start()

    while True:
        try:
            command = commands.get_nowait()
        except queue.Empty:
            command = None
        if command == "close":
            consumer.close()
            emit("closed")
            return
        if command == "commit":
            report_state(consumer, args.topic)
        msg = consumer.poll(0.1)
        if msg is None:
            continue
        if msg.error() is not None:
            emit("error", where="consume", msg=str(msg.error()))
            continue
        emit("rec", p=msg.partition(), o=msg.offset(), i=index_of(msg.value()))


def report_state(consumer, topic):
    """Commits synchronously, then reports positions and committed offsets."""
    assignment = consumer.assignment()
    positions = {tp.partition: tp.offset for tp in consumer.position(assignment)}
    commit_error = None
    try:
        consumer.commit(asynchronous=False)
    except KafkaException as exc:
        err = exc.args[0]
        # Nothing consumed since the last (auto-)commit: nothing to send.
        if err.code() != KafkaError._NO_OFFSET:
            commit_error = str(err)
    try:
        committed = {tp.partition: tp.offset for tp in consumer.committed(assignment, timeout=10)}
    except KafkaException as exc:
        committed = None
        commit_error = (commit_error or "") + f" committed(): {exc.args[0]}"
    emit("state", positions=positions, committed=committed, commit_error=commit_error)


if __name__ == "__main__":
    main()
