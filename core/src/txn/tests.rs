use super::*;

fn tp(topic: &str, partition: i32) -> TopicPartition {
    TopicPartition::new(topic, partition)
}

fn set(partitions: &[(&str, i32)]) -> BTreeSet<TopicPartition> {
    partitions.iter().map(|(t, p)| tp(t, *p)).collect()
}

fn no_new_id() -> Result<i64, ResponseError> {
    panic!("no new producer id expected")
}

fn written(init: Init) -> TxnMetadata {
    match init {
        Init::Write(next) => next,
        other => panic!("expected a record, got {other:?}"),
    }
}

/// An id through a first init and an open transaction on two partitions.
fn ongoing() -> TxnMetadata {
    let meta = TxnMetadata::new(1000, 60_000, 0);
    let meta = written(meta.init(60_000, None, 1, no_new_id));
    meta.add_partitions(1000, meta.epoch, &set(&[("a", 0), ("b", 1)]), 5)
        .unwrap()
        .unwrap()
}

#[test]
fn an_init_bumps_the_epoch_and_clears_the_last_transaction() {
    let meta = TxnMetadata::new(1000, 60_000, 0);
    let next = written(meta.init(30_000, None, 10, no_new_id));
    meta.assert_transition(&next);
    assert_eq!(
        (next.producer_id, next.epoch, next.state),
        (1000, 1, TxnState::Empty)
    );
    assert_eq!(next.timeout_ms, 30_000);
    assert_eq!(next.last_update_ms, 10);
}

#[test]
fn kip_360_retries_are_answered_again_and_strangers_fenced() {
    let meta = TxnMetadata::new(1000, 60_000, 0);
    let bumped = written(meta.init(60_000, Some((1000, 0)), 1, no_new_id));
    assert_eq!((bumped.epoch, bumped.last_epoch), (1, 0));
    // The same request again (its answer was lost): the same epoch.
    assert_eq!(
        bumped.init(60_000, Some((1000, 0)), 2, no_new_id),
        Init::Again {
            producer_id: 1000,
            epoch: 1
        }
    );
    // An epoch it never had, or another producer id: fenced.
    assert_eq!(
        bumped.init(60_000, Some((1000, 7)), 2, no_new_id),
        Init::Refused(ResponseError::ProducerFenced)
    );
    assert_eq!(
        bumped.init(60_000, Some((999, 1)), 2, no_new_id),
        Init::Refused(ResponseError::ProducerFenced)
    );
}

#[test]
fn an_init_over_an_open_transaction_aborts_it_under_a_new_epoch() {
    let meta = ongoing();
    let Init::FenceOpen(next) = meta.init(60_000, None, 100, no_new_id) else {
        panic!("an open transaction is fenced");
    };
    meta.assert_transition(&next);
    assert_eq!(next.state, TxnState::PrepareAbort);
    assert_eq!(next.epoch, meta.epoch + 1);
    assert_eq!(
        next.partitions, meta.partitions,
        "its markers go where it wrote"
    );
    // The old instance can no longer end it.
    assert_eq!(
        next.end(1000, meta.epoch, true, 101),
        Err(ResponseError::ProducerFenced)
    );
    // While its markers are written, inits wait.
    assert_eq!(
        next.init(60_000, None, 102, no_new_id),
        Init::Refused(ResponseError::ConcurrentTransactions)
    );
    let done = next.completed(103);
    assert_eq!(done.state, TxnState::CompleteAbort);
    let again = written(done.init(60_000, None, 104, no_new_id));
    assert_eq!(again.epoch, meta.epoch + 2);
}

#[test]
fn an_exhausted_epoch_moves_to_a_new_producer_id() {
    let mut meta = TxnMetadata::new(1000, 60_000, 0);
    meta.epoch = i16::MAX - 1;
    let next = written(meta.init(60_000, Some((1000, i16::MAX - 1)), 5, || Ok(2000)));
    assert_eq!((next.producer_id, next.epoch), (2000, 0));
    assert_eq!(next.prev_producer_id, 1000);
    // The retry names the old id and epoch: recognised, answered again.
    assert_eq!(
        next.init(60_000, Some((1000, i16::MAX - 1)), 6, no_new_id),
        Init::Again {
            producer_id: 2000,
            epoch: 0
        }
    );
}

