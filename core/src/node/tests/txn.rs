//! The transaction coordinator through a node: requests in, records in
//! `__transaction_state`, answers only once durable, state after a crash.

use super::*;
use crate::broker::txns::{MarkerProgress, MARKER_RETRY_MS};
use crate::txn::{TxnState, TXN_TOPIC};
use crate::types::TopicPartition;

/// Few partitions keep the tests' directories small.
const CONFIG: &[(&str, &str)] = &[("transaction.state.log.num.partitions", "3")];

fn txn_id(id: &str) -> TransactionalId {
    TransactionalId(StrBytes::from_string(id.into()))
}

fn find_txn_coordinator(h: &mut Harness, id: &str) -> (i16, i32) {
    let request = FindCoordinatorRequest::default()
        .with_key_type(1)
        .with_key(StrBytes::from_string(id.into()));
    let c = h.send(ApiKey::FindCoordinator, 3, &request);
    h.sync_all();
    let response: FindCoordinatorResponse = h.take(ApiKey::FindCoordinator, 3, c);
    (response.error_code, response.node_id.0)
}

fn init_txn(h: &mut Harness, id: &str, expected: Option<(i64, i16)>) -> (i16, i64, i16) {
    let (producer_id, epoch) = expected.unwrap_or((-1, -1));
    let request = InitProducerIdRequest::default()
        .with_transactional_id(Some(txn_id(id)))
        .with_transaction_timeout_ms(60_000)
        .with_producer_id(ProducerId(producer_id))
        .with_producer_epoch(epoch);
    let c = h.send(ApiKey::InitProducerId, 4, &request);
    let unsynced = h.sent.len();
    h.sync_all();
    let response: InitProducerIdResponse = h.take(ApiKey::InitProducerId, 4, c);
    if response.error_code == 0 {
        assert_eq!(
            unsynced, 0,
            "an init is answered only once its record is durable"
        );
    }
    (
        response.error_code,
        response.producer_id.0,
        response.producer_epoch,
    )
}

fn add_partitions(
    h: &mut Harness,
    id: &str,
    producer: (i64, i16),
    topic: &str,
    partitions: &[i32],
) -> Vec<i16> {
    let request = AddPartitionsToTxnRequest::default()
        .with_v3_and_below_transactional_id(txn_id(id))
        .with_v3_and_below_producer_id(ProducerId(producer.0))
        .with_v3_and_below_producer_epoch(producer.1)
        .with_v3_and_below_topics(vec![
            add_partitions_to_txn_request::AddPartitionsToTxnTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.into())))
                .with_partitions(partitions.to_vec()),
        ]);
    let c = h.send(ApiKey::AddPartitionsToTxn, 3, &request);
    h.sync_all();
    let response: AddPartitionsToTxnResponse = h.take(ApiKey::AddPartitionsToTxn, 3, c);
    response.results_by_topic_v3_and_below[0]
        .results_by_partition
        .iter()
        .map(|p| p.partition_error_code)
        .collect()
}

fn end_txn(h: &mut Harness, id: &str, producer: (i64, i16), commit: bool) -> i16 {
    let request = EndTxnRequest::default()
        .with_transactional_id(txn_id(id))
        .with_producer_id(ProducerId(producer.0))
        .with_producer_epoch(producer.1)
        .with_committed(commit);
    let c = h.send(ApiKey::EndTxn, 3, &request);
    h.sync_all();
    let response: EndTxnResponse = h.take(ApiKey::EndTxn, 3, c);
    response.error_code
}

fn state_of(h: &Harness, id: &str) -> Option<TxnState> {
    h.node.broker.transactions.get(id).map(|m| m.state)
}

#[test]
fn the_coordinator_is_found_and_inits_bump_the_epoch() {
    let mut h = Harness::new(MemStorage::new(), CONFIG);
    assert_eq!(find_txn_coordinator(&mut h, "t1"), (0, 1));
    assert_eq!(h.node.broker.topics.partition_count(TXN_TOPIC), 3);
    let (error, producer_id, epoch) = init_txn(&mut h, "t1", None);
    assert_eq!((error, epoch), (0, 0));
    assert_eq!(init_txn(&mut h, "t1", None), (0, producer_id, 1));
    // KIP-360: naming the current epoch bumps it; naming one it never had fences.
    assert_eq!(
        init_txn(&mut h, "t1", Some((producer_id, 1))),
        (0, producer_id, 2)
    );
    assert_eq!(
        init_txn(&mut h, "t1", Some((producer_id, 9))).0,
        ResponseError::ProducerFenced.code()
    );
    let (_, other, _) = init_txn(&mut h, "t2", None);
    assert_ne!(other, producer_id, "each id gets its own producer id");
}

