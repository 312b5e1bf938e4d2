//! Transaction administration, what Kafka's `kafka-transactions.sh` does
//! through its admin client: list the transactions every broker
//! coordinates (ListTransactions, asked of each broker, as each answers
//! only for the transactional ids it coordinates) and describe one
//! (FindCoordinator with key type 1, then DescribeTransactions to that
//! coordinator).
//!
//! Coordinator errors (NOT_COORDINATOR, COORDINATOR_NOT_AVAILABLE,
//! COORDINATOR_LOAD_IN_PROGRESS) and lost connections are retried up to
//! `ADMIN_ATTEMPTS_MAX` times; every other error is returned with its
//! Kafka code.

use std::collections::BTreeMap;

use kafka_protocol::messages::{
    ApiKey, DescribeTransactionsRequest, ListTransactionsRequest, TransactionalId,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::{Admin, Target, ADMIN_ATTEMPTS_MAX};
use crate::connector::Connector;
use crate::error::{check_code, Error, Result};
use crate::group::member::find_coordinator;
use crate::record::TopicPartition;

/// FindCoordinator's key type of a transactional id.
const KEY_TYPE_TRANSACTION: i8 = 1;

/// A transaction as ListTransactions reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionListing {
    pub transactional_id: String,
    /// The broker that coordinates it (the one that listed it).
    pub coordinator_id: i32,
    pub producer_id: i64,
    /// Kafka's name of the state: `Empty`, `Ongoing`, `PrepareCommit`,
    /// `CompleteCommit`, ...
    pub state: String,
}

/// A transaction as DescribeTransactions reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionDescription {
    pub transactional_id: String,
    pub coordinator_id: i32,
    pub state: String,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub transaction_timeout_ms: i32,
    /// When the open transaction started (ms since the epoch); -1 when
    /// none is open.
    pub transaction_start_time_ms: i64,
    /// The partitions of the open transaction, sorted.
    pub partitions: Vec<TopicPartition>,
}

/// The errors after which the coordinator is looked up again.
fn coordinator_moved(error: &Error) -> bool {
    match error {
        Error::Broker { error, .. } => matches!(
            error,
            ResponseError::NotCoordinator
                | ResponseError::CoordinatorNotAvailable
                | ResponseError::CoordinatorLoadInProgress
        ),
        other => other.is_retriable(),
    }
}

impl<C: Connector> Admin<C> {
    /// Every transaction of every broker, sorted by transactional id.
    pub async fn list_transactions(&self) -> Result<Vec<TransactionListing>> {
        self.client.refresh_metadata_with(Some(&[]), false).await?;
        let brokers: Vec<i32> = self.client.metadata().brokers.keys().copied().collect();
        let mut listings = BTreeMap::new();
        for broker in brokers {
            // A broker still loading its transaction log says so; ask
            // again, as Kafka's admin client does.
            let mut attempt = 1;
            let response = loop {
                let response = self
                    .request_to(ApiKey::ListTransactions, Target::Broker(broker), |_| {
                        ListTransactionsRequest::default()
                    })
                    .await?;
                let loading = matches!(
                    ResponseError::try_from_code(response.error_code),
                    Some(ResponseError::CoordinatorLoadInProgress)
                        | Some(ResponseError::CoordinatorNotAvailable)
                );
                if !loading || attempt >= ADMIN_ATTEMPTS_MAX {
                    break response;
                }
                self.client.retry_pause(attempt).await;
                attempt += 1;
            };
            check_code(response.error_code, || {
                format!("list transactions on broker {broker}")
            })?;
            for state in response.transaction_states {
                let transactional_id = state.transactional_id.0.to_string();
                let listing = TransactionListing {
                    transactional_id: transactional_id.clone(),
                    coordinator_id: broker,
                    producer_id: state.producer_id.0,
                    state: state.transaction_state.to_string(),
                };
                listings.insert(transactional_id, listing);
            }
        }
        Ok(listings.into_values().collect())
    }

    /// Each transactional id's state, producer and open partitions, in the
    /// order given. An id no coordinator knows fails with
    /// TRANSACTIONAL_ID_NOT_FOUND.
    pub async fn describe_transactions(
        &self,
        transactional_ids: &[String],
    ) -> Result<Vec<TransactionDescription>> {
        let mut descriptions = Vec::with_capacity(transactional_ids.len());
        for transactional_id in transactional_ids {
            descriptions.push(self.describe_transaction(transactional_id).await?);
        }
        Ok(descriptions)
    }

    async fn describe_transaction(&self, transactional_id: &str) -> Result<TransactionDescription> {
        if transactional_id.is_empty() {
            return Err(Error::Config("a transactional id must not be empty".into()));
        }
        let context = format!("describe transaction {transactional_id}");
        let mut attempt = 1;
        loop {
            let result = self.describe_once(transactional_id, &context).await;
            match result {
                Err(error) if coordinator_moved(&error) && attempt < ADMIN_ATTEMPTS_MAX => {
                    tracing::debug!(%error, attempt, "describe transaction failed; retrying");
                    self.client.retry_pause(attempt).await;
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    async fn describe_once(
        &self,
        transactional_id: &str,
        context: &str,
    ) -> Result<TransactionDescription> {
        let coordinator = find_coordinator(
            &self.client,
            KEY_TYPE_TRANSACTION,
            transactional_id,
            context,
        )
        .await?;
        let id = TransactionalId(StrBytes::from_string(transactional_id.to_string()));
        let response = self
            .request_to(
                ApiKey::DescribeTransactions,
                Target::Broker(coordinator.node_id),
                |_| DescribeTransactionsRequest::default().with_transactional_ids(vec![id.clone()]),
            )
            .await?;
        let Some(state) = response.transaction_states.into_iter().next() else {
            return Err(Error::Protocol {
                address: format!("broker {}", coordinator.node_id),
                detail: "DescribeTransactions answered no transaction".into(),
            });
        };
        check_code(state.error_code, || context.to_string())?;
        let mut partitions: Vec<TopicPartition> = state
            .topics
            .iter()
            .flat_map(|topic| {
                topic
                    .partitions
                    .iter()
                    .map(|partition| TopicPartition::new(topic.topic.0.to_string(), *partition))
            })
            .collect();
        partitions.sort();
        Ok(TransactionDescription {
            transactional_id: transactional_id.to_string(),
            coordinator_id: coordinator.node_id,
            state: state.transaction_state.to_string(),
            producer_id: state.producer_id.0,
            producer_epoch: state.producer_epoch,
            transaction_timeout_ms: state.transaction_timeout_ms,
            transaction_start_time_ms: state.transaction_start_time_ms,
            partitions,
        })
    }
}
