#!/usr/bin/env python3
"""Three confluent-kafka consumers share a topic; one leaves, one is killed.

Checks, against one broker:
- three members (each its own confluent_member.py process) split a
  6-partition topic evenly and disjointly;
- when one member closes (LeaveGroup), the other two take its partitions in
  less than half the session timeout, i.e. because of the LeaveGroup and not
  because its session ran out;
- when one member is killed with SIGKILL (no LeaveGroup), the survivor owns
  all partitions within the session timeout plus a few heartbeats;
- while this happens a producer writes keyed records in five batches; every
  record is consumed at least once, at the partition and offset its produce
  was acknowledged at, and only records the killed member had consumed are
  consumed twice (the member that left committed before leaving);
- once the survivor has read to the end and committed, a fresh consumer's
  committed() equals the log end offsets, DescribeGroups shows the survivor
  as the only member owning all partitions, and after the survivor closes
  the group is Empty with the committed offsets unchanged.

Prints one "confluent_group: OK ..." line on success.
"""

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from confluent_kafka import (  # noqa: E402
    Consumer,
    ConsumerGroupState,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

from group_common import (  # noqa: E402
    Deadline,
    check,
    fail,
    key_of,
    log,
    parse_args,
    value_of,
)

NAME = "confluent_group"
PARTITIONS = 6
SESSION_TIMEOUT_MS = 10000
# A LeaveGroup starts the rebalance at once: the others hear of it at their
# next heartbeat (every second) and rejoin. Half the session timeout is
# plenty for that, and too little for a rebalance that waits for the session
# of the member that left to run out.
LEAVE_BOUND_S = SESSION_TIMEOUT_MS / 2000
# After a member dies the broker notices when its session runs out; the
# survivor learns of the rebalance at its next heartbeat (every second) and
# rejoins. This is the slack allowed on top of the session timeout.
TAKEOVER_SLACK_S = 6.0
MEMBER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "confluent_member.py")


class Member:
    """A confluent_member.py process and what it has reported."""

    def __init__(self, name, args, events):
        self.name = name
        self.owned = set()
        self.records = []  # (partition, offset, record number)
        self.states = queue.Queue()
        self.closed = False
        self.killed = False
        self.proc = subprocess.Popen(
            [
                sys.executable,
                MEMBER_SCRIPT,
                "--bootstrap",
                args.bootstrap,
                "--topic",
                args.topic,
                "--group",
                args.group,
                "--session-timeout-ms",
                str(SESSION_TIMEOUT_MS),
                "--assignor",
                args.assignor,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read, args=(events,), daemon=True).start()

    def _read(self, events):
        for line in self.proc.stdout:
            events.put((self, json.loads(line)))
        events.put((self, {"ev": "eof"}))

    def send(self, command):
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()


class Group:
    def __init__(self, args, deadline):
        self.args = args
        self.deadline = deadline
        self.events = queue.Queue()
        self.members = {}

    def start(self, name):
        self.members[name] = Member(name, self.args, self.events)
        return self.members[name]

    def live(self):
        return [m for m in self.members.values() if not m.closed and not m.killed]

    def pump(self, seconds):
        """Handles the members' events for up to ``seconds``."""
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return
            try:
                member, event = self.events.get(timeout=left)
            except queue.Empty:
                return
            self.handle(member, event)

    def handle(self, member, event):
        kind = event["ev"]
        if kind in ("assign", "revoke", "lost"):
            member.owned = set(event["owned"])
            log(NAME, f"{member.name} {kind} {event['parts']} -> owns {sorted(member.owned)}")
        elif kind == "rec":
            member.records.append((event["p"], event["o"], event["i"]))
        elif kind == "state":
            member.states.put(event)
        elif kind == "closed":
            member.closed = True
            log(NAME, f"{member.name} closed")
        elif kind == "subscribed":
            log(NAME, f"{member.name} subscribed ({event['assignor']})")
        elif kind == "error":
            fail(NAME, f"{member.name} reported a {event['where']} error: {event['msg']}")
        elif kind == "eof":
            if not member.closed and not member.killed:
                fail(NAME, f"{member.name} exited on its own (status {member.proc.wait()})")

    def wait_until(self, condition, seconds, what):
        end = time.monotonic() + min(seconds, self.deadline.remaining())
        while not condition():
            if time.monotonic() >= end:
                fail(NAME, f"{what} did not happen within {seconds:g} s; {self.describe()}")
            self.pump(0.05)

    def wait_balanced(self, members, seconds, what, settle=1.0):
        """Waits until ``members`` own disjoint, equal shares of all partitions
        for ``settle`` seconds in a row; returns when that state began."""
        began = None
        end = time.monotonic() + min(seconds, self.deadline.remaining())
        while True:
            now = time.monotonic()
            if self.balanced(members):
                if began is None:
                    began = now
                elif now - began >= settle:
                    return began
            else:
                began = None
            if now >= end:
                fail(NAME, f"{what} did not happen within {seconds:g} s; {self.describe()}")
            self.pump(0.05)

    def balanced(self, members):
        share = PARTITIONS // len(members)
        seen = []
        for member in members:
            if len(member.owned) != share:
                return False
            seen.extend(member.owned)
        return sorted(seen) == list(range(PARTITIONS))

    def describe(self):
        parts = []
        for m in self.members.values():
            status = "killed" if m.killed else "closed" if m.closed else "live"
            parts.append(f"{m.name} ({status}) owns {sorted(m.owned)}, read {len(m.records)}")
        return "; ".join(parts)

    def consumed(self):
        return {i for m in self.members.values() for _, _, i in m.records}


def create_topic(bootstrap, topic, deadline):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)]
    )
    try:
        futures[topic].result(timeout=min(30, deadline.remaining()))
    except KafkaException as exc:
        fail(NAME, f"CreateTopics failed: {exc}")


