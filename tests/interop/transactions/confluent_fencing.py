#!/usr/bin/env python3
"""A confluent-kafka transactional producer fenced by a newer instance.

The first instance of a transactional id begins a transaction and writes
records to every partition (all acknowledged). A second instance with the
same transactional.id then runs init_transactions, which bumps the epoch
and aborts the first one's open transaction. The first instance's
commit_transaction must then fail with a fatal error (librdkafka's
_FENCED), and so must its next begin_transaction. The second instance
commits a transaction of its own. Read back from the beginning:
read_committed shows the second instance's records only, read_uncommitted
both instances' (the first one's were written, and hidden by the abort).

Prints one "confluent_fencing: OK ..." line, naming the error the fenced
commit raised, on success.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import confluent_kafka  # noqa: E402
from confluent_kafka import KafkaError, KafkaException, libversion  # noqa: E402

from confluent_common import (  # noqa: E402
    create_topic,
    produce_acknowledged,
    read_partitions,
    transactional_producer,
    wait_for_ends,
)
from txn_common import Deadline, check, fail, log  # noqa: E402

NAME = "confluent_fencing"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--records", type=int, default=30, help="records per instance")
    parser.add_argument("--timeout", type=float, default=50.0)
    return parser.parse_args()


def fenced_error(what, call):
    """Runs ``call``, which must raise a fatal error; returns the error."""
    try:
        call()
    except KafkaException as exc:
        error = exc.args[0]
        check(NAME, error.fatal(), f"{what} raised {error}, which is not fatal")
        check(
            NAME,
            error.code() == KafkaError._FENCED,
            f"{what} raised {error.name()} ({error}), not _FENCED",
        )
        return error
    fail(NAME, f"{what} succeeded although a newer instance had initialised")


def main():
    args = parse_args()
    deadline = Deadline(NAME, args.timeout)
    create_topic(NAME, args.bootstrap, args.topic, args.partitions, deadline)
    transactional_id = f"{args.topic}-txn"

    first = transactional_producer(NAME, args.bootstrap, transactional_id)
    first.init_transactions(min(30, deadline.remaining()))
    first.begin_transaction()
    zombie = [(i % args.partitions, f"first-{i:04d}".encode()) for i in range(args.records)]
    produce_acknowledged(first, args.topic, zombie)
    log(NAME, "the first instance wrote its records; starting the second")

    second = transactional_producer(NAME, args.bootstrap, transactional_id)
    second.init_transactions(min(30, deadline.remaining()))
    log(NAME, "the second instance initialised")

    commit_error = fenced_error(
        "the first instance's commit_transaction",
        lambda: first.commit_transaction(min(30, deadline.remaining())),
    )
    log(NAME, f"the first instance's commit failed: {commit_error}")
    fenced_error("the first instance's next begin_transaction", first.begin_transaction)

    second.begin_transaction()
    live = [(i % args.partitions, f"second-{i:04d}".encode()) for i in range(args.records)]
    produce_acknowledged(second, args.topic, live)
    second.commit_transaction(min(30, deadline.remaining()))

    # Each partition ends after the first instance's records, the marker
    # of their abort, the second's records and the marker of their commit
    # (markers come after EndTxn is answered: waited for, bounded).
    ends = {
        partition: sum(1 for p, _ in zombie + live if p == partition) + 2
        for partition in range(args.partitions)
    }
    wait_for_ends(NAME, args.bootstrap, args.topic, args.partitions, ends, deadline)
    committed_read, _ = read_partitions(
        NAME, args.bootstrap, args.topic, args.partitions, "read_committed", deadline
    )
    uncommitted_read, _ = read_partitions(
        NAME, args.bootstrap, args.topic, args.partitions, "read_uncommitted", deadline
    )
    for isolation, read, wanted in (
        ("read_committed", committed_read, live),
        ("read_uncommitted", uncommitted_read, zombie + live),
    ):
        for partition in range(args.partitions):
            got = [v for _, v in read[partition]]
            want = [v for p, v in wanted if p == partition]
            check(NAME, got == want, f"{isolation} partition {partition}: read {got}, wanted {want}")
    committed = sum(len(r) for r in committed_read.values())
    uncommitted = sum(len(r) for r in uncommitted_read.values())
    check(NAME, committed == len(live), f"read_committed shows {committed} records, wanted {len(live)}")
    print(
        f"{NAME}: OK the fenced commit failed with {commit_error.name()} "
        f"(fatal: {commit_error.fatal()}): read_committed {committed} read_uncommitted "
        f"{uncommitted} log_ends {[ends[p] for p in range(args.partitions)]} "
        f"(confluent-kafka {confluent_kafka.__version__}, librdkafka {libversion()[0]})",
        flush=True,
    )


if __name__ == "__main__":
    try:
        main()
    except KafkaException as exc:
        fail(NAME, f"client error: {exc!r}")