#[test]
fn partitions_join_the_open_transaction_once() {
    let meta = ongoing();
    assert_eq!(meta.state, TxnState::Ongoing);
    assert_eq!(meta.start_ms, 5);
    // Already in: nothing to record.
    assert_eq!(
        meta.add_partitions(1000, meta.epoch, &set(&[("a", 0)]), 6),
        Ok(None)
    );
    let more = meta
        .add_partitions(1000, meta.epoch, &set(&[("c", 2)]), 7)
        .unwrap()
        .unwrap();
    assert_eq!(more.partitions.len(), 3);
    assert_eq!(
        more.start_ms, 5,
        "the transaction started with its first partition"
    );
    assert_eq!(
        meta.add_partitions(1000, meta.epoch - 1, &set(&[("c", 2)]), 7),
        Err(ResponseError::ProducerFenced)
    );
    assert_eq!(
        meta.add_partitions(1001, meta.epoch, &set(&[("c", 2)]), 7),
        Err(ResponseError::InvalidProducerIdMapping)
    );
}

#[test]
fn an_end_prepares_then_completes_and_its_retry_succeeds() {
    let meta = ongoing();
    let prepared = meta.end(1000, meta.epoch, true, 10).unwrap().unwrap();
    meta.assert_transition(&prepared);
    assert_eq!(prepared.state, TxnState::PrepareCommit);
    assert_eq!(
        prepared.end(1000, meta.epoch, true, 11),
        Err(ResponseError::ConcurrentTransactions)
    );
    assert_eq!(
        prepared.end(1000, meta.epoch, false, 11),
        Err(ResponseError::InvalidTxnState)
    );
    // No partition may join until the markers are written.
    assert_eq!(
        prepared.add_partitions(1000, meta.epoch, &set(&[("a", 0)]), 11),
        Err(ResponseError::ConcurrentTransactions)
    );
    let complete = prepared.completed(12);
    prepared.assert_transition(&complete);
    assert!(complete.partitions.is_empty());
    assert_eq!(complete.end(1000, meta.epoch, true, 13), Ok(None));
    assert_eq!(
        complete.end(1000, meta.epoch, false, 13),
        Err(ResponseError::InvalidTxnState)
    );
    // A new transaction starts from the completed one.
    let next = complete
        .add_partitions(1000, meta.epoch, &set(&[("z", 0)]), 20)
        .unwrap()
        .unwrap();
    assert_eq!(next.partitions, set(&[("z", 0)]));
    assert_eq!(next.start_ms, 20);
}

#[test]
fn an_end_without_a_transaction_is_refused() {
    let meta = written(TxnMetadata::new(1000, 60_000, 0).init(60_000, None, 1, no_new_id));
    assert_eq!(
        meta.end(1000, meta.epoch, true, 2),
        Err(ResponseError::InvalidTxnState)
    );
}

#[test]
fn timeouts_and_expiry_follow_kafkas_comparisons() {
    let meta = ongoing();
    assert!(!meta.timed_out(5 + 60_000));
    assert!(meta.timed_out(5 + 60_001));
    let complete = meta
        .end(1000, meta.epoch, false, 10)
        .unwrap()
        .unwrap()
        .completed(11);
    assert!(!complete.timed_out(1_000_000));
    assert!(complete.expired(11 + 100, 100));
    assert!(!complete.expired(11 + 99, 100));
    assert!(
        !meta.expired(1_000_000_000, 100),
        "an open transaction never expires"
    );
}

#[test]
fn verification_needs_the_partition_in_this_epochs_transaction() {
    let meta = ongoing();
    assert_eq!(meta.verify(1000, meta.epoch, &tp("a", 0)), Ok(()));
    assert_eq!(
        meta.verify(1000, meta.epoch, &tp("q", 0)),
        Err(ResponseError::InvalidTxnState)
    );
    assert_eq!(
        meta.verify(1000, meta.epoch - 1, &tp("a", 0)),
        Err(ResponseError::InvalidProducerEpoch)
    );
    let ended = meta.end(1000, meta.epoch, true, 9).unwrap().unwrap();
    assert_eq!(
        ended.verify(1000, meta.epoch, &tp("a", 0)),
        Err(ResponseError::InvalidTxnState)
    );
}

#[test]
#[should_panic(expected = "may not go from")]
fn a_transition_kafka_forbids_is_caught() {
    let meta = TxnMetadata::new(1000, 60_000, 0);
    let mut wrong = meta.clone();
    wrong.state = TxnState::CompleteCommit;
    meta.assert_transition(&wrong);
}
