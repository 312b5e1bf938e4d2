//! The transaction coordinator through a node: requests in, records in
//! `__transaction_state`, answers only once durable, state after a crash.

use super::*;
use crate::txn::{TxnState, TXN_TOPIC};

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
    let fenced = h.node.broker.transactions.get("t1").expect("kept").clone();
    assert_eq!(
        (fenced.state, fenced.epoch),
        (TxnState::PrepareAbort, epoch + 1)
    );
    assert_eq!(
        end_txn(&mut h, "t1", (producer_id, epoch), true),
        ResponseError::ProducerFenced.code()
    );
}
