#!/usr/bin/env python3
"""Committed and aborted transactions of confluent-kafka (librdkafka).

Creates a topic, runs the transactions of --plan with one transactional
producer (each writes to every partition, flushes, then commits or aborts),
then reads every partition from the beginning at read_committed and at
read_uncommitted (manual assignment, to librdkafka's partition EOF) and
checks with txn_common.check_plan_read: read_committed shows the committed
records only, read_uncommitted every record, each partition ends after its
records plus a marker per transaction (waited for, bounded: markers are
written after EndTxn is answered), and both reads end there. Prints one
"confluent_commit_abort: OK ..." line on success.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import confluent_kafka  # noqa: E402
from confluent_kafka import KafkaException, libversion  # noqa: E402

from confluent_common import (  # noqa: E402
    create_topic,
    produce_acknowledged,
    read_partitions,
    transactional_producer,
    wait_for_ends,
)
from txn_common import (  # noqa: E402
    Deadline,
    check,
    check_plan_read,
    fail,
    log,
    plan_args,
    plan_ends,
    plan_records,
    summary,
)

NAME = "confluent_commit_abort"


def main():
    args = plan_args(__doc__.splitlines()[0])
    deadline = Deadline(NAME, args.timeout)
    create_topic(NAME, args.bootstrap, args.topic, args.partitions, deadline)

    producer = transactional_producer(NAME, args.bootstrap, f"{args.topic}-txn")
    producer.init_transactions(min(30, deadline.remaining()))
    for txn, committed, records in plan_records(args.plan, args.partitions):
        producer.begin_transaction()
        produce_acknowledged(producer, args.topic, records)
        if committed:
            producer.commit_transaction(min(30, deadline.remaining()))
        else:
            producer.abort_transaction(min(30, deadline.remaining()))
        log(NAME, f"transaction {txn}: {'committed' if committed else 'aborted'} {len(records)} records")

    ends = plan_ends(args.plan, args.partitions)
    wait_for_ends(NAME, args.bootstrap, args.topic, args.partitions, ends, deadline)
    committed_read, committed_eof = read_partitions(
        NAME, args.bootstrap, args.topic, args.partitions, "read_committed", deadline
    )
    uncommitted_read, uncommitted_eof = read_partitions(
        NAME, args.bootstrap, args.topic, args.partitions, "read_uncommitted", deadline
    )
    result = check_plan_read(NAME, args.plan, args.partitions, committed_read, uncommitted_read)
    check(NAME, committed_eof == ends, f"read_committed EOF at {committed_eof}, log ends {ends}")
    check(NAME, uncommitted_eof == ends, f"read_uncommitted EOF at {uncommitted_eof}, log ends {ends}")
    print(
        f"{NAME}: OK {summary(result)} "
        f"(confluent-kafka {confluent_kafka.__version__}, librdkafka {libversion()[0]})",
        flush=True,
    )


if __name__ == "__main__":
    try:
        main()
    except KafkaException as exc:
        fail(NAME, f"client error: {exc!r}")