#[test]
fn a_transaction_is_recorded_and_survives_a_crash() {
    let mut h = Harness::new(MemStorage::new(), CONFIG);
    h.create_topic("out", 2, &[]);
    let (_, producer_id, epoch) = init_txn(&mut h, "t1", None);
    assert_eq!(
        add_partitions(&mut h, "t1", (producer_id, epoch), "out", &[0, 1]),
        vec![0, 0]
    );
    assert_eq!(state_of(&h, "t1"), Some(TxnState::Ongoing));
    // A stale epoch, another producer id, an unknown partition.
    assert_eq!(
        add_partitions(&mut h, "t1", (producer_id, epoch - 1), "out", &[0]),
        vec![ResponseError::ProducerFenced.code()],
        "PRODUCER_FENCED from v2 on"
    );
    assert_eq!(
        add_partitions(&mut h, "t1", (producer_id, epoch), "out", &[0, 5]),
        vec![
            ResponseError::OperationNotAttempted.code(),
            ResponseError::UnknownTopicOrPartition.code()
        ]
    );
    let mut storage = std::mem::take(&mut h.node.broker.storage);
    storage.crash(3);
    let mut h = Harness::new(storage, CONFIG);
    let meta = h
        .node
        .broker
        .transactions
        .get("t1")
        .expect("loaded")
        .clone();
    assert_eq!(
        (meta.producer_id, meta.epoch, meta.state),
        (producer_id, epoch, TxnState::Ongoing)
    );
    assert_eq!(meta.partitions.len(), 2);
    // The next instance fences it: the open transaction aborts.
    assert_eq!(
        init_txn(&mut h, "t1", None).0,
        ResponseError::ConcurrentTransactions.code()
    );
    // Its markers are written (the partitions are this node's) and the
    // abort completes under the bumped epoch.
    let fenced = h.node.broker.transactions.get("t1").expect("kept").clone();
    assert_eq!(
        (fenced.state, fenced.epoch),
        (TxnState::CompleteAbort, epoch + 1)
    );
    assert_eq!(
        end_txn(&mut h, "t1", (producer_id, epoch), true),
        ResponseError::ProducerFenced.code()
    );
    // The new instance's retry bumps again.
    assert_eq!(init_txn(&mut h, "t1", None), (0, producer_id, epoch + 2));
}

/// One transactional record, as a producer with this id and epoch sends
/// its `sequence`-th batch to a partition.
fn send(h: &mut Harness, producer: (i64, i16), sequence: i32, value: &[u8]) -> (i16, i64) {
    h.produce_synced("t", txn_record(producer.0, producer.1, sequence, value))
}

/// What a read_committed consumer gets from offset 0 of "t": the batch
/// offsets, the last stable offset and the aborted transactions.
fn read_committed(h: &mut Harness) -> (Vec<i64>, i64, Vec<(i64, i64)>) {
    let c = h.fetch_at("t", 0, 0, 1, 1);
    let data = h.fetch_result(c);
    (
        batch_offsets(&data),
        data.last_stable_offset,
        aborted_in(&data).unwrap_or_default(),
    )
}

#[test]
fn a_commit_writes_its_markers_and_the_records_become_readable() {
    let mut h = Harness::new(MemStorage::new(), CONFIG);
    h.create_topic("t", 1, &[]);
    let (_, producer_id, epoch) = init_txn(&mut h, "tx", None);
    let producer = (producer_id, epoch);
    assert_eq!(add_partitions(&mut h, "tx", producer, "t", &[0]), vec![0]);
    assert_eq!(send(&mut h, producer, 0, b"a"), (0, 0));
    assert_eq!(send(&mut h, producer, 1, b"b"), (0, 1));
    // Open: nothing is stable yet.
    assert_eq!(read_committed(&mut h), (vec![], 0, vec![]));
    assert_eq!(end_txn(&mut h, "tx", producer, true), 0);
    // The EndTxn answer came once PREPARE was durable; the marker and
    // COMPLETE follow with the next syncs.
    h.sync_all();
    assert_eq!(state_of(&h, "tx"), Some(TxnState::CompleteCommit));
    let (offsets, lso, aborted) = read_committed(&mut h);
    assert_eq!(offsets, vec![0, 1, 2], "both records and the marker");
    assert_eq!((lso, aborted), (3, vec![]));
    // The next transaction aborts: its record is listed as aborted.
    assert_eq!(add_partitions(&mut h, "tx", producer, "t", &[0]), vec![0]);
    assert_eq!(send(&mut h, producer, 2, b"c"), (0, 3));
    assert_eq!(end_txn(&mut h, "tx", producer, false), 0);
    h.sync_all();
    assert_eq!(state_of(&h, "tx"), Some(TxnState::CompleteAbort));
    let (_, lso, aborted) = read_committed(&mut h);
    assert_eq!((lso, aborted), (5, vec![(producer_id, 3)]));
}

