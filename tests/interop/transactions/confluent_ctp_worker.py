#!/usr/bin/env python3
"""A confluent-kafka consume-transform-produce worker that a test kills and
restarts, one process per instance, plus the step that fills its input.

``fill``  creates the input and output topics (--partitions each, with
          --replication replicas) and writes --records records to the input,
          round robin: the j-th record of partition P has key and value
          ``in-P-J`` (J zero-padded), and must be acknowledged at offset J.
          Prints ``filled P END`` for each partition.
``work``  one instance of the worker: a transactional producer with the
          stable --transactional-id (its init_transactions ends whatever a
          killed instance left open) and a member of --group reading the
          input at read_committed (with --static-member, under a
          group.instance.id derived from the transactional id, so that a
          restart takes the dead instance's place at once). Each
          transaction copies one consume() batch of at most --batch records:
          for an input record at P/O it writes ``copy P/O <input value>``,
          keyed as the input, to partition P of the output, waits until
          every copy is acknowledged, adds the consumer's positions with
          send_offsets_to_transaction and commits, then prints ``commit N
          RECORDS P:OFFSET,...`` (the positions it committed). With
          --hold-at N, transaction N is left open once its copies are
          acknowledged and its offsets sent: ``holding N RECORDS
          P:OFFSET,...`` (the positions sent), then nothing until the
          process is killed. The worker ends when the group's committed
          offsets are the input's ends: ``done TRANSACTIONS RECORDS``.

Numbers count the transactions of one instance from 0. Errors are fatal:
the test expects none, so the worker does not try to recover from one.
Client errors go to stderr with a timestamp.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from confluent_kafka import KafkaException, Producer, TopicPartition  # noqa: E402

from confluent_common import (  # noqa: E402
    client_config,
    create_topic,
    produce_acknowledged,
    read_committed_member,
    send_copies,
    transactional_producer,
)
from txn_common import Deadline, check, fail, log, say  # noqa: E402

NAME = "confluent_ctp_worker"
# Bound on one blocking client call (init, send offsets, commit, a fetch
# of committed offsets).
CALL_TIMEOUT_S = 30
# How long one consume() waits for a batch to fill up.
CONSUME_WAIT_S = 0.2


def run_fill(args):
    deadline = Deadline(NAME, args.timeout)
    for topic in (args.input, args.output):
        create_topic(NAME, args.bootstrap, topic, args.partitions, deadline, args.replication)
    producer = Producer(
        {
            **client_config(args.bootstrap, NAME),
            "enable.idempotence": True,
            "linger.ms": 20,
            "message.timeout.ms": 60000,
        }
    )
    per_partition = [
        args.records // args.partitions + (p < args.records % args.partitions)
        for p in range(args.partitions)
    ]
    width = len(str(max(per_partition)))
    records = [
        (p, f"in-{p}-{j:0{width}d}".encode())
        for j in range(max(per_partition))
        for p in range(args.partitions)
        if j < per_partition[p]
    ]
    acks = produce_acknowledged(producer, args.input, records)
    misplaced = [
        (value, partition, offset)
        for partition, offset, value in acks
        if value != f"in-{partition}-{offset:0{width}d}".encode()
    ]
    check(NAME, not misplaced, f"records not at their own offsets: {misplaced[:5]}")
    for partition in range(args.partitions):
        say(f"filled {partition} {per_partition[partition]}")


class Worker:
    def __init__(self, args):
        self.args = args
        self.deadline = Deadline(NAME, args.timeout)
        self.producer = transactional_producer(NAME, args.bootstrap, args.transactional_id)
        self.producer.init_transactions(CALL_TIMEOUT_S)
        # The shortest session the broker allows: a killed dynamic member
        # holds its partitions until it expires.
        membership = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}
        if args.static_member:
            membership["group.instance.id"] = f"{args.transactional_id}-member"
        self.consumer = read_committed_member(NAME, args.bootstrap, args.group, **membership)
        self.partitions = [TopicPartition(args.input, p) for p in range(args.partitions)]
        self.ends = {
            tp.partition: self.consumer.get_watermark_offsets(tp, timeout=CALL_TIMEOUT_S)[1]
            for tp in self.partitions
        }
        log(NAME, f"input ends {self.ends}")
        self.consumer.subscribe([args.input])
        self.transactions = 0
        self.records = 0

    def run(self):
        while True:
            self.deadline.remaining()
            messages = self.consumer.consume(num_messages=self.args.batch, timeout=CONSUME_WAIT_S)
            for message in messages:
                if message.error() is not None:
                    fail(NAME, f"consume error: {message.error()}")
            if messages:
                self.transaction(messages)
            elif self.finished():
                break
        self.consumer.close()
        say(f"done {self.transactions} {self.records}")

    def finished(self):
        """Whether the group's committed offsets are the input's ends; asked
        when a consume() brought nothing."""
        try:
            committed = self.consumer.committed(self.partitions, timeout=CALL_TIMEOUT_S)
        except KafkaException as exc:
            if exc.args[0].retriable():
                log(NAME, f"committed offsets: {exc.args[0]}; asking again")
                return False
            raise
        return {tp.partition: tp.offset for tp in committed} == self.ends

    def transaction(self, messages):
        number = self.transactions
        copies = [
            (
                m.partition(),
                m.key(),
                f"copy {m.partition()}/{m.offset()} ".encode() + m.value(),
            )
            for m in messages
        ]
        positions = send_copies(
            self.producer, self.consumer, self.args.output, copies, CALL_TIMEOUT_S
        )
        by_partition = sorted(positions, key=lambda tp: tp.partition)
        sent = ",".join(f"{tp.partition}:{tp.offset}" for tp in by_partition)
        if number == self.args.hold_at:
            say(f"holding {number} {len(messages)} {sent}")
            self.hold()
        self.producer.commit_transaction(CALL_TIMEOUT_S)
        self.transactions += 1
        self.records += len(messages)
        say(f"commit {number} {len(messages)} {sent}")

    def hold(self):
        """Keeps the transaction open (serving the clients' callbacks) until
        the process is killed."""
        while not self.deadline.expired():
            self.producer.poll(0.1)
        fail(NAME, f"held a transaction open for {self.args.timeout:g} s without being killed")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["fill", "work"])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--replication", type=int, default=1, help="fill: replicas per partition")
    parser.add_argument("--records", type=int, default=100_000, help="fill: input records")
    parser.add_argument("--group")
    parser.add_argument("--transactional-id")
    parser.add_argument("--static-member", action="store_true")
    parser.add_argument("--batch", type=int, default=1000, help="most records per transaction")
    parser.add_argument("--hold-at", type=int, help="the transaction to leave open")
    parser.add_argument("--timeout", type=float, default=60.0, help="overall deadline, seconds")
    args = parser.parse_args()
    if args.step == "work" and not (args.group and args.transactional_id):
        parser.error("work needs --group and --transactional-id")
    if args.step == "fill":
        run_fill(args)
    else:
        Worker(args).run()


if __name__ == "__main__":
    try:
        main()
    except KafkaException as exc:
        fail(NAME, f"client error: {exc!r}")
