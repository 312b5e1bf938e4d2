#!/usr/bin/env python3
"""Consume-transform-produce with confluent-kafka: every input record is
copied exactly once, though some transactions are aborted on purpose.

Fills an input topic (record i to partition i % partitions, value
``in-<i>``) with a plain idempotent producer, then runs a copier: a group
consumer at read_committed and a transactional producer. Each transaction
takes up to --batch records from one poll, writes ``copy-<i>`` for each to
the same partition of the output topic (and waits until they are
acknowledged), sends the consumer's positions with
``send_offsets_to_transaction(consumer.position(...),
consumer.consumer_group_metadata())`` and commits; every --abort-every'th
transaction aborts instead, after which the copier asks the group for its
committed offsets, checks they are those of the last commit (an aborted
transaction's offsets are never visible) and seeks back to them.

At the end it waits (bounded) until no transaction is open on the output
(last stable offset = high watermark on every partition), then checks:
- read_committed, each output partition holds the copies of its input
  partition's records, each once, in input order;
- read_uncommitted, it holds those plus every record of the aborted
  transactions (so they were written, and hidden only by their abort);
- the group's committed offsets, asked by a new consumer, are the input's
  log end offsets.

Prints one "confluent_copier: OK ..." line on success.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import confluent_kafka  # noqa: E402
from confluent_kafka import (  # noqa: E402
    OFFSET_BEGINNING,
    Consumer,
    KafkaException,
    Producer,
    TopicPartition,
    libversion,
)

from confluent_common import (  # noqa: E402
    client_config,
    create_topic,
    log_ends,
    produce_acknowledged,
    read_committed_member,
    read_partitions,
    send_copies,
    transactional_producer,
)
from txn_common import Deadline, check, fail, log  # noqa: E402

NAME = "confluent_copier"
# librdkafka's "no offset" position.
OFFSET_INVALID = -1001


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--input", required=True, help="input topic to create and fill")
    parser.add_argument("--output", required=True, help="output topic to create")
    parser.add_argument("--group", required=True, help="the copier's consumer group")
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--records", type=int, default=900)
    parser.add_argument("--batch", type=int, default=40, help="most records per transaction")
    parser.add_argument("--abort-every", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=50.0)
    return parser.parse_args()


def fill_input(args, deadline):
    producer = Producer(
        {
            **client_config(args.bootstrap, NAME),
            "enable.idempotence": True,
            "linger.ms": 5,
            "message.timeout.ms": 30000,
        }
    )
    records = [(i % args.partitions, f"in-{i:06d}".encode()) for i in range(args.records)]
    acks = produce_acknowledged(producer, args.input, records)
    ends = {p: 0 for p in range(args.partitions)}
    for partition, offset, _ in acks:
        ends[partition] = max(ends[partition], offset + 1)
    by_partition = {p: [v for q, v in records if q == p] for p in range(args.partitions)}
    return ends, by_partition


def committed_offsets(consumer, partitions, deadline):
    return {
        tp.partition: tp.offset
        for tp in consumer.committed(partitions, timeout=min(30, deadline.remaining()))
    }


class Copier:
    def __init__(self, args, deadline):
        self.args = args
        self.deadline = deadline
        self.consumer = read_committed_member(
            NAME, args.bootstrap, args.group, **{"session.timeout.ms": 10000}
        )
        self.producer = transactional_producer(NAME, args.bootstrap, f"{args.group}-copier")
        self.producer.init_transactions(min(30, deadline.remaining()))
        self.consumer.subscribe([args.input])
        # The offsets of the last commit, by input partition.
        self.committed = {p: OFFSET_INVALID for p in range(args.partitions)}
        self.transactions = {"committed": 0, "aborted": 0}
        self.copied = 0
        self.aborted_copies = 0

    def run(self):
        while self.copied < self.args.records:
            self.deadline.remaining()
            messages = self.consumer.consume(num_messages=self.args.batch, timeout=0.5)
            for message in messages:
                if message.error() is not None:
                    fail(NAME, f"consume error: {message.error()}")
            if messages:
                self.transaction(messages)
        check(
            NAME,
            self.copied == self.args.records,
            f"committed copies of {self.copied} records, the input holds {self.args.records}",
        )

    def transaction(self, messages):
        number = sum(self.transactions.values())
        # Every copy is acknowledged before the decision, so that an aborted
        # transaction's copies were written too.
        copies = [
            (m.partition(), m.key(), b"copy-" + m.value().removeprefix(b"in-")) for m in messages
        ]
        positions = send_copies(
            self.producer,
            self.consumer,
            self.args.output,
            copies,
            min(30, self.deadline.remaining()),
        )
        if (number + 1) % self.args.abort_every == 0:
            self.producer.abort_transaction(min(30, self.deadline.remaining()))
            self.transactions["aborted"] += 1
            self.aborted_copies += len(messages)
            self.rewind()
        else:
            self.producer.commit_transaction(min(30, self.deadline.remaining()))
            self.transactions["committed"] += 1
            self.copied += len(messages)
            for tp in positions:
                self.committed[tp.partition] = tp.offset
        log(
            NAME,
            f"transaction {number}: {len(messages)} records, "
            f"{'aborted' if (number + 1) % self.args.abort_every == 0 else 'committed'} "
            f"at positions { {tp.partition: tp.offset for tp in positions} }",
        )

    def rewind(self):
        """After an abort: the group's offsets are still the last commit's;
        the consumer goes back to them."""
        assignment = self.consumer.assignment()
        seen = committed_offsets(self.consumer, assignment, self.deadline)
        wanted = {tp.partition: self.committed[tp.partition] for tp in assignment}
        check(
            NAME,
            seen == wanted,
            f"after an abort the group's committed offsets are {seen}, "
            f"the last commit's were {wanted}",
        )
        for tp in assignment:
            offset = seen[tp.partition]
            self.consumer.seek(
                TopicPartition(tp.topic, tp.partition, offset if offset >= 0 else OFFSET_BEGINNING)
            )

    def close(self):
        self.consumer.close()
        self.producer.flush(10)


def wait_until_stable(args, deadline, within_s=15):
    """Waits until the output's last stable offsets are its high watermarks:
    the last commit's markers are written. Returns the high watermarks."""
    end = time.monotonic() + min(within_s, deadline.remaining())
    while True:
        high = log_ends(NAME, args.bootstrap, args.output, args.partitions, "read_uncommitted", deadline)
        stable = log_ends(NAME, args.bootstrap, args.output, args.partitions, "read_committed", deadline)
        if high == stable:
            return high
        if time.monotonic() >= end:
            fail(NAME, f"output: last stable offsets {stable} still behind high watermarks {high}")
        time.sleep(0.1)