#[test]
fn a_partition_outside_the_transaction_is_refused_before_it_is_written() {
    let mut h = Harness::new(MemStorage::new(), CONFIG);
    h.create_topic("t", 1, &[]);
    let (_, producer_id, epoch) = init_txn(&mut h, "tx", None);
    // KIP-890: no AddPartitionsToTxn for "t"-0, so Produce v9 gets
    // INVALID_TXN_STATE and nothing is appended.
    assert_eq!(
        send(&mut h, (producer_id, epoch), 0, b"late"),
        (ResponseError::InvalidTxnState.code(), -1)
    );
    assert_eq!(
        h.node
            .broker
            .topics
            .partition("t", 0)
            .unwrap()
            .log
            .log_end_offset(),
        0
    );
    // A fenced epoch is told so.
    assert_eq!(
        add_partitions(&mut h, "tx", (producer_id, epoch), "t", &[0]),
        vec![0]
    );
    init_txn(&mut h, "tx", None);
    h.sync_all();
    assert_eq!(
        send(&mut h, (producer_id, epoch), 0, b"zombie").0,
        ResponseError::InvalidProducerEpoch.code()
    );
}

#[test]
fn a_transaction_past_its_timeout_is_aborted_by_the_sweep() {
    let mut h = Harness::new(MemStorage::new(), CONFIG);
    h.create_topic("t", 1, &[]);
    let (_, producer_id, epoch) = init_txn(&mut h, "tx", None);
    let producer = (producer_id, epoch);
    add_partitions(&mut h, "tx", producer, "t", &[0]);
    assert_eq!(send(&mut h, producer, 0, b"stuck"), (0, 0));
    // The default sweep runs every 10 s; the timeout is 60 s.
    h.now_ms += 30_000;
    h.node.handle_timeout(Now::at(h.now_ms));
    h.drain();
    h.sync_all();
    assert_eq!(state_of(&h, "tx"), Some(TxnState::Ongoing));
    h.now_ms += 40_000;
    h.node.handle_timeout(Now::at(h.now_ms));
    h.drain();
    h.sync_all();
    let meta = h.node.broker.transactions.get("tx").unwrap().clone();
    assert_eq!(
        (meta.state, meta.epoch),
        (TxnState::CompleteAbort, epoch + 1)
    );
    let (_, lso, aborted) = read_committed(&mut h);
    assert_eq!((lso, aborted), (2, vec![(producer_id, 0)]));
    // The producer that went silent is fenced.
    assert_eq!(
        end_txn(&mut h, "tx", producer, true),
        ResponseError::ProducerFenced.code()
    );
}

#[test]
fn a_prepared_commit_found_at_start_is_finished() {
    let mut h = Harness::new(MemStorage::new(), CONFIG);
    h.create_topic("t", 1, &[]);
    let (_, producer_id, epoch) = init_txn(&mut h, "tx", None);
    let producer = (producer_id, epoch);
    add_partitions(&mut h, "tx", producer, "t", &[0]);
    send(&mut h, producer, 0, b"x");
    // EndTxn's PREPARE becomes durable, then the node stops before the
    // marker is: only PREPARE is on disk.
    let request = EndTxnRequest::default()
        .with_transactional_id(txn_id("tx"))
        .with_producer_id(ProducerId(producer_id))
        .with_producer_epoch(epoch)
        .with_committed(true);
    h.send(ApiKey::EndTxn, 3, &request);
    let (id, targets) = h.pending_syncs.remove(0);
    for target in &targets {
        h.node.broker.storage.sync(target);
    }
    h.node.handle_synced(Now::at(h.now_ms), id, Ok(()));
    h.drain();
    let mut storage = std::mem::take(&mut h.node.broker.storage);
    storage.crash(1);
    let mut h = Harness::new(storage, CONFIG);
    h.sync_all();
    assert_eq!(state_of(&h, "tx"), Some(TxnState::CompleteCommit));
    let (offsets, lso, _) = read_committed(&mut h);
    assert_eq!((offsets, lso), (vec![0, 1], 2));
}

