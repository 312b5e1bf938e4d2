#!/usr/bin/env python3
"""A kafka-python group member commits, leaves, rejoins and resumes.

Checks, against one broker, with one of three commit styles (--mode):
- ``auto``: auto-commit while polling; the committed offsets (read with the
  admin client) reach the log end without any explicit commit;
- ``sync``: commit() of explicit offsets halfway through each partition;
  committed() then reports exactly those offsets;
- ``async``: commit_async() of the consumed positions; its callback reports
  success and committed() reports the log end.
In every mode the first member reads a fresh group from the beginning
(each record once, where its produce was acknowledged), leaves with
close() (after which DescribeGroups shows the group Empty with no members),
more records are produced, and a new member of the same group then gets
exactly the records at or after the committed offsets: the uncommitted tail
of the first batch and the whole second batch, nothing before the commit
point and nothing twice. It commits the same way, and the committed offsets
end at the log end.

Prints one "kafka_python_group: OK ..." line on success.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition  # noqa: E402
from kafka.errors import KafkaError  # noqa: E402
from kafka.structs import OffsetAndMetadata  # noqa: E402

from group_common import (  # noqa: E402
    Deadline,
    check,
    fail,
    index_of,
    key_of,
    log,
    parse_args,
    value_of,
)

NAME = "kafka_python_group"
PARTITIONS = 3
FIRST_BATCH = 900
SECOND_BATCH = 600
# How long a member keeps polling after it has what it expects, to catch
# records delivered beyond that.
QUIET_S = 2.0
# Bounds on one member's reading and on one commit.
CONSUME_S = 60
COMMIT_S = 30


# kafka-python 3.0.12 can drop a join that completes after poll()'s own
# timeout ran out, when that join was started because the topic's metadata
# arrived after the group's first assignment: the member then never applies
# its assignment nor heartbeats again. Polls long enough for a join to finish
# and a member that knows the topic's partitions before it joins keep clear
# of that client bug.
POLL_MS = 1000


def new_consumer(args, mode):
    consumer = KafkaConsumer(
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        client_id=f"{NAME}-member",
        auto_offset_reset="earliest",
        enable_auto_commit=mode == "auto",
        auto_commit_interval_ms=500,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        fetch_max_wait_ms=100,
        request_timeout_ms=20000,
    )
    partitions = consumer.partitions_for_topic(args.topic)
    check(NAME, partitions == set(range(PARTITIONS)), f"the consumer sees partitions {partitions}")
    consumer.subscribe([args.topic])
    return consumer


def consume(consumer, expected, deadline, label):
    """Polls until every (partition, offset) in ``expected`` was delivered,
    then QUIET_S more; returns every record delivered, in order."""
    got = []
    seen = set()
    quiet_until = None
    end = time.monotonic() + min(CONSUME_S, deadline.remaining())
    while True:
        if time.monotonic() >= end:
            missing = sorted(set(expected) - seen)
            fail(
                NAME,
                f"{label}: {len(missing)} expected records did not arrive within "
                f"{CONSUME_S} s, first {missing[:5]}",
            )
        batch = consumer.poll(timeout_ms=POLL_MS)
        for records in batch.values():
            for rec in records:
                got.append(rec)
                seen.add((rec.partition, rec.offset))
        if quiet_until is None and set(expected) <= seen:
            quiet_until = time.monotonic() + QUIET_S
        if quiet_until is not None and time.monotonic() >= quiet_until:
            return got


def check_delivery(got, expected, acks, label):
    """Each delivered record is expected, delivered once, and is the record
    acknowledged at its partition and offset."""
    seen = set()
    for rec in got:
        where = (rec.partition, rec.offset)
        check(
            NAME,
            where not in seen,
            f"{label}: partition {where[0]} offset {where[1]} delivered twice",
        )
        seen.add(where)
        check(
            NAME,
            where in expected,
            f"{label}: partition {where[0]} offset {where[1]} delivered, but it lies before the "
            f"committed offset or was never produced",
        )
        index = index_of(rec.value)
        check(
            NAME,
            acks.get(index) == where,
            f"{label}: record {index} delivered at {where}, acknowledged at {acks.get(index)}",
        )
        check(NAME, rec.key == key_of(index), f"{label}: record {index} has key {rec.key!r}")
    missing = sorted(set(expected) - seen)
    check(NAME, not missing, f"{label}: {len(missing)} records not delivered, first {missing[:5]}")


def group_offsets(admin, group, topic):
    offsets = admin.list_group_offsets(group).get(group, {})
    return {tp.partition: oam.offset for tp, oam in offsets.items() if tp.topic == topic}


def commit(consumer, admin, args, mode, targets, deadline, label):
    """Commits in ``mode``; ``targets`` maps each partition to the offset to
    commit (``sync``) or expected from committing positions (others)."""
    tps = {p: TopicPartition(args.topic, p) for p in range(PARTITIONS)}
    end = time.monotonic() + min(COMMIT_S, deadline.remaining())
    if mode == "auto":
        # Nothing explicit: keep polling until the auto-commits get there.
        while group_offsets(admin, args.group, args.topic) != targets:
            if time.monotonic() >= end:
                fail(
                    NAME,
                    f"{label}: auto-commit did not reach {targets} within {COMMIT_S} s, "
                    f"committed {group_offsets(admin, args.group, args.topic)}",
                )
            extra = consumer.poll(timeout_ms=POLL_MS)
            check(NAME, not extra, f"{label}: records delivered beyond the log end: {extra}")
    elif mode == "sync":
        offsets = {tps[p]: OffsetAndMetadata(o, "", -1) for p, o in targets.items()}
        try:
            consumer.commit(offsets)
        except KafkaError as exc:
            fail(NAME, f"{label}: commit({targets}) failed: {exc!r}")
    else:
        results = []
        consumer.commit_async(
            callback=lambda offsets, response: results.append((offsets, response))
        )
        while not results:
            if time.monotonic() >= end:
                fail(NAME, f"{label}: commit_async's callback did not run within {COMMIT_S} s")
            extra = consumer.poll(timeout_ms=POLL_MS)
            check(NAME, not extra, f"{label}: records delivered beyond the log end: {extra}")
        offsets, response = results[0]
        check(
            NAME, not isinstance(response, Exception), f"{label}: commit_async failed: {response!r}"
        )
        sent = {tp.partition: oam.offset for tp, oam in offsets.items()}
        check(
            NAME,
            sent == targets,
            f"{label}: commit_async sent {sent}, positions should be {targets}",
        )
    committed = {p: consumer.committed(tps[p]) for p in range(PARTITIONS)}
    check(
        NAME, committed == targets, f"{label}: committed() reports {committed}, expected {targets}"
    )
    listed = group_offsets(admin, args.group, args.topic)
    check(
        NAME,
        listed == targets,
        f"{label}: the admin client lists committed {listed}, expected {targets}",
    )


def check_empty(admin, group, label):
    description = admin.describe_groups([group])[group]
    check(
        NAME,
        description.get("error") is None,
        f"{label}: DescribeGroups error {description.get('error')}",
    )
    state = description.get("group_state")
    members = description.get("members")
    check(
        NAME,
        state == "Empty" and not members,
        f"{label}: the group is {state} with {len(members or [])} members after its member left",
    )


def main():
    def extra(parser):
        parser.add_argument("--mode", choices=["auto", "sync", "async"], required=True)

    args = parse_args(__doc__.splitlines()[0], extra)
    deadline = Deadline(NAME, args.timeout)
    admin = KafkaAdminClient(bootstrap_servers=args.bootstrap, request_timeout_ms=20000)
    admin.create_topics({args.topic: {"num_partitions": PARTITIONS, "replication_factor": 1}})
    producer = KafkaProducer(bootstrap_servers=args.bootstrap, linger_ms=5)
    acks = {}

    def produce(indexes):
        futures = [
            (i, producer.send(args.topic, key=key_of(i), value=value_of(i))) for i in indexes
        ]
        producer.flush(timeout=30)
        for i, future in futures:
            meta = future.get(timeout=30)
            acks[i] = (meta.partition, meta.offset)

    def ends():
        result = {p: 0 for p in range(PARTITIONS)}
        for p, o in acks.values():
            result[p] = max(result[p], o + 1)
        return result

    produce(range(FIRST_BATCH))
    first_end = ends()
    check(NAME, all(first_end.values()), f"a partition got none of the first batch: {first_end}")
    log(NAME, f"produced {FIRST_BATCH} records, log end {first_end}")

    # First member: a fresh group starts at the beginning.
    consumer = new_consumer(args, args.mode)
    expected = set(acks.values())
    got = consume(consumer, expected, deadline, "first member")
    check_delivery(got, expected, acks, "first member")
    log(NAME, f"first member read {len(got)} records")
    if args.mode == "sync":
        resume = {p: end // 2 for p, end in first_end.items()}
    else:
        resume = dict(first_end)
    commit(consumer, admin, args, args.mode, resume, deadline, "first member")
    log(NAME, f"first member committed {resume}")
    consumer.close(autocommit=False)
    check_empty(admin, args.group, "after the first member closed")

    produce(range(FIRST_BATCH, FIRST_BATCH + SECOND_BATCH))
    final_end = ends()
    log(NAME, f"produced {SECOND_BATCH} more, log end {final_end}")

    # The member comes back: it resumes at the committed offsets.
    consumer = new_consumer(args, args.mode)
    expected = {(p, o) for p, o in acks.values() if o >= resume[p]}
    got = consume(consumer, expected, deadline, "rejoined member")
    check_delivery(got, expected, acks, "rejoined member")
    for p in range(PARTITIONS):
        first = min((rec.offset for rec in got if rec.partition == p), default=None)
        check(
            NAME,
            first == resume[p],
            f"rejoined member: partition {p} starts at {first}, committed {resume[p]}",
        )
    redelivered = sum(1 for rec in got if rec.offset < first_end[rec.partition])
    log(NAME, f"rejoined member read {len(got)} records, {redelivered} of them uncommitted before")
    commit(consumer, admin, args, args.mode, final_end, deadline, "rejoined member")
    consumer.close(autocommit=False)
    check_empty(admin, args.group, "after the rejoined member closed")
    check(
        NAME,
        group_offsets(admin, args.group, args.topic) == final_end,
        "committed offsets moved after close",
    )

    print(
        f"{NAME}: OK mode {args.mode}, {FIRST_BATCH + SECOND_BATCH} records, resumed at {resume}, "
        f"{redelivered} uncommitted records read again, committed {final_end}",
        flush=True,
    )


if __name__ == "__main__":
    try:
        main()
    except KafkaError as exc:
        fail(NAME, f"client error: {exc!r}")
