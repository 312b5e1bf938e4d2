"""confluent-kafka pieces shared by the transaction scripts: topic creation,
a transactional producer and a produce that waits for every
acknowledgement, the consumer and the transaction body of a
consume-transform-produce copier, and a read of whole partitions at either
isolation level that ends at each partition's end (librdkafka's partition
EOF, which at read_committed comes at the last stable offset)."""

import os
import time

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from txn_common import fail, log


def client_config(bootstrap, name):
    def on_error(err):
        log(name, f"client error: {err}")

    config = {
        "bootstrap.servers": bootstrap,
        "socket.connection.setup.timeout.ms": 10000,
        "error_cb": on_error,
    }
    # librdkafka's debug contexts (such as "eos,protocol"), for looking
    # into a failure: its log goes to stderr.
    debug = os.environ.get("TXN_TESTS_LIBRDKAFKA_DEBUG")
    if debug:
        config["debug"] = debug
    return config


def create_topic(name, bootstrap, topic, partitions, deadline, replication=1):
    admin = AdminClient(client_config(bootstrap, name))
    futures = admin.create_topics(
        [NewTopic(topic, num_partitions=partitions, replication_factor=replication)],
        operation_timeout=30,
        request_timeout=30,
    )
    try:
        futures[topic].result(timeout=min(60, deadline.remaining()))
    except KafkaException as exc:
        fail(name, f"CreateTopics({topic}, {partitions} partitions) failed: {exc}")
    last = None
    while not deadline.expired():
        try:
            metadata = admin.list_topics(topic=topic, timeout=min(10, deadline.remaining()))
        except KafkaException as exc:
            last = f"metadata request failed: {exc}"
            continue
        described = metadata.topics.get(topic)
        if described is None or described.error is not None:
            last = f"topic not in metadata ({described.error if described else 'absent'})"
        elif len(described.partitions) != partitions:
            last = f"metadata shows {len(described.partitions)} partitions"
        elif any(p.leader < 0 or p.error is not None for p in described.partitions.values()):
            last = "a partition has no leader"
        else:
            return
        time.sleep(0.1)
    fail(name, f"topic {topic} never became usable: {last}")


def transactional_producer(name, bootstrap, transactional_id, **extra):
    config = {
        **client_config(bootstrap, name),
        "transactional.id": transactional_id,
        "linger.ms": 5,
        "message.timeout.ms": 30000,
        "request.timeout.ms": 10000,
        **extra,
    }
    return Producer(config)


def produce_acknowledged(producer, topic, records, timeout_s=60):
    """Produces ``records``, each ``(partition, value)`` keyed by its value
    or ``(partition, key, value)``, and waits until each is acknowledged.
    Returns [(partition, offset, value)] in acknowledgement order; raises
    KafkaException with the first delivery error, or a timeout."""
    acks = []
    errors = []

    def delivered(err, msg):
        if err is not None:
            errors.append(err)
        else:
            acks.append((msg.partition(), msg.offset(), msg.value()))

    for record in records:
        partition, key, value = record if len(record) == 3 else (record[0], record[1], record[1])
        while True:
            try:
                producer.produce(topic, key=key, value=value, partition=partition, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
    left = producer.flush(timeout_s)
    if errors:
        raise KafkaException(errors[0])
    if left:
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, f"{left} records unacknowledged"))
    return acks


def read_committed_member(name, bootstrap, group, **extra):
    """A consumer in ``group`` that reads at read_committed from the
    earliest offset when the group has none, committing nothing itself
    (the transactions commit its offsets)."""
    return Consumer(
        {
            **client_config(bootstrap, name),
            "group.id": group,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 100,
            **extra,
        }
    )


def send_copies(producer, consumer, output, copies, timeout_s=30):
    """The body of a consume-transform-produce transaction: begins one,
    writes ``copies`` (``(partition, key, value)``) to ``output``, waits
    until every copy is acknowledged (so that an abort, or a kill, leaves
    them all written), and adds the consumer's positions with
    send_offsets_to_transaction. The caller commits or aborts. Returns the
    positions sent."""
    producer.begin_transaction()
    produce_acknowledged(producer, output, copies)
    positions = [tp for tp in consumer.position(consumer.assignment()) if tp.offset >= 0]
    producer.send_offsets_to_transaction(positions, consumer.consumer_group_metadata(), timeout_s)
    return positions


def log_ends(name, bootstrap, topic, partitions, isolation, deadline):
    """Each partition's end as ListOffsets at ``isolation`` reports it: the
    high watermark at read_uncommitted, the last stable offset at
    read_committed."""
    consumer = Consumer(
        {
            **client_config(bootstrap, name),
            "group.id": f"{topic}-ends",
            "isolation.level": isolation,
            "enable.auto.commit": False,
        }
    )
    try:
        return {
            p: consumer.get_watermark_offsets(
                TopicPartition(topic, p), timeout=min(30, deadline.remaining())
            )[1]
            for p in range(partitions)
        }
    finally:
        consumer.close()


def wait_for_ends(name, bootstrap, topic, partitions, wanted, deadline, within_s=15):
    """Waits until both the high watermark and the last stable offset of
    every partition are at ``wanted``: a transaction's markers are written
    after EndTxn is answered, so they may come a little after."""
    end = time.monotonic() + min(within_s, deadline.remaining())
    while True:
        high = log_ends(name, bootstrap, topic, partitions, "read_uncommitted", deadline)
        stable = log_ends(name, bootstrap, topic, partitions, "read_committed", deadline)
        if high == wanted and stable == wanted:
            return
        if time.monotonic() >= end:
            fail(
                name,
                f"log ends {high} and last stable offsets {stable} did not reach {wanted} "
                f"within {within_s} s",
            )
        time.sleep(0.1)


def read_partitions(name, bootstrap, topic, partitions, isolation, deadline, until=None):
    """Reads every partition from the beginning at ``isolation`` by manual
    assignment, to the partition EOF of each (or, with ``until``, until a
    record with that value was read). Returns ({partition: [(offset,
    value)]}, {partition: offset of the EOF})."""
    consumer = Consumer(
        {
            **client_config(bootstrap, name),
            "group.id": f"{topic}-{isolation}-reader",
            "isolation.level": isolation,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "error",
            "fetch.wait.max.ms": 100,
        }
    )
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    read = {p: [] for p in range(partitions)}
    eof = {}
    try:
        while True:
            if until is None and len(eof) == partitions:
                return read, eof
            if until is not None and any(v == until for rs in read.values() for _, v in rs):
                return read, eof
            if deadline.expired():
                counts = {p: len(r) for p, r in read.items()}
                fail(name, f"{isolation}: read {counts}, EOF at {eof}, before the deadline")
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error() is not None:
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    eof[msg.partition()] = msg.offset()
                    continue
                fail(name, f"{isolation}: consume error: {msg.error()}")
            eof.pop(msg.partition(), None)
            read[msg.partition()].append((msg.offset(), msg.value()))
    finally:
        consumer.close()
