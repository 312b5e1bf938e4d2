"""Shared parts of the consumer-group interop scripts.

Records are numbered: record ``i`` has key ``key-<i % KEYS>`` and value
``rec-<i>`` (six digits), so whoever reads one knows which it is. The
scripts print progress to stderr, one ``FAIL:`` line and exit status 1 on a
failed check, and a single ``<name>: OK ...`` line on stdout on success.
"""

import argparse
import sys
import time

KEYS = 37


def key_of(index):
    return f"key-{index % KEYS:02d}".encode()


def value_of(index):
    return f"rec-{index:06d}".encode()


def index_of(value):
    """The record number of a value written by ``value_of``, or None."""
    if value is None:
        return None
    text = value.decode("ascii", "replace")
    if not text.startswith("rec-"):
        return None
    try:
        return int(text[4:])
    except ValueError:
        return None


def parse_args(description, extra=None):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--bootstrap", required=True, help="HOST:PORT of the broker")
    parser.add_argument("--topic", required=True, help="topic to create (must not exist)")
    parser.add_argument("--group", required=True, help="consumer group id to use")
    parser.add_argument("--timeout", type=float, default=240.0, help="overall deadline, seconds")
    if extra is not None:
        extra(parser)
    return parser.parse_args()


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


_START = time.monotonic()


def log(name, message):
    print(f"[{time.monotonic() - _START:7.2f}] {name}: {message}", file=sys.stderr, flush=True)


def fail(name, message):
    print(f"{name}: FAIL: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def check(name, condition, message):
    if not condition:
        fail(name, message)