def describe_group(admin, group, deadline):
    futures = admin.describe_consumer_groups([group], request_timeout=10)
    try:
        return futures[group].result(timeout=min(30, deadline.remaining()))
    except KafkaException as exc:
        fail(NAME, f"DescribeGroups for {group} failed: {exc}")


def fresh_committed(bootstrap, group, topic):
    """Committed offsets read by a consumer that never joins the group."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        got = consumer.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=15)
    except KafkaException as exc:
        fail(NAME, f"committed() from a fresh consumer failed: {exc}")
    finally:
        consumer.close()
    for tp in got:
        if tp.error is not None:
            fail(NAME, f"committed() partition {tp.partition}: {tp.error}")
    return {tp.partition: tp.offset for tp in got}


def main():
    def extra(parser):
        parser.add_argument("--records", type=int, default=5000, help="records to produce in all")
        parser.add_argument("--assignor", default="range", help="partition.assignment.strategy")

    args = parse_args(__doc__.splitlines()[0], extra)
    deadline = Deadline(NAME, args.timeout)
    session_s = SESSION_TIMEOUT_MS / 1000
    create_topic(args.bootstrap, args.topic, deadline)

    producer = Producer(
        {"bootstrap.servers": args.bootstrap, "linger.ms": 5, "message.timeout.ms": 30000}
    )
    acks = {}
    errors = []

    def delivered(err, msg):
        if err is not None:
            errors.append(str(err))
        else:
            acks[int(msg.value()[4:])] = (msg.partition(), msg.offset())

    batches = [range(k * args.records // 5, (k + 1) * args.records // 5) for k in range(5)]

    def produce(batch):
        for i in batches[batch]:
            producer.produce(args.topic, key=key_of(i), value=value_of(i), on_delivery=delivered)
            producer.poll(0)
        left = producer.flush(min(30, deadline.remaining()))
        check(
            NAME,
            left == 0 and not errors,
            f"batch {batch}: {left} undelivered, errors {errors[:3]}",
        )
        log(NAME, f"produced batch {batch} ({len(batches[batch])} records)")

    group = Group(args, deadline)

    def wait_consumed(upto_batch):
        wanted = set(range(batches[upto_batch].stop))
        group.wait_until(
            lambda: wanted <= group.consumed(), 60, f"consumption of batches 0..{upto_batch}"
        )

    # Batch 0 waits in the log for a group that has no committed offsets yet.
    produce(0)
    m1, m2, m3 = group.start("m1"), group.start("m2"), group.start("m3")
    group.wait_balanced([m1, m2, m3], 60, "an even split over three members")
    log(NAME, f"three members share the topic: {group.describe()}")
    produce(1)
    wait_consumed(1)

    # A clean leave: m1 commits and sends LeaveGroup on close.
    left_at = time.monotonic()
    m1.send("close")
    group.wait_until(lambda: m1.closed, 30, "m1's close")
    check(NAME, m1.proc.wait(timeout=30) == 0, "m1 exited with an error")
    settled = group.wait_balanced([m2, m3], 60, "an even split over two members after m1 left")
    took = settled - left_at
    log(NAME, f"m2 and m3 took m1's partitions {took:.2f} s after it left")
    check(
        NAME,
        took < LEAVE_BOUND_S,
        f"the rebalance after m1's LeaveGroup took {took:.2f} s, not less than half the "
        f"session timeout ({session_s:g} s): the LeaveGroup did not start it",
    )
    produce(2)
    wait_consumed(2)

    # A crash: m2 dies without leaving; its session runs out.
    m2.killed = True
    killed_at = time.monotonic()
    os.kill(m2.proc.pid, signal.SIGKILL)
    m2.proc.wait(timeout=30)
    log(NAME, f"killed m2 (it owned {sorted(m2.owned)})")
    produce(3)
    group.wait_until(
        lambda: m3.owned == set(range(PARTITIONS)),
        session_s + TAKEOVER_SLACK_S + 30,
        "m3 owning every partition",
    )
    took = time.monotonic() - killed_at
    log(NAME, f"m3 owns every partition {took:.2f} s after m2 was killed")
    check(
        NAME,
        took <= session_s + TAKEOVER_SLACK_S,
        f"m3 took over only {took:.2f} s after m2 was killed: more than the session timeout "
        f"({session_s:g} s) plus {TAKEOVER_SLACK_S:g} s",
    )
    produce(4)
    wait_consumed(4)
    check(
        NAME,
        not errors and len(acks) == args.records,
        f"{len(acks)} of {args.records} acknowledged",
    )

    # Where the log ends, by the acknowledgements and by ListOffsets.
    ends = {p: 0 for p in range(PARTITIONS)}
    for p, o in acks.values():
        ends[p] = max(ends[p], o + 1)
    check(NAME, all(ends.values()), f"some partition got no records: {ends}")
    probe = Consumer({"bootstrap.servers": args.bootstrap, "group.id": args.group + "-probe"})
    for p in range(PARTITIONS):
        low, high = probe.get_watermark_offsets(TopicPartition(args.topic, p), timeout=15)
        check(
            NAME,
            (low, high) == (0, ends[p]),
            f"partition {p}: watermarks {(low, high)}, acks say (0, {ends[p]})",
        )
    probe.close()

    # Every record at least once, each where it was acknowledged.
    readers = {}
    for member in group.members.values():
        for p, o, i in member.records:
            check(
                NAME,
                i is not None and i in acks,
                f"{member.name} read an unknown record at {p}/{o}",
            )
            check(
                NAME,
                acks[i] == (p, o),
                f"{member.name} read record {i} at {p}/{o}, acknowledged at {acks[i]}",
            )
            readers.setdefault(i, []).append(member.name)
    missing = sorted(set(range(args.records)) - set(readers))
    check(NAME, not missing, f"{len(missing)} records never consumed, first {missing[:10]}")
    duplicates = {i: r for i, r in readers.items() if len(r) > 1}
    unexpected = {i: r for i, r in duplicates.items() if "m2" not in r}
    check(
        NAME,
        not unexpected,
        f"{len(unexpected)} records consumed twice although the killed member never had them "
        f"(committed offsets were lost or ignored), e.g. {sorted(unexpected.items())[:5]}",
    )
    log(NAME, f"{len(duplicates)} records consumed again after m2 was killed")

    # The survivor commits; wait until its positions are the log end.
    state = None
    give_up = time.monotonic() + 30
    while True:
        m3.send("commit")
        group.wait_until(lambda: not m3.states.empty(), 30, "m3's commit report")
        state = m3.states.get()
        positions = {int(p): o for p, o in state["positions"].items()}
        if positions == ends:
            break
        if time.monotonic() >= give_up:
            fail(NAME, f"m3's positions {positions} did not reach the log end {ends} within 30 s")
        group.pump(0.5)
    check(NAME, state["commit_error"] is None, f"m3's commit failed: {state['commit_error']}")
    committed = {int(p): o for p, o in (state["committed"] or {}).items()}
    check(NAME, committed == ends, f"m3 sees committed {committed}, log end {ends}")
    got = fresh_committed(args.bootstrap, args.group, args.topic)
    check(NAME, got == ends, f"a fresh consumer reads committed offsets {got}, log end {ends}")

    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    desc = describe_group(admin, args.group, deadline)
    check(
        NAME,
        desc.state == ConsumerGroupState.STABLE,
        f"group state {desc.state} with one live member",
    )
    check(
        NAME,
        len(desc.members) == 1,
        f"DescribeGroups lists {len(desc.members)} members, one is alive",
    )
    owned = sorted(tp.partition for tp in desc.members[0].assignment.topic_partitions)
    check(NAME, owned == list(range(PARTITIONS)), f"DescribeGroups gives the survivor {owned}")

    m3.send("close")
    group.wait_until(lambda: m3.closed, 30, "m3's close")
    check(NAME, m3.proc.wait(timeout=30) == 0, "m3 exited with an error")
    desc = describe_group(admin, args.group, deadline)
    check(
        NAME,
        desc.state == ConsumerGroupState.EMPTY,
        f"group state {desc.state} after every member left",
    )
    check(
        NAME, not desc.members, f"DescribeGroups lists {len(desc.members)} members after all left"
    )
    got = fresh_committed(args.bootstrap, args.group, args.topic)
    check(NAME, got == ends, f"after the last member left, committed {got}, log end {ends}")

    print(
        f"{NAME}: OK {args.records} records, {len(duplicates)} re-delivered after the kill, "
        f"assignor {args.assignor}, log end {ends}",
        flush=True,
    )


if __name__ == "__main__":
    try:
        main()
    except KafkaException as exc:
        fail(NAME, f"client error: {exc!r}")