def main():
    args = parse_args()
    deadline = Deadline(NAME, args.timeout)
    for topic in (args.input, args.output):
        create_topic(NAME, args.bootstrap, topic, args.partitions, deadline)
    input_ends, inputs = fill_input(args, deadline)
    log(NAME, f"input filled: log ends {input_ends}")

    copier = Copier(args, deadline)
    copier.run()
    copier.close()

    output_ends = wait_until_stable(args, deadline)
    committed_read, _ = read_partitions(
        NAME, args.bootstrap, args.output, args.partitions, "read_committed", deadline
    )
    uncommitted_read, _ = read_partitions(
        NAME, args.bootstrap, args.output, args.partitions, "read_uncommitted", deadline
    )
    for partition in range(args.partitions):
        wanted = [b"copy-" + v.removeprefix(b"in-") for v in inputs[partition]]
        got = [v for _, v in committed_read[partition]]
        if got != wanted:
            missing = [v for v in wanted if v not in got][:5]
            twice = sorted({v for v in got if got.count(v) > 1})[:5]
            extra = [v for v in got if v not in wanted][:5]
            fail(
                NAME,
                f"output partition {partition} at read_committed: {len(got)} records, wanted "
                f"{len(wanted)}; missing {missing}, twice {twice}, unexpected {extra}",
            )
    uncommitted = sum(len(r) for r in uncommitted_read.values())
    check(
        NAME,
        uncommitted == args.records + copier.aborted_copies,
        f"read_uncommitted shows {uncommitted} output records; {args.records} committed and "
        f"{copier.aborted_copies} aborted were written",
    )

    reader = Consumer({**client_config(args.bootstrap, NAME), "group.id": args.group})
    partitions = [TopicPartition(args.input, p) for p in range(args.partitions)]
    final = committed_offsets(reader, partitions, deadline)
    reader.close()
    check(
        NAME,
        final == input_ends,
        f"the group's committed offsets are {final}, the input's log ends {input_ends}",
    )

    print(
        f"{NAME}: OK {args.records} input records copied exactly once in "
        f"{sum(copier.transactions.values())} transactions ({copier.transactions['committed']} "
        f"committed, {copier.transactions['aborted']} aborted, {copier.aborted_copies} records "
        f"copied again after an abort): output read_committed {args.records} read_uncommitted "
        f"{uncommitted} log_ends {[output_ends[p] for p in range(args.partitions)]}; committed "
        f"offsets {[final[p] for p in range(args.partitions)]} = input log ends "
        f"(confluent-kafka {confluent_kafka.__version__}, librdkafka {libversion()[0]})",
        flush=True,
    )


if __name__ == "__main__":
    try:
        main()
    except KafkaException as exc:
        fail(NAME, f"client error: {exc!r}")
