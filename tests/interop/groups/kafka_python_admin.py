#!/usr/bin/env python3
"""Listing, describing and deleting groups with kafka-python's admin client.

Sets up three groups on one topic: an active one (a subscribed member that
consumed and committed), an empty one (its member committed and closed) and
one that only has offsets (committed by a consumer using assign(), with
generation -1 and no member id). Checks:
- list_groups shows all three, the first two as "consumer" groups in state
  Stable and Empty;
- describe_groups shows the active group Stable with its one member (client
  id, "range" protocol, the whole topic assigned), the empty one Empty with no
  members, and a group that never existed as Dead without an error;
- delete_groups refuses the active group with NON_EMPTY_GROUP, deletes the
  empty and the offsets-only groups, and answers GROUP_ID_NOT_FOUND for a
  group that does not exist; deleted groups leave the listing, their offsets
  are gone (a new member of a deleted group starts again from the beginning)
  and they describe as Dead;
- once its member closed, the formerly active group can be deleted too.

Prints one "kafka_python_admin: OK ..." line on success.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import kafka.errors as Errors  # noqa: E402
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition  # noqa: E402
from kafka.errors import KafkaError  # noqa: E402
from kafka.structs import OffsetAndMetadata  # noqa: E402

from group_common import Deadline, check, fail, key_of, log, parse_args, value_of  # noqa: E402

NAME = "kafka_python_admin"
PARTITIONS = 3
RECORDS = 300


def subscribed_consumer(args, group, client_id):
    # Knowing the topic's partitions before joining, and polling for long
    # enough that a join completes within one poll, keeps clear of a
    # kafka-python 3.0.12 bug that can leave a member stuck after a
    # rebalance (see kafka_python_group.py).
    consumer = KafkaConsumer(
        bootstrap_servers=args.bootstrap,
        group_id=group,
        client_id=client_id,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        fetch_max_wait_ms=100,
    )
    partitions = consumer.partitions_for_topic(args.topic)
    check(NAME, partitions == set(range(PARTITIONS)), f"{client_id} sees partitions {partitions}")
    consumer.subscribe([args.topic])
    return consumer


def read_all(consumer, count, deadline, label, seconds=60):
    """Polls until ``count`` records arrived (within ``seconds``); returns how
    many did."""
    got = 0
    end = time.monotonic() + min(seconds, deadline.remaining())
    while got < count:
        if time.monotonic() >= end:
            fail(NAME, f"{label}: read only {got} of {count} records within {seconds} s")
        for records in consumer.poll(timeout_ms=1000).values():
            got += len(records)
    return got


def check_dead(description, label):
    """An unknown group describes as Dead: without an error before
    DescribeGroups v6, with GROUP_ID_NOT_FOUND from v6 on."""
    error = description.get("error")
    check(
        NAME,
        error is None or error.startswith(f"[Error 69] {error_name(69)}"),
        f"describe_groups: {label}: unexpected error {error}",
    )
    check(
        NAME,
        description["group_state"] == "Dead" and not description["members"],
        f"describe_groups: {label} is {description['group_state']} with "
        f"{len(description['members'])} members, not Dead",
    )


def error_name(code):
    return Errors.for_code(code).__name__


def main():
    args = parse_args(__doc__.splitlines()[0])
    deadline = Deadline(NAME, args.timeout)
    active, empty, simple = (
        f"{args.group}-active",
        f"{args.group}-empty",
        f"{args.group}-offsets-only",
    )
    never = f"{args.group}-never-existed"

    admin = KafkaAdminClient(bootstrap_servers=args.bootstrap, request_timeout_ms=20000)
    admin.create_topics({args.topic: {"num_partitions": PARTITIONS, "replication_factor": 1}})
    producer = KafkaProducer(bootstrap_servers=args.bootstrap, linger_ms=5)
    for i in range(RECORDS):
        producer.send(args.topic, key=key_of(i), value=value_of(i))
    producer.flush(timeout=30)
    producer.close()
    tps = [TopicPartition(args.topic, p) for p in range(PARTITIONS)]

    # The active group: a member that stays.
    member = subscribed_consumer(args, active, "admin-test-active")
    read_all(member, RECORDS, deadline, "active member")
    member.commit()
    # The empty group: a member that committed and left.
    leaver = subscribed_consumer(args, empty, "admin-test-leaver")
    read_all(leaver, RECORDS, deadline, "leaving member")
    leaver.commit()
    leaver.close()
    # The offsets-only group: a commit without membership.
    assigned = KafkaConsumer(
        bootstrap_servers=args.bootstrap, group_id=simple, enable_auto_commit=False
    )
    assigned.assign(tps)
    assigned.commit({tp: OffsetAndMetadata(5, "by assign", -1) for tp in tps})
    committed = {tp.partition: assigned.committed(tp) for tp in tps}
    check(
        NAME,
        committed == {p: 5 for p in range(PARTITIONS)},
        f"offsets-only group: committed {committed}",
    )
    assigned.close()
    log(NAME, "set up an active, an empty and an offsets-only group")

    # Listing.
    listed = {g["group_id"]: g for g in admin.list_groups()}
    for group in (active, empty, simple):
        check(NAME, group in listed, f"list_groups omits {group}: {sorted(listed)}")
    check(NAME, never not in listed, f"list_groups shows {never}, which never existed")
    for group, state in ((active, "Stable"), (empty, "Empty")):
        entry = listed[group]
        check(
            NAME,
            entry.get("protocol_type") == "consumer",
            f"list_groups: {group} has protocol type {entry}",
        )
        check(
            NAME,
            entry.get("group_state") == state,
            f"list_groups: {group} is {entry.get('group_state')}, expected {state}",
        )
    check(
        NAME,
        listed[simple].get("group_state") == "Empty",
        f"list_groups: {simple} is {listed[simple]}",
    )

    # Describing.
    described = admin.describe_groups([active, empty, simple, never])
    for group in (active, empty, simple):
        error = described[group].get("error")
        check(NAME, error is None, f"describe_groups: {group}: {error}")
    desc = described[active]
    check(
        NAME, desc["group_state"] == "Stable", f"describe_groups: {active} is {desc['group_state']}"
    )
    check(
        NAME,
        desc["protocol_type"] == "consumer",
        f"describe_groups: {active} protocol type {desc['protocol_type']!r}",
    )
    check(
        NAME,
        desc["protocol_data"] == "range",
        f"describe_groups: {active} protocol {desc['protocol_data']!r}, expected range",
    )
    check(
        NAME,
        len(desc["members"]) == 1,
        f"describe_groups: {active} has {len(desc['members'])} members",
    )
    only = desc["members"][0]
    check(
        NAME,
        only["client_id"] == "admin-test-active",
        f"describe_groups: member client id {only['client_id']!r}",
    )
    assignment = only["member_assignment"]
    # The admin client decodes the consumer protocol's assignment bytes.
    owned = (
        sorted(
            p
            for topic in (assignment or {}).get("assigned_partitions", [])
            if topic["topic"] == args.topic
            for p in topic["partitions"]
        )
        if isinstance(assignment, dict)
        else None
    )
    check(
        NAME,
        owned == list(range(PARTITIONS)),
        f"describe_groups: the member is assigned {assignment!r}",
    )
    for group in (empty, simple):
        desc = described[group]
        check(
            NAME,
            desc["group_state"] == "Empty" and not desc["members"],
            f"describe_groups: {group} is {desc['group_state']} "
            f"with {len(desc['members'])} members",
        )
    check_dead(described[never], "a group that never existed")

    # Deleting.
    result = admin.delete_groups([active])
    check(
        NAME,
        result.get(active) == error_name(68),
        f"delete_groups of the active group answered {result}, "
        f"expected {error_name(68)} (NON_EMPTY_GROUP)",
    )
    result = admin.delete_groups([empty, simple])
    check(
        NAME,
        result == {empty: "OK", simple: "OK"},
        f"delete_groups of empty groups answered {result}",
    )
    result = admin.delete_groups([never])
    check(
        NAME,
        result.get(never) == error_name(69),
        f"delete_groups of an unknown group answered {result}, "
        f"expected {error_name(69)} (GROUP_ID_NOT_FOUND)",
    )
    listed = {g["group_id"] for g in admin.list_groups()}
    check(NAME, active in listed, f"the active group left the listing: {sorted(listed)}")
    check(
        NAME,
        empty not in listed and simple not in listed,
        f"deleted groups still listed: {sorted(listed)}",
    )
    for group in (empty, simple):
        offsets = admin.list_group_offsets(group).get(group, {})
        check(
            NAME,
            not offsets or all(o.offset == -1 for o in offsets.values()),
            f"{group} still has committed offsets after deletion: {offsets}",
        )
        check_dead(admin.describe_groups([group])[group], f"the deleted group {group}")
    # The active member is not disturbed by the refused deletion.
    check(NAME, member.committed(tps[0]) is not None, "the active group's offsets are gone")
    member.commit()

    # A deleted group's name can be used again, from scratch.
    again = subscribed_consumer(args, empty, "admin-test-again")
    got = read_all(again, RECORDS, deadline, "member of the re-created group")
    again.close()
    log(NAME, f"a new member of the deleted group {empty} read all {got} records again")

    # Once its member leaves, the formerly active group can go too.
    member.close()
    end = time.monotonic() + 20
    while admin.describe_groups([active])[active]["group_state"] != "Empty":
        if time.monotonic() >= end:
            fail(NAME, f"{active} never became Empty after its member closed")
        time.sleep(0.2)
    result = admin.delete_groups([active])
    check(NAME, result == {active: "OK"}, f"delete_groups after the member left answered {result}")
    listed = {g["group_id"] for g in admin.list_groups()}
    check(NAME, active not in listed, f"{active} still listed after deletion")

    print(
        f"{NAME}: OK list, describe and delete of active, empty, offsets-only and unknown groups",
        flush=True,
    )


if __name__ == "__main__":
    try:
        main()
    except KafkaError as exc:
        fail(NAME, f"client error: {exc!r}")