#[test]
fn offsets_sent_to_a_fresh_broker_join_the_transaction() {
    // No `__consumer_offsets` yet: AddOffsetsToTxn and TxnOffsetCommit must
    // place the group on the same partition the topic will have.
    let mut h = Harness::new(MemStorage::new(), CONFIG);
    h.create_topic("t", 1, &[]);
    let (_, producer_id, epoch) = init_txn(&mut h, "tx", None);
    let request = AddOffsetsToTxnRequest::default()
        .with_transactional_id(txn_id("tx"))
        .with_producer_id(ProducerId(producer_id))
        .with_producer_epoch(epoch)
        .with_group_id(GroupId(StrBytes::from_static_str("copier")));
    let c = h.send(ApiKey::AddOffsetsToTxn, 3, &request);
    h.sync_all();
    let response: AddOffsetsToTxnResponse = h.take(ApiKey::AddOffsetsToTxn, 3, c);
    assert_eq!(response.error_code, 0);
    assert!(!h.node.broker.topics.contains(OFFSETS_TOPIC));
    let commit = txn_offsets("copier", producer_id, epoch, "t", 0, 5);
    assert_eq!(txn_commit_error(&mut h, &commit), 0);
    assert_eq!(end_txn(&mut h, "tx", (producer_id, epoch), true), 0);
    h.sync_all();
    assert_eq!(committed(&mut h, "copier", "t"), 5);
}

/// Performs the syncs requested so far, not those they lead to.
fn sync_once(h: &mut Harness) {
    for (id, targets) in std::mem::take(&mut h.pending_syncs) {
        for target in &targets {
            h.node.broker.storage.sync(target);
        }
        h.node.handle_synced(Now::at(h.now_ms), id, Ok(()));
        h.drain();
    }
}

/// Commits an open transaction of "tx" up to the EndTxn answer: PREPARE
/// is durable, the marker written but not yet synced.
fn commit_until_answered(h: &mut Harness, producer: (i64, i16)) {
    let request = EndTxnRequest::default()
        .with_transactional_id(txn_id("tx"))
        .with_producer_id(ProducerId(producer.0))
        .with_producer_epoch(producer.1)
        .with_committed(true);
    let c = h.send(ApiKey::EndTxn, 3, &request);
    while h.sent.is_empty() {
        assert!(!h.pending_syncs.is_empty(), "EndTxn waits for a sync");
        sync_once(h);
    }
    let response: EndTxnResponse = h.take(ApiKey::EndTxn, 3, c);
    assert_eq!(response.error_code, 0);
    assert_eq!(state_of(h, "tx"), Some(TxnState::PrepareCommit));
}

fn add_request(producer: (i64, i16)) -> AddPartitionsToTxnRequest {
    AddPartitionsToTxnRequest::default()
        .with_v3_and_below_transactional_id(txn_id("tx"))
        .with_v3_and_below_producer_id(ProducerId(producer.0))
        .with_v3_and_below_producer_epoch(producer.1)
        .with_v3_and_below_topics(vec![
            add_partitions_to_txn_request::AddPartitionsToTxnTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("t")))
                .with_partitions(vec![0]),
        ])
}

fn add_error(response: &AddPartitionsToTxnResponse) -> i16 {
    response.results_by_topic_v3_and_below[0].results_by_partition[0].partition_error_code
}

