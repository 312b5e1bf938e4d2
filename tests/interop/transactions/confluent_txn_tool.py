#!/usr/bin/env python3
"""confluent-kafka transactional steps a test drives from outside, one
process each, so that the test can kill a producer (SIGKILL) in the middle
of a transaction, or a broker under a running one.

Every record goes to partition ``i % --partitions``; the test reads what
each step printed on stdout, one line per event:

``open``      init_transactions, begin_transaction, then --records records
              ``<prefix>-<i>``, each acknowledged (``record P OFFSET VALUE``),
              then ``holding``; then the transaction stays open until the
              process is killed (it exits 1 after --max-seconds).
``commit``    init_transactions (which aborts what a killed instance of the
              same transactional id left open), one transaction of --records
              records, committed: ``record P OFFSET VALUE`` lines, then
              ``committed``.
``read``      reads every partition from the beginning at --isolation by
              manual assignment: ``record P OFFSET VALUE`` lines, then
              ``eof P OFFSET`` once all partitions reached their end
              (librdkafka's partition EOF: the last stable offset at
              read_committed), or, with --until VALUE, ``found VALUE`` as
              soon as that value was read.
``loop``      transactions until SIGTERM (or --max-seconds): transaction N
              writes ``t<N>-p<P>-r<J>`` (--per-partition records to each
              partition), waits for their acknowledgements, then commits,
              or aborts when N is a multiple of --abort-every. It prints
              ``commit N`` / ``abort N`` once the call returned; ``abort N
              ERROR`` for a transaction aborted after an abortable error;
              ``unknown N ERROR`` for one whose outcome a fatal error hid
              (a new instance then takes over: ``instance K``); and at the
              end ``done committed=C aborted=A unknown=U``. A retriable
              error of a commit or an abort is retried, as librdkafka asks.

Client errors go to stderr with a timestamp.
"""

import argparse
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from confluent_kafka import KafkaException  # noqa: E402

from confluent_common import (  # noqa: E402
    produce_acknowledged,
    read_partitions,
    transactional_producer,
)
from txn_common import Deadline, fail, log, say  # noqa: E402

NAME = "confluent_txn_tool"
# Bound on one commit or abort call; a timeout is retried.
END_TXN_TIMEOUT_S = 30


def producer(args, **extra):
    config = {"message.timeout.ms": 60000, "request.timeout.ms": 10000, **extra}
    if args.transaction_timeout_ms is not None:
        config["transaction.timeout.ms"] = args.transaction_timeout_ms
        # librdkafka wants a record's delivery to time out no later than
        # the transaction it is part of.
        config["message.timeout.ms"] = min(60000, args.transaction_timeout_ms)
    return transactional_producer(NAME, args.bootstrap, args.transactional_id, **config)


def numbered(args, prefix):
    return [(i % args.partitions, f"{prefix}-{i:04d}".encode()) for i in range(args.records)]


def run_open(args):
    instance = producer(args)
    instance.init_transactions(30)
    instance.begin_transaction()
    for partition, offset, value in produce_acknowledged(instance, args.topic, numbered(args, args.prefix)):
        say(f"record {partition} {offset} {value.decode()}")
    say("holding")
    deadline = time.monotonic() + args.max_seconds
    while time.monotonic() < deadline:
        instance.poll(0.5)
    fail(NAME, f"open: not killed within {args.max_seconds} s")


def run_commit(args):
    instance = producer(args)
    instance.init_transactions(30)
    instance.begin_transaction()
    acks = produce_acknowledged(instance, args.topic, numbered(args, args.prefix))
    instance.commit_transaction(30)
    for partition, offset, value in acks:
        say(f"record {partition} {offset} {value.decode()}")
    say("committed")


def run_read(args):
    until = args.until.encode() if args.until is not None else None
    read, eof = read_partitions(
        NAME,
        args.bootstrap,
        args.topic,
        args.partitions,
        args.isolation,
        Deadline(NAME, args.max_seconds),
        until=until,
    )
    for partition, records in sorted(read.items()):
        for offset, value in records:
            say(f"record {partition} {offset} {value.decode()}")
    if until is not None:
        say(f"found {args.until}")
    else:
        for partition, offset in sorted(eof.items()):
            say(f"eof {partition} {offset}")


