//! `sluice transactions`: what Kafka's `kafka-transactions.sh` shows of
//! transactions, through sluice-client's `Admin`.
//!
//! - `list` asks every broker (ListTransactions) for the transactions it
//!   coordinates: transactional id, coordinator, producer id, state.
//! - `describe --transactional-id ID` finds the id's coordinator
//!   (FindCoordinator, key type 1) and asks it (DescribeTransactions): the
//!   producer id and epoch, the state, the timeout, when the open
//!   transaction started and the partitions it wrote to.
//!
//! Both print a table, or with `--json` one JSON document on stdout.

use clap::{Args, Subcommand};
use serde_json::{json, Value};
use sluice_client::{Admin, ResponseError, TransactionDescription, TransactionListing};

use super::{json_line, print_stdout, table, CliError, ConnectionArgs};

#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum TransactionsCommand {
    /// List every transactional id the brokers coordinate, with its
    /// coordinator, producer id and state.
    List(ListArgs),
    /// Show one transactional id: producer id and epoch, state, timeout,
    /// and the open transaction's start time and partitions.
    Describe(DescribeArgs),
}

#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct ListArgs {
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Print the transactions as a JSON array.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct DescribeArgs {
    /// The transactional id to describe.
    #[arg(long, value_name = "ID", value_parser = parse_transactional_id)]
    pub transactional_id: String,
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Print the description as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A transactional id: not empty, as brokers refuse an empty one.
pub fn parse_transactional_id(text: &str) -> Result<String, String> {
    if text.is_empty() {
        Err("a transactional id must not be empty".into())
    } else {
        Ok(text.to_string())
    }
}

pub async fn run(command: TransactionsCommand) -> Result<(), CliError> {
    match command {
        TransactionsCommand::List(args) => list(args).await,
        TransactionsCommand::Describe(args) => describe(args).await,
    }
}

/// A client error about transactions, with a broker refusal told by its
/// Kafka name (and what it means for the ones a user meets).
fn transaction_error(what: &str, error: &sluice_client::Error) -> CliError {
    CliError::refused(what, error, |code| match code {
        ResponseError::TransactionalIdNotFound => " (no such transactional id)",
        ResponseError::CoordinatorNotAvailable => " (the transaction coordinator is not available)",
        _ => "",
    })
}

async fn list(args: ListArgs) -> Result<(), CliError> {
    let admin = Admin::new(args.connection.client(false)?);
    let listings = args
        .connection
        .bounded_with(
            "list transactions",
            admin.list_transactions(),
            transaction_error,
        )
        .await?;
    let output = if args.json {
        json_line(&Value::Array(listings.iter().map(listing_json).collect()))
    } else {
        listing_text(&listings)
    };
    print_stdout(&output)
}

async fn describe(args: DescribeArgs) -> Result<(), CliError> {
    let admin = Admin::new(args.connection.client(false)?);
    let what = format!("describe transaction {}", args.transactional_id);
    let ids = [args.transactional_id.clone()];
    let mut descriptions = args
        .connection
        .bounded_with(&what, admin.describe_transactions(&ids), transaction_error)
        .await?;
    let Some(description) = descriptions.pop() else {
        return Err(CliError::Failed(format!("{what}: no answer")));
    };
    let output = if args.json {
        json_line(&description_json(&description))
    } else {
        description_text(&description)
    };
    print_stdout(&output)
}

/// The human form of `list`: a table, nothing at all without transactions.
pub fn listing_text(listings: &[TransactionListing]) -> String {
    if listings.is_empty() {
        return String::new();
    }
    let mut rows = vec![[
        "TRANSACTIONAL-ID".to_string(),
        "COORDINATOR".to_string(),
        "PRODUCER-ID".to_string(),
        "STATE".to_string(),
    ]];
    for listing in listings {
        rows.push([
            listing.transactional_id.clone(),
            listing.coordinator_id.to_string(),
            listing.producer_id.to_string(),
            listing.state.clone(),
        ]);
    }
    table(&rows)
}

pub fn listing_json(listing: &TransactionListing) -> Value {
    json!({
        "transactional_id": listing.transactional_id,
        "coordinator": listing.coordinator_id,
        "producer_id": listing.producer_id,
        "state": listing.state,
    })
}

/// The partitions as `topic-P,topic-P`, or `-` for none.
fn partitions_text(description: &TransactionDescription) -> String {
    if description.partitions.is_empty() {
        return "-".to_string();
    }
    let names: Vec<String> = description
        .partitions
        .iter()
        .map(|tp| format!("{}-{}", tp.topic, tp.partition))
        .collect();
    names.join(",")
}

/// The human form of `describe`: one table row, as Kafka's tool prints it;
/// a start time of -1 (no open transaction) is shown as `-`.
pub fn description_text(description: &TransactionDescription) -> String {
    let start = match description.transaction_start_time_ms {
        time_ms if time_ms < 0 => "-".to_string(),
        time_ms => time_ms.to_string(),
    };
    table(&[
        [
            "COORDINATOR".to_string(),
            "TRANSACTIONAL-ID".to_string(),
            "PRODUCER-ID".to_string(),
            "EPOCH".to_string(),
            "STATE".to_string(),
            "TIMEOUT-MS".to_string(),
            "START-TIME-MS".to_string(),
            "PARTITIONS".to_string(),
        ],
        [
            description.coordinator_id.to_string(),
            description.transactional_id.clone(),
            description.producer_id.to_string(),
            description.producer_epoch.to_string(),
            description.state.clone(),
            description.transaction_timeout_ms.to_string(),
            start,
            partitions_text(description),
        ],
    ])
}

pub fn description_json(description: &TransactionDescription) -> Value {
    let partitions: Vec<Value> = description
        .partitions
        .iter()
        .map(|tp| json!({"topic": tp.topic, "partition": tp.partition}))
        .collect();
    json!({
        "transactional_id": description.transactional_id,
        "coordinator": description.coordinator_id,
        "producer_id": description.producer_id,
        "producer_epoch": description.producer_epoch,
        "state": description.state,
        "transaction_timeout_ms": description.transaction_timeout_ms,
        "transaction_start_time_ms": description.transaction_start_time_ms,
        "partitions": partitions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use sluice_client::TopicPartition;

    #[derive(Parser, Debug)]
    struct Wrapper {
        #[command(subcommand)]
        command: TransactionsCommand,
    }

    fn parse(args: &[&str]) -> Result<TransactionsCommand, clap::Error> {
        Wrapper::try_parse_from(std::iter::once("transactions").chain(args.iter().copied()))
            .map(|w| w.command)
    }

    #[test]
    fn describe_wants_a_non_empty_transactional_id() {
        match parse(&["describe", "--transactional-id", "payments", "--json"]).unwrap() {
            TransactionsCommand::Describe(args) => {
                assert_eq!(args.transactional_id, "payments");
                assert!(args.json);
            }
            other => panic!("parsed as {other:?}"),
        }
        for bad in [&["describe"][..], &["describe", "--transactional-id", ""]] {
            assert_eq!(parse(bad).unwrap_err().exit_code(), 2, "{bad:?}");
        }
        assert!(matches!(
            parse(&["list"]).unwrap(),
            TransactionsCommand::List(_)
        ));
    }

    #[test]
    fn a_description_prints_as_one_row() {
        let description = TransactionDescription {
            transactional_id: "payments".into(),
            coordinator_id: 1,
            state: "Ongoing".into(),
            producer_id: 4000,
            producer_epoch: 2,
            transaction_timeout_ms: 60_000,
            transaction_start_time_ms: 1_700_000_000_000,
            partitions: vec![TopicPartition::new("a", 0), TopicPartition::new("a", 3)],
        };
        assert_eq!(
            description_text(&description),
            "COORDINATOR  TRANSACTIONAL-ID  PRODUCER-ID  EPOCH  STATE    TIMEOUT-MS  START-TIME-MS  PARTITIONS\n\
             1            payments          4000         2      Ongoing  60000       1700000000000  a-0,a-3\n"
        );
        let idle = TransactionDescription {
            state: "CompleteCommit".into(),
            transaction_start_time_ms: -1,
            partitions: Vec::new(),
            ..description
        };
        let text = description_text(&idle);
        assert!(
            text.ends_with("CompleteCommit  60000       -              -\n"),
            "{text}"
        );
    }
}
