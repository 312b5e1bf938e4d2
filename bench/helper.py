"""Helpers of bench/run that are easier in Python than in bash.

  helper.py free-port                      a free TCP port on 127.0.0.1
  helper.py confluent-produce ARGS         librdkafka (confluent-kafka) in a
                                           tight produce loop; one JSON object
  helper.py connections ARGS               opens N idle connections to the
                                           broker, reports its RSS; JSON
  helper.py get FILE KEY[.KEY...]          one value of a JSON file
  helper.py stats KEY[.KEY...] FILE...     median, min and max of one value
                                           over several JSON files
  helper.py table RESULTS.tsv              prints the results table

Only loopback addresses are used, and every loop is bounded by a count and
a time limit. Standard library only, except confluent-produce, which needs
confluent_kafka (the project venv from scripts/install-test-deps has it).
"""

import argparse
import json
import resource
import socket
import struct
import sys
import time

# confluent-produce waits at most this long for a full producer queue
# before giving up on the run.
QUEUE_WAIT_S_MAX = 30.0


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        print(probe.getsockname()[1])


def loopback_only(bootstrap):
    host = bootstrap.rsplit(":", 1)[0]
    if host not in ("127.0.0.1", "localhost", "[::1]"):
        sys.exit(f"helper.py: refusing a non-loopback address: {bootstrap}")


def confluent_produce(argv):
    parser = argparse.ArgumentParser(prog="helper.py confluent-produce")
    parser.add_argument("--bootstrap-server", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--records", type=int, required=True)
    parser.add_argument("--record-size", type=int, required=True)
    parser.add_argument("--acks", default="1")
    parser.add_argument("--timeout-s", type=float, default=120.0)
    args = parser.parse_args(argv)
    loopback_only(args.bootstrap_server)
    from confluent_kafka import Producer

    # librdkafka's defaults otherwise (linger.ms 5, batch.size 1 MB): what
    # a user would run. Idempotence off, as in the Sluice runs.
    producer = Producer({
        "bootstrap.servers": args.bootstrap_server,
        "acks": args.acks,
        "enable.idempotence": False,
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
    })
    outcome = {"delivered": 0, "failed": 0, "first_error": None}

    def on_delivery(error, _message):
        if error is None:
            outcome["delivered"] += 1
        else:
            outcome["failed"] += 1
            outcome["first_error"] = outcome["first_error"] or str(error)

    value = bytes(i % 251 for i in range(args.record_size))
    started = time.monotonic()
    deadline = started + args.timeout_s
    for sent in range(args.records):
        queued_at = time.monotonic()
        while True:
            try:
                producer.produce(args.topic, value, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.001)
                now = time.monotonic()
                if now > deadline or now - queued_at > QUEUE_WAIT_S_MAX:
                    sys.exit("helper.py: the producer queue stayed full")
        if sent % 1000 == 0:
            producer.poll(0)
    left = producer.flush(max(0.0, deadline - time.monotonic()))
    elapsed = time.monotonic() - started
    delivered = outcome["delivered"]
    print(json.dumps({
        "client": "confluent-kafka",
        "librdkafka": __import__("confluent_kafka").libversion()[0],
        "records": args.records,
        "delivered": delivered,
        "failed": outcome["failed"],
        "not_flushed": left,
        "first_error": outcome["first_error"],
        "elapsed_s": round(elapsed, 6),
        "records_per_s": round(delivered / elapsed, 1),
        "mb_per_s": round(delivered * args.record_size / 1e6 / elapsed, 3),
    }))
    if outcome["failed"] or left:
        sys.exit(1)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def api_versions_request(correlation_id):
    # ApiVersions v0: header (api key 18, version 0, correlation id, client
    # id), empty body. Each connection asks once, so the broker has really
    # set it up, then it stays idle.
    client_id = b"bench-connections"
    body = struct.pack(">hhih", 18, 0, correlation_id, len(client_id)) + client_id
    return struct.pack(">i", len(body)) + body


def read_exactly(sock, count):
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError("closed by the broker")
        data += chunk
    return data


def connections(argv):
    parser = argparse.ArgumentParser(prog="helper.py connections")
    parser.add_argument("--bootstrap-server", required=True)
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--timeout-s", type=float, default=30.0)
    args = parser.parse_args(argv)
    loopback_only(args.bootstrap_server)
    host, port = args.bootstrap_server.rsplit(":", 1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = args.count + 64
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    before = rss_kib(args.pid)
    deadline = time.monotonic() + args.timeout_s
    opened, answered, first_error = [], 0, None
    try:
        for index in range(args.count):
            if time.monotonic() > deadline:
                first_error = first_error or "time limit reached"
                break
            sock = socket.create_connection((host, int(port)), timeout=5)
            opened.append(sock)
            sock.sendall(api_versions_request(index))
            size = struct.unpack(">i", read_exactly(sock, 4))[0]
            read_exactly(sock, size)
            answered += 1
    except OSError as error:
        first_error = str(error)
    time.sleep(0.5)
    during = rss_kib(args.pid)
    for sock in opened:
        sock.close()
    time.sleep(0.5)
    print(json.dumps({
        "count": args.count,
        "opened": len(opened),
        "answered": answered,
        "first_error": first_error,
        "rss_before_kib": before,
        "rss_during_kib": during,
        "rss_after_kib": rss_kib(args.pid),
    }))


def get(argv):
    path, keys = argv[0], argv[1:]
    with open(path) as source:
        value = json.load(source)
    for key in keys:
        value = value[key]
    print(value)


def lookup(path, dotted):
    with open(path) as source:
        value = json.load(source)
    for key in dotted.split("."):
        value = value[key]
    return float(value)


def stats(argv):
    dotted, paths = argv[0], argv[1:]
    values = sorted(lookup(path, dotted) for path in paths)
    if not values:
        sys.exit("helper.py stats: no files")
    middle = len(values) // 2
    if len(values) % 2:
        median = values[middle]
    else:
        median = (values[middle - 1] + values[middle]) / 2
    print(f"{median:.3f} {values[0]:.3f} {values[-1]:.3f}")


def table(argv):
    rows = []
    with open(argv[0]) as source:
        for line in source:
            if line.strip():
                rows.append(line.rstrip("\n").split("\t"))
    header = ["case", "figure", "limit", "ratio", "target"]
    widths = [max(len(row[i]) for row in rows + [header]) for i in range(len(header))]
    rule = "-+-".join("-" * width for width in widths)
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths)))
    print(rule)
    for row in rows:
        print(" | ".join(cell.ljust(w) for cell, w in zip(row, widths)))


COMMANDS = {
    "confluent-produce": confluent_produce,
    "connections": connections,
    "get": get,
    "stats": stats,
    "table": table,
}

if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1] == "free-port":
        free_port()
    elif len(sys.argv) >= 2 and sys.argv[1] in COMMANDS:
        COMMANDS[sys.argv[1]](sys.argv[2:])
    else:
        sys.exit(__doc__)