class Loop:
    def __init__(self, args):
        self.args = args
        self.instances = 0
        self.counts = {"committed": 0, "aborted": 0, "unknown": 0}
        self.instance = None
        self.start_instance()

    def start_instance(self):
        """A new instance of the transactional id (after a fatal error)."""
        self.instances += 1
        self.instance = producer(self.args, **{"acks": "all", "retry.backoff.max.ms": 500})
        while True:
            try:
                self.instance.init_transactions(END_TXN_TIMEOUT_S)
                break
            except KafkaException as exc:
                error = exc.args[0]
                if not error.retriable():
                    raise
                log(NAME, f"init_transactions: {error}; retrying")
        say(f"instance {self.instances}")

    def end(self, number, commit):
        """Commits or aborts, retrying retriable errors; ``None`` once done,
        else the error that made the outcome something else."""
        call = self.instance.commit_transaction if commit else self.instance.abort_transaction
        while True:
            try:
                call(END_TXN_TIMEOUT_S)
                return None
            except KafkaException as exc:
                error = exc.args[0]
                if error.retriable():
                    log(NAME, f"transaction {number}: {'commit' if commit else 'abort'}: {error}; retrying")
                    continue
                return error

    def transaction(self, number):
        records = [
            (p, f"t{number:06d}-p{p}-r{j}".encode())
            for j in range(self.args.per_partition)
            for p in range(self.args.partitions)
        ]
        self.instance.begin_transaction()
        error = None
        try:
            produce_acknowledged(self.instance, self.args.topic, records)
        except KafkaException as exc:
            error = exc.args[0]
        if error is None:
            commit = number % self.args.abort_every != 0
            error = self.end(number, commit)
            if error is None:
                self.counts["committed" if commit else "aborted"] += 1
                say(f"{'commit' if commit else 'abort'} {number}")
                return
        if error.txn_requires_abort():
            log(NAME, f"transaction {number}: {error}; aborting")
            abort_error = self.end(number, False)
            if abort_error is None:
                self.counts["aborted"] += 1
                say(f"abort {number} {error}")
                return
            error = abort_error
        # Fatal, or an abort that failed: the outcome is the next instance's
        # to settle (its init_transactions ends what this one left open).
        self.counts["unknown"] += 1
        say(f"unknown {number} {error}")
        self.start_instance()

    def run(self, stopping):
        started = time.monotonic()
        number = 0
        while not stopping and time.monotonic() - started < self.args.max_seconds:
            self.transaction(number)
            number += 1
        self.instance.flush(10)
        c = self.counts
        say(f"done committed={c['committed']} aborted={c['aborted']} unknown={c['unknown']}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["open", "commit", "read", "loop"])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--transactional-id")
    parser.add_argument("--transaction-timeout-ms", type=int)
    parser.add_argument("--records", type=int, default=30)
    parser.add_argument("--prefix", default="rec")
    parser.add_argument("--isolation", choices=["read_committed", "read_uncommitted"])
    parser.add_argument("--until", help="read: stop once this value was read")
    parser.add_argument("--per-partition", type=int, default=2)
    parser.add_argument("--abort-every", type=int, default=3)
    parser.add_argument("--max-seconds", type=float, default=60.0)
    args = parser.parse_args()
    if args.step in ("open", "commit", "loop") and not args.transactional_id:
        parser.error(f"{args.step} needs --transactional-id")
    if args.step == "read" and not args.isolation:
        parser.error("read needs --isolation")

    if args.step == "open":
        run_open(args)
    elif args.step == "commit":
        run_commit(args)
    elif args.step == "read":
        run_read(args)
    else:
        stopping = []
        signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
        Loop(args).run(stopping)


if __name__ == "__main__":
    try:
        main()
    except KafkaException as exc:
        fail(NAME, f"client error: {exc!r}")
