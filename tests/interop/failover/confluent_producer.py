#!/usr/bin/env python3
"""An idempotent confluent-kafka producer that runs until SIGTERM.

For the failover tests (tests/tests/cluster_failover.rs): it produces
numbered records at a steady rate (key ``k<i % 37>``, value ``v<i>`` with
seven digits, so a value names its record) with ``enable.idempotence`` and
``acks=all``, while the test kills and restarts brokers. It checks nothing
itself and reports on stdout, one line each, as soon as librdkafka says:

    ack PARTITION OFFSET VALUE   a record acknowledged at that position
    fail VALUE ERROR             a record librdkafka gave up on
    fatal ERROR                  a fatal error (the producer is unusable)

On SIGTERM (or at --max-seconds) it stops producing, flushes what is in
flight, prints ``done produced=N acked=N failed=N`` and exits 0. Client
errors (a broker going away and so on) are logged to stderr.
"""

import argparse
import signal
import sys
import time

import confluent_kafka
from confluent_kafka import KafkaException, Producer, libversion

KEYS = 37
# Records are sent in small steps this far apart, to hold the rate.
STEP_S = 0.01
# How long the final flush may take.
FLUSH_S = 60


def log(message):
    print(f"[{time.monotonic():.3f}] confluent_producer: {message}", file=sys.stderr, flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True, help="HOST:PORT,... of the brokers")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--rate", type=int, default=500, help="records per second")
    parser.add_argument("--max-seconds", type=float, default=100.0, help="stop by then at the latest")
    args = parser.parse_args()

    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))

    counts = {"acked": 0, "failed": 0}
    out = sys.stdout

    def on_error(err):
        if err.fatal():
            out.write(f"fatal {err}\n")
            out.flush()
        log(f"client error: {err}")

    def delivered(err, msg):
        value = msg.value().decode()
        if err is not None:
            counts["failed"] += 1
            out.write(f"fail {value} {err}\n")
        else:
            counts["acked"] += 1
            out.write(f"ack {msg.partition()} {msg.offset()} {value}\n")

    producer = Producer(
        {
            "bootstrap.servers": args.bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "message.timeout.ms": 60000,
            "request.timeout.ms": 10000,
            "socket.connection.setup.timeout.ms": 5000,
            "reconnect.backoff.max.ms": 1000,
            "retry.backoff.max.ms": 500,
            "error_cb": on_error,
        }
    )
    log(f"confluent-kafka {confluent_kafka.__version__}, librdkafka {libversion()[0]}")

    per_step = max(1, round(args.rate * STEP_S))
    produced = 0
    started = time.monotonic()
    next_step = started
    while not stopping and time.monotonic() - started < args.max_seconds:
        for _ in range(per_step):
            value = f"v{produced:07d}"
            while True:
                try:
                    producer.produce(
                        args.topic,
                        key=f"k{produced % KEYS:02d}".encode(),
                        value=value.encode(),
                        on_delivery=delivered,
                    )
                    break
                except BufferError:
                    producer.poll(0.05)
            produced += 1
        next_step += STEP_S
        producer.poll(max(0.0, next_step - time.monotonic()))
        out.flush()

    log(f"stopping after {produced} records; flushing")
    left = producer.flush(FLUSH_S)
    out.write(
        f"done produced={produced} acked={counts['acked']} failed={counts['failed']} "
        f"unflushed={left}\n"
    )
    out.flush()


if __name__ == "__main__":
    try:
        main()
    except KafkaException as exc:
        print(f"confluent_producer: client error: {exc!r}", file=sys.stderr, flush=True)
        sys.exit(1)
