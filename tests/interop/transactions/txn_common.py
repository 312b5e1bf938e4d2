"""Shared parts of the Python transaction scripts.

A plan of transactions is written ``commit:100,abort:100,commit:50``: one
transaction per item, committed or aborted, holding that many records. The
records of a plan are numbered across it; record ``i`` goes to partition
``i % partitions`` and its value ``t<txn>-r<i>`` (txn and i zero-padded)
names both, so whoever reads one knows which transaction wrote it.
``check_plan_read`` compares what a client read at both isolation levels
with what the plan says each must show.

The scripts print progress to stderr, one ``<name>: FAIL: ...`` line and
exit status 1 on a failed check, and a single ``<name>: OK ...`` line on
stdout on success.
"""

import argparse
import sys
import time

MAX_REPORTED_ERRORS = 25

_START = time.monotonic()


def log(name, message):
    print(f"[{time.monotonic() - _START:7.2f}] {name}: {message}", file=sys.stderr, flush=True)


def say(line):
    """One line of a script's report on stdout, flushed at once: a test
    reads it while the script runs."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def fail(name, message):
    print(f"{name}: FAIL: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def check(name, condition, message):
    if not condition:
        fail(name, message)


class Deadline:
    """An overall time bound for a script."""

    def __init__(self, name, seconds):
        self.name = name
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def remaining(self):
        left = self.end - time.monotonic()
        if left <= 0:
            fail(self.name, f"overall deadline of {self.seconds:g} s passed")
        return left

    def expired(self):
        return time.monotonic() >= self.end


def plan_arg(text):
    """Parses ``commit:N,abort:N,...`` into [(commit?, records)]."""
    plan = []
    for item in text.split(","):
        outcome, _, count = item.partition(":")
        if outcome not in ("commit", "abort") or not count.isdigit() or int(count) <= 0:
            raise argparse.ArgumentTypeError(f"bad plan item {item!r}: want commit:N or abort:N")
        plan.append((outcome == "commit", int(count)))
    return plan


def plan_args(description):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--bootstrap", required=True, help="HOST:PORT of the broker")
    parser.add_argument("--topic", required=True, help="topic to create (must not exist)")
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument(
        "--plan", type=plan_arg, required=True, help="transactions: commit:N,abort:N,..."
    )
    parser.add_argument("--timeout", type=float, default=50.0, help="overall deadline, seconds")
    return parser.parse_args()


def value_of(txn, index):
    return f"t{txn:03d}-r{index:06d}".encode()


def plan_records(plan, partitions):
    """[(txn, committed, [(partition, value)])], one entry per transaction."""
    out = []
    index = 0
    for txn, (committed, count) in enumerate(plan):
        records = []
        for _ in range(count):
            records.append((index % partitions, value_of(txn, index)))
            index += 1
        out.append((txn, committed, records))
    return out


def plan_ends(plan, partitions):
    """Where each partition's log ends once the plan ran and every marker is
    written: its records plus one marker per transaction that wrote there."""
    txns = plan_records(plan, partitions)
    ends = {}
    for partition in range(partitions):
        records = sum(1 for _, _, rs in txns for p, _ in rs if p == partition)
        writers = sum(1 for _, _, rs in txns if any(p == partition for p, _ in rs))
        ends[partition] = records + writers
    return ends


def check_plan_read(name, plan, partitions, committed_read, uncommitted_read):
    """Checks a read of the plan's topic at both isolation levels.

    ``committed_read`` and ``uncommitted_read`` map each partition to the
    [(offset, value)] a client delivered, in delivery order. read_committed
    must show exactly the committed transactions' records, read_uncommitted
    every record, each once, in produce order per partition at increasing
    offsets. Returns the counts for the summary line.
    """
    errors = []
    txns = plan_records(plan, partitions)
    for isolation, read, wanted_txns in (
        ("read_committed", committed_read, [t for t in txns if t[1]]),
        ("read_uncommitted", uncommitted_read, txns),
    ):
        for partition in range(partitions):
            wanted = [v for _, _, records in wanted_txns for p, v in records if p == partition]
            got = read.get(partition, [])
            values = [v for _, v in got]
            offsets = [o for o, _ in got]
            if values != wanted:
                missing = [v for v in wanted if v not in values][:5]
                extra = [v for v in values if v not in wanted][:5]
                errors.append(
                    f"{isolation} partition {partition}: read {len(values)} records, "
                    f"wanted {len(wanted)}; missing {missing}, unexpected {extra}"
                )
            if offsets != sorted(set(offsets)):
                errors.append(f"{isolation} partition {partition}: offsets not increasing: {offsets[:20]}")
    if errors:
        shown = "\n  ".join(errors[:MAX_REPORTED_ERRORS])
        fail(name, f"{len(errors)} mismatches:\n  {shown}")
    ends = plan_ends(plan, partitions)
    return {
        "transactions": len(txns),
        "committed": sum(1 for t in txns if t[1]),
        "aborted": sum(1 for t in txns if not t[1]),
        "read_committed": sum(len(rs) for _, c, rs in txns if c),
        "read_uncommitted": sum(len(rs) for _, _, rs in txns),
        "log_ends": [ends[p] for p in range(partitions)],
    }


def summary(result):
    return (
        f"{result['transactions']} transactions ({result['committed']} committed, "
        f"{result['aborted']} aborted): read_committed {result['read_committed']} "
        f"read_uncommitted {result['read_uncommitted']} "
        f"log_ends {result['log_ends']}"
    )