#[test]
fn a_marker_put_back_for_a_retry_is_retried_while_the_producer_keeps_asking() {
    let mut h = Harness::new(MemStorage::new(), CONFIG);
    h.create_topic("t", 1, &[]);
    let (_, producer_id, epoch) = init_txn(&mut h, "tx", None);
    let producer = (producer_id, epoch);
    add_partitions(&mut h, "tx", producer, "t", &[0]);
    send(&mut h, producer, 0, b"x");
    // The commit's marker went to a leader whose link was then lost: it is
    // put back, to be tried again after the retry interval.
    let request = EndTxnRequest::default()
        .with_transactional_id(txn_id("tx"))
        .with_producer_id(ProducerId(producer_id))
        .with_producer_epoch(epoch)
        .with_committed(true);
    let c = h.send(ApiKey::EndTxn, 3, &request);
    let partition = TopicPartition::new("t".to_string(), 0);
    let entry = h.node.broker.transactions.ids.get_mut("tx").expect("tx");
    entry
        .markers
        .insert(partition.clone(), MarkerProgress::Sent);
    h.node.broker.marker_answered(
        Now::at(h.now_ms),
        "tx",
        producer_id,
        &partition,
        Some(ResponseError::NetworkException),
    );
    h.sync_all();
    let response: EndTxnResponse = h.take(ApiKey::EndTxn, 3, c);
    assert_eq!(response.error_code, 0, "answered once PREPARE is durable");
    // Requests keep coming every 20 ms while the transaction ends (as
    // librdkafka's AddPartitionsToTxn retries do); the marker must still
    // be retried once the interval has passed.
    let steps_max = 3 * MARKER_RETRY_MS / 20;
    for step in 1.. {
        assert!(
            step <= steps_max,
            "the marker was not retried within {} ms of asks",
            steps_max * 20
        );
        h.now_ms += 20;
        if h.node.poll_timeout().is_some_and(|at| at <= h.now_ms) {
            h.node.handle_timeout(Now::at(h.now_ms));
            h.drain();
        }
        h.sync_all();
        if state_of(&h, "tx") == Some(TxnState::CompleteCommit) {
            break;
        }
        let c = h.send(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
        let _: ApiVersionsResponse = h.take(ApiKey::ApiVersions, 3, c);
    }
    let (offsets, lso, _) = read_committed(&mut h);
    assert_eq!((offsets, lso), (vec![0, 1], 2), "the record and its marker");
}

#[test]
fn an_add_while_the_last_transaction_completes_is_answered_once_it_has() {
    let mut h = Harness::new(MemStorage::new(), CONFIG);
    h.create_topic("t", 1, &[]);
    let (_, producer_id, epoch) = init_txn(&mut h, "tx", None);
    let producer = (producer_id, epoch);
    assert_eq!(add_partitions(&mut h, "tx", producer, "t", &[0]), vec![0]);
    assert_eq!(send(&mut h, producer, 0, b"a"), (0, 0));
    commit_until_answered(&mut h, producer);
    // The next transaction's add, while the marker waits for its sync.
    let c = h.send(ApiKey::AddPartitionsToTxn, 3, &add_request(producer));
    assert!(h.sent.is_empty(), "held, not refused");
    h.sync_all();
    assert_eq!(state_of(&h, "tx"), Some(TxnState::Ongoing));
    let response: AddPartitionsToTxnResponse = h.take(ApiKey::AddPartitionsToTxn, 3, c);
    assert_eq!(add_error(&response), 0, "added to the next transaction");
    assert_eq!(send(&mut h, producer, 1, b"b"), (0, 2), "after the marker");
}

#[test]
fn a_held_add_gets_concurrent_transactions_if_the_last_one_does_not_complete_in_time() {
    let mut h = Harness::new(MemStorage::new(), CONFIG);
    h.create_topic("t", 1, &[]);
    let (_, producer_id, epoch) = init_txn(&mut h, "tx", None);
    let producer = (producer_id, epoch);
    assert_eq!(add_partitions(&mut h, "tx", producer, "t", &[0]), vec![0]);
    assert_eq!(send(&mut h, producer, 0, b"a"), (0, 0));
    commit_until_answered(&mut h, producer);
    let c = h.send(ApiKey::AddPartitionsToTxn, 3, &add_request(producer));
    // The marker's sync never comes.
    h.now_ms += crate::handlers::TXN_ADD_HOLD_MS_MAX - 1;
    h.node.handle_timeout(Now::at(h.now_ms));
    h.drain();
    assert!(h.sent.is_empty(), "held up to its bound");
    h.now_ms += 1;
    h.node.handle_timeout(Now::at(h.now_ms));
    h.drain();
    let response: AddPartitionsToTxnResponse = h.take(ApiKey::AddPartitionsToTxn, 3, c);
    assert_eq!(
        add_error(&response),
        ResponseError::ConcurrentTransactions.code()
    );
    // A stale epoch is refused at once, never held.
    let c = h.send(
        ApiKey::AddPartitionsToTxn,
        3,
        &add_request((producer_id, epoch - 1)),
    );
    let response: AddPartitionsToTxnResponse = h.take(ApiKey::AddPartitionsToTxn, 3, c);
    assert_eq!(add_error(&response), ResponseError::ProducerFenced.code());
}

/// AddPartitionsToTxn v4, verify only, as a partition leader on another
/// broker asks it: each partition's verdict on the producer's ongoing
/// transaction, and nothing written.
fn verify(h: &mut Harness, id: &str, producer: (i64, i16), partitions: &[i32]) -> Vec<i16> {
    let request = AddPartitionsToTxnRequest::default().with_transactions(vec![
        add_partitions_to_txn_request::AddPartitionsToTxnTransaction::default()
            .with_transactional_id(txn_id(id))
            .with_producer_id(ProducerId(producer.0))
            .with_producer_epoch(producer.1)
            .with_verify_only(true)
            .with_topics(vec![
                add_partitions_to_txn_request::AddPartitionsToTxnTopic::default()
                    .with_name(TopicName(StrBytes::from_string("t".into())))
                    .with_partitions(partitions.to_vec()),
            ]),
    ]);
    // Answered at once: nothing is written, no sync waited for.
    let c = h.send(ApiKey::AddPartitionsToTxn, 4, &request);
    let response: AddPartitionsToTxnResponse = h.take(ApiKey::AddPartitionsToTxn, 4, c);
    assert_eq!(response.error_code, 0);
    let result = &response.results_by_transaction[0];
    assert_eq!(result.transactional_id, txn_id(id));
    result.topic_results[0]
        .results_by_partition
        .iter()
        .map(|p| {
            assert!(partitions.contains(&p.partition_index));
            p.partition_error_code
        })
        .collect()
}

#[test]
fn a_leader_on_another_broker_gets_each_partitions_verdict() {
    let mut h = Harness::new(MemStorage::new(), CONFIG);
    h.create_topic("t", 2, &[]);
    let (_, producer_id, epoch) = init_txn(&mut h, "tx", None);
    let producer = (producer_id, epoch);
    let not_in = ResponseError::InvalidTxnState.code();
    assert_eq!(verify(&mut h, "tx", producer, &[0, 1]), [not_in, not_in]);
    assert_eq!(add_partitions(&mut h, "tx", producer, "t", &[0]), [0]);
    assert_eq!(verify(&mut h, "tx", producer, &[0, 1]), [0, not_in]);
    assert_eq!(
        verify(&mut h, "tx", (producer_id, epoch - 1), &[0]),
        [ResponseError::InvalidProducerEpoch.code()]
    );
    assert_eq!(
        verify(&mut h, "tx", (producer_id + 1, epoch), &[0]),
        [ResponseError::InvalidProducerIdMapping.code()]
    );
    assert_eq!(
        verify(&mut h, "other", producer, &[0]),
        [ResponseError::InvalidProducerIdMapping.code()]
    );
    // Once the transaction ends, a late write's partition is no longer in it.
    commit_until_answered(&mut h, producer);
    assert_eq!(verify(&mut h, "tx", producer, &[0]), [not_in]);
    h.sync_all();
    assert_eq!(state_of(&h, "tx"), Some(TxnState::CompleteCommit));
    assert_eq!(verify(&mut h, "tx", producer, &[0]), [not_in]);
}

/// A wall clock set back (here by an hour, after the transaction opened)
/// does not keep a transaction open past its timeout: the coordinator
/// also counts the time since it saw it open on the monotonic clock.
#[test]
fn a_wall_clock_set_back_does_not_keep_a_transaction_open() {
    let mut h = Harness::new(MemStorage::new(), CONFIG);
    h.create_topic("t", 1, &[]);
    let (_, producer_id, epoch) = init_txn(&mut h, "tx", None);
    let producer = (producer_id, epoch);
    add_partitions(&mut h, "tx", producer, "t", &[0]);
    assert_eq!(send(&mut h, producer, 0, b"stuck"), (0, 0));
    let set_back = |h: &mut Harness| {
        let now = Now {
            monotonic_ms: h.now_ms,
            wall_ms: h.now_ms - 3_600_000,
        };
        h.node.handle_timeout(now);
        h.drain();
        h.sync_all();
    };
    // The default sweep runs every 10 s; the timeout is 60 s.
    h.now_ms += 30_000;
    set_back(&mut h);
    assert_eq!(state_of(&h, "tx"), Some(TxnState::Ongoing));
    h.now_ms += 40_000;
    set_back(&mut h);
    let meta = h.node.broker.transactions.get("tx").unwrap().clone();
    assert_eq!(
        (meta.state, meta.epoch),
        (TxnState::CompleteAbort, epoch + 1)
    );
}
