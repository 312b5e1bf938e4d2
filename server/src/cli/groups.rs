//! `sluice groups list|describe|reset-offsets|delete`: consumer group
//! administration through the client's `Admin`, as Kafka's
//! `kafka-consumer-groups.sh` does it.
//!
//! - `list`: every group with its protocol type and state (ListGroups).
//! - `describe G`: the group's state, protocol and members with the
//!   partitions each was assigned (decoded from the consumer protocol's
//!   bytes), then one row per partition the group has a committed offset
//!   for or a member owns: committed offset, log end offset, lag and owner
//!   (DescribeGroups, OffsetFetch, ListOffsets).
//! - `reset-offsets G --topic T --to ...`: prints the plan (group, topic,
//!   partition, current and new offset) and, only with `--execute`,
//!   commits it for the group without being a member (OffsetCommit with
//!   generation -1), as `kafka-consumer-groups.sh --reset-offsets` does.
//!   Kafka refuses a reset while the group has members (their commits
//!   would undo it at once), plan or not, and so does this command: the
//!   group must be Empty, or not exist yet. `--to offset:N` is kept within
//!   the log, as Kafka keeps it; `--to timestamp:MS` takes the first offset
//!   whose timestamp is at or after MS, or the log end when there is none.
//! - `delete G`: DeleteGroups; a group with members fails with
//!   NON_EMPTY_GROUP.
//!
//! Output follows `topics`: tables for a person, one JSON document with
//! `--json`, built by pure functions so tests can pin them down without a
//! broker. Broker refusals are told by their Kafka name.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use clap::{Args, Subcommand};
use serde_json::{json, Value};
use sluice_client::{
    Admin, GroupDescription, GroupListing, OffsetSpec, ResponseError, TokioConnector,
    TopicPartition,
};

use super::consume::parse_group_id;
use super::{json_line, print_stdout, table, CliError, ConnectionArgs};

#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum GroupsCommand {
    /// List every consumer group with its protocol type and state.
    List(ListArgs),
    /// Show a group's members and, per partition, its committed offset,
    /// the log end offset, the lag and the owning member.
    Describe(DescribeArgs),
    /// Plan new committed offsets for a group on a topic, and commit them
    /// with --execute (the group must have no active members).
    ResetOffsets(ResetArgs),
    /// Delete a group and its committed offsets (it must have no members).
    Delete(DeleteArgs),
}

#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct ListArgs {
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Print the groups as a JSON array.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct DescribeArgs {
    /// The group's id.
    #[arg(value_parser = parse_group_id)]
    pub group: String,
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Print the description as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct ResetArgs {
    /// The group's id.
    #[arg(value_parser = parse_group_id)]
    pub group: String,
    /// The topic whose offsets to set.
    #[arg(long, short = 't')]
    pub topic: String,
    /// Only this partition (default: every partition of the topic).
    #[arg(long, short = 'p', value_name = "P", value_parser = clap::value_parser!(i32).range(0..))]
    pub partition: Option<i32>,
    /// Where to: earliest, latest, offset:N or timestamp:MS (the first
    /// record at or after MS milliseconds since the epoch).
    #[arg(long, value_name = "TARGET", value_parser = ResetTarget::parse)]
    pub to: ResetTarget,
    /// Commit the new offsets. Without it the plan is only printed.
    #[arg(long)]
    pub execute: bool,
    /// Only print the plan (the default; for scripts that want to say so).
    #[arg(long, conflicts_with = "execute")]
    pub dry_run: bool,
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct DeleteArgs {
    /// The group's id.
    #[arg(value_parser = parse_group_id)]
    pub group: String,
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Where `reset-offsets --to` moves the committed offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTarget {
    Earliest,
    Latest,
    Offset(i64),
    Timestamp(i64),
}

impl ResetTarget {
    pub fn parse(text: &str) -> Result<ResetTarget, String> {
        let number = |value: &str, what: &str| {
            value
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| format!("{what} wants a number >= 0, got `{value}`"))
        };
        match text.split_once(':') {
            None if text == "earliest" => Ok(ResetTarget::Earliest),
            None if text == "latest" => Ok(ResetTarget::Latest),
            Some(("offset", value)) => number(value, "offset:N").map(ResetTarget::Offset),
            Some(("timestamp", value)) => number(value, "timestamp:MS").map(ResetTarget::Timestamp),
            _ => Err(format!(
                "expected earliest, latest, offset:N or timestamp:MS, got `{text}`"
            )),
        }
    }
}

/// The group states in which offsets may be reset: no member could
/// overwrite them.
const INACTIVE_STATES: [&str; 2] = ["Empty", "Dead"];

pub async fn run(command: GroupsCommand) -> Result<(), CliError> {
    match command {
        GroupsCommand::List(args) => list(args).await,
        GroupsCommand::Describe(args) => describe(args).await,
        GroupsCommand::ResetOffsets(args) => reset_offsets(args).await,
        GroupsCommand::Delete(args) => delete(args).await,
    }
}

fn admin(connection: &ConnectionArgs) -> Result<Admin<TokioConnector>, CliError> {
    Ok(Admin::new(connection.client(false)?))
}

/// A client error about a group, with a broker refusal told by its Kafka
/// name (and what it means for the ones a user meets).
fn group_error(what: &str, error: &sluice_client::Error) -> CliError {
    CliError::refused(what, error, |code| match code {
        ResponseError::NonEmptyGroup => " (the group has active members)",
        ResponseError::GroupIdNotFound => " (the group does not exist)",
        ResponseError::InvalidGroupId => " (not a valid group id)",
        ResponseError::UnknownTopicOrPartition => " (the topic does not exist)",
        ResponseError::CoordinatorNotAvailable => " (the group coordinator is not available)",
        _ => "",
    })
}

fn is_not_found(error: &sluice_client::Error) -> bool {
    error.response_error() == Some(ResponseError::GroupIdNotFound)
}

async fn list(args: ListArgs) -> Result<(), CliError> {
    let admin = admin(&args.connection)?;
    let listings = args
        .connection
        .bounded_with("list groups", admin.list_groups(), group_error)
        .await?;
    let output = if args.json {
        json_line(&listing_json(&listings))
    } else {
        listing_text(&listings)
    };
    print_stdout(&output)
}

/// The human form of `list`: a table, nothing at all without groups.
pub fn listing_text(listings: &[GroupListing]) -> String {
    if listings.is_empty() {
        return String::new();
    }
    let mut rows = vec![[
        "GROUP".to_string(),
        "PROTOCOL-TYPE".to_string(),
        "STATE".to_string(),
    ]];
    for listing in listings {
        rows.push([
            listing.group_id.clone(),
            dash_if_empty(&listing.protocol_type),
            listing.state.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    table(&rows)
}

pub fn listing_json(listings: &[GroupListing]) -> Value {
    Value::Array(
        listings
            .iter()
            .map(|l| {
                json!({
                    "group_id": l.group_id,
                    "protocol_type": l.protocol_type,
                    "state": l.state,
                })
            })
            .collect(),
    )
}

fn dash_if_empty(text: &str) -> String {
    if text.is_empty() {
        "-".into()
    } else {
        text.to_string()
    }
}

/// One partition of `describe`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionRow {
    pub partition: TopicPartition,
    pub committed: Option<i64>,
    pub log_end: Option<i64>,
    pub owner: Option<String>,
}

impl PartitionRow {
    pub fn lag(&self) -> Option<i64> {
        Some(self.log_end? - self.committed?)
    }
}

/// Everything `describe` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupReport {
    pub description: GroupDescription,
    pub partitions: Vec<PartitionRow>,
}

async fn describe(args: DescribeArgs) -> Result<(), CliError> {
    let connection = &args.connection;
    let admin = admin(connection)?;
    let group = &args.group;
    let what = format!("describe group {group}");
    let description = describe_one(&admin, connection, group).await?;
    let committed = connection
        .bounded_with(
            &what,
            admin.list_consumer_group_offsets(group, None),
            group_error,
        )
        .await?;
    if description.state == "Dead" && description.members.is_empty() && committed.is_empty() {
        // Brokers before DescribeGroups v6 describe an unknown group so.
        return Err(CliError::Failed(format!(
            "{what}: GROUP_ID_NOT_FOUND (the group does not exist)"
        )));
    }
    let mut owners: BTreeMap<TopicPartition, String> = BTreeMap::new();
    for member in &description.members {
        if let Ok(assignment) = &member.assignment {
            for tp in &assignment.partitions {
                owners.insert(tp.clone(), member.member_id.clone());
            }
        }
    }
    let partitions: BTreeSet<TopicPartition> =
        committed.keys().chain(owners.keys()).cloned().collect();
    let log_ends = log_end_offsets(&admin, connection, &partitions).await?;
    let report = GroupReport {
        description,
        partitions: partitions
            .into_iter()
            .map(|tp| PartitionRow {
                committed: committed.get(&tp).copied(),
                log_end: log_ends.get(&tp).copied(),
                owner: owners.get(&tp).cloned(),
                partition: tp,
            })
            .collect(),
    };
    let output = if args.json {
        json_line(&report_json(&report))
    } else {
        report_text(&report)
    };
    print_stdout(&output)
}

async fn describe_one(
    admin: &Admin<TokioConnector>,
    connection: &ConnectionArgs,
    group: &str,
) -> Result<GroupDescription, CliError> {
    let what = format!("describe group {group}");
    let mut descriptions = connection
        .bounded_with(
            &what,
            admin.describe_groups(&[group.to_string()]),
            group_error,
        )
        .await?;
    descriptions
        .pop()
        .ok_or_else(|| CliError::Failed(format!("{what}: the broker described nothing")))
}

/// The log end offset of each partition of a topic that still exists
/// (a group may hold offsets of deleted topics; those have none).
async fn log_end_offsets(
    admin: &Admin<TokioConnector>,
    connection: &ConnectionArgs,
    partitions: &BTreeSet<TopicPartition>,
) -> Result<BTreeMap<TopicPartition, i64>, CliError> {
    let topics: Vec<String> = partitions
        .iter()
        .map(|tp| tp.topic.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if topics.is_empty() {
        return Ok(BTreeMap::new());
    }
    let what = "look up the log end offsets";
    connection
        .bounded(what, admin.client().refresh_metadata(Some(&topics)))
        .await?;
    let metadata = admin.client().metadata();
    let existing: Vec<TopicPartition> = partitions
        .iter()
        .filter(|tp| {
            metadata
                .topics
                .get(&tp.topic)
                .is_some_and(|topic| tp.partition < topic.partition_count())
        })
        .cloned()
        .collect();
    if existing.is_empty() {
        return Ok(BTreeMap::new());
    }
    let listed = connection
        .bounded(what, admin.list_offsets(&existing, OffsetSpec::Latest))
        .await?;
    Ok(listed
        .into_iter()
        .map(|(tp, listed)| (tp, listed.offset))
        .collect())
}

/// `t(0,1,2), u(0)`: partitions grouped by topic, as Kafka's tool lists
/// a member's assignment.
pub fn partitions_text(partitions: &[TopicPartition]) -> String {
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for tp in partitions {
        by_topic.entry(&tp.topic).or_default().push(tp.partition);
    }
    if by_topic.is_empty() {
        return "-".into();
    }
    by_topic
        .into_iter()
        .map(|(topic, numbers)| {
            let numbers: Vec<String> = numbers.iter().map(i32::to_string).collect();
            format!("{topic}({})", numbers.join(","))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn offset_text(offset: Option<i64>) -> String {
    offset.map_or_else(|| "-".into(), |o| o.to_string())
}

/// The human form of `describe`.
pub fn report_text(report: &GroupReport) -> String {
    let description = &report.description;
    let mut out = String::new();
    let _ = writeln!(out, "Group:     {}", description.group_id);
    let _ = writeln!(out, "State:     {}", description.state);
    let protocol = match (
        description.protocol_type.as_str(),
        description.protocol.as_str(),
    ) {
        ("", _) => "-".to_string(),
        (kind, "") => kind.to_string(),
        (kind, protocol) => format!("{kind} ({protocol})"),
    };
    let _ = writeln!(out, "Protocol:  {protocol}");
    if description.members.is_empty() {
        let _ = writeln!(out, "Members:   none");
    } else {
        let _ = writeln!(out, "Members:   {}", description.members.len());
        out.push('\n');
        let mut rows = vec![[
            "MEMBER-ID".to_string(),
            "INSTANCE-ID".to_string(),
            "CLIENT-ID".to_string(),
            "HOST".to_string(),
            "PARTITIONS".to_string(),
        ]];
        for member in &description.members {
            rows.push([
                member.member_id.clone(),
                member
                    .group_instance_id
                    .clone()
                    .unwrap_or_else(|| "-".into()),
                dash_if_empty(&member.client_id),
                dash_if_empty(&member.client_host),
                match &member.assignment {
                    Ok(assignment) => partitions_text(&assignment.partitions),
                    Err(why) => format!("(unreadable: {why})"),
                },
            ]);
        }
        out.push_str(&table(&rows));
    }
    out.push('\n');
    if report.partitions.is_empty() {
        out.push_str("No committed offsets and no assigned partitions.\n");
        return out;
    }
    let mut rows = vec![[
        "TOPIC".to_string(),
        "PARTITION".to_string(),
        "CURRENT-OFFSET".to_string(),
        "LOG-END-OFFSET".to_string(),
        "LAG".to_string(),
        "MEMBER-ID".to_string(),
    ]];
    for row in &report.partitions {
        rows.push([
            row.partition.topic.clone(),
            row.partition.partition.to_string(),
            offset_text(row.committed),
            offset_text(row.log_end),
            offset_text(row.lag()),
            row.owner.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    out.push_str(&table(&rows));
    out
}

/// Partitions grouped by topic, for JSON: `[{"topic": t, "partitions": [..]}]`.
fn partitions_json(partitions: &[TopicPartition]) -> Value {
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for tp in partitions {
        by_topic.entry(&tp.topic).or_default().push(tp.partition);
    }
    Value::Array(
        by_topic
            .into_iter()
            .map(|(topic, partitions)| json!({ "topic": topic, "partitions": partitions }))
            .collect(),
    )
}

/// The JSON form of `describe`.
pub fn report_json(report: &GroupReport) -> Value {
    let description = &report.description;
    let members: Vec<Value> = description
        .members
        .iter()
        .map(|m| {
            let (assignment, assignment_error) = match &m.assignment {
                Ok(assignment) => (partitions_json(&assignment.partitions), None),
                Err(why) => (Value::Null, Some(why.clone())),
            };
            json!({
                "member_id": m.member_id,
                "group_instance_id": m.group_instance_id,
                "client_id": m.client_id,
                "host": m.client_host,
                "assignment": assignment,
                "assignment_error": assignment_error,
            })
        })
        .collect();
    let partitions: Vec<Value> = report
        .partitions
        .iter()
        .map(|row| {
            json!({
                "topic": row.partition.topic,
                "partition": row.partition.partition,
                "committed_offset": row.committed,
                "log_end_offset": row.log_end,
                "lag": row.lag(),
                "member_id": row.owner,
            })
        })
        .collect();
    json!({
        "group_id": description.group_id,
        "state": description.state,
        "protocol_type": description.protocol_type,
        "protocol": description.protocol,
        "members": members,
        "partitions": partitions,
    })
}

/// One partition of `reset-offsets`: its committed offset now (none when
/// the group has none there) and the one the reset commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetRow {
    pub partition: TopicPartition,
    pub current: Option<i64>,
    pub new: i64,
}

async fn reset_offsets(args: ResetArgs) -> Result<(), CliError> {
    let connection = &args.connection;
    let admin = admin(connection)?;
    let group = &args.group;
    let what = format!("reset offsets of group {group}");
    ensure_inactive(&admin, connection, group, &what).await?;
    let partitions = reset_partitions(&admin, &args).await?;
    let (targets, notes) = reset_targets(&admin, connection, &partitions, args.to).await?;
    let previous = connection
        .bounded_with(
            &what,
            admin.list_consumer_group_offsets(group, Some(&partitions)),
            group_error,
        )
        .await?;
    if args.execute {
        // A member that joined since the check makes the coordinator refuse
        // a commit from outside the group.
        let refused = |what: &str, error: &sluice_client::Error| match error.response_error() {
            Some(ResponseError::UnknownMemberId | ResponseError::IllegalGeneration) => {
                refused_active(what, "it has active members now")
            }
            _ => group_error(what, error),
        };
        connection
            .bounded_with(
                &what,
                admin.alter_consumer_group_offsets(group, &targets),
                refused,
            )
            .await?;
    }
    for note in notes {
        eprintln!("sluice: {note}");
    }
    let rows: Vec<ResetRow> = targets
        .into_iter()
        .map(|(tp, new)| ResetRow {
            current: previous.get(&tp).copied(),
            partition: tp,
            new,
        })
        .collect();
    let output = if args.json {
        json_line(&reset_json(group, args.execute, &rows))
    } else {
        reset_text(group, &rows)
    };
    print_stdout(&output)?;
    if !args.execute && !args.json {
        eprintln!("Nothing was committed: this is the plan. Add --execute to commit it.");
    }
    Ok(())
}

fn refused_active(what: &str, detail: &str) -> CliError {
    CliError::Failed(format!(
        "{what}: {detail}; offsets can only be reset while the group is inactive \
         (Empty), so stop its consumers first"
    ))
}

/// Refuses a group with members, as Kafka's tool does: their next commit
/// would undo the reset. An unknown group is fine (the commit creates it).
async fn ensure_inactive(
    admin: &Admin<TokioConnector>,
    connection: &ConnectionArgs,
    group: &str,
    what: &str,
) -> Result<(), CliError> {
    let describing = async {
        match admin.describe_groups(&[group.to_string()]).await {
            Ok(mut descriptions) => Ok(descriptions.pop()),
            Err(error) if is_not_found(&error) => Ok(None),
            Err(error) => Err(error),
        }
    };
    let description = connection
        .bounded_with(what, describing, group_error)
        .await?;
    match description {
        Some(d) if !INACTIVE_STATES.contains(&d.state.as_str()) || !d.members.is_empty() => {
            let detail = format!(
                "the group is {} with {}",
                d.state,
                super::plural(d.members.len() as u64, "member")
            );
            Err(refused_active(what, &detail))
        }
        _ => Ok(()),
    }
}

/// The partitions `--topic` and `--partition` name, checked to exist.
async fn reset_partitions(
    admin: &Admin<TokioConnector>,
    args: &ResetArgs,
) -> Result<Vec<TopicPartition>, CliError> {
    let topic = args
        .connection
        .bounded(
            &format!("look up topic {}", args.topic),
            admin.client().topic(&args.topic),
        )
        .await?;
    let count = topic.partition_count();
    match args.partition {
        Some(partition) if partition >= count => Err(CliError::Failed(format!(
            "topic {} has {count} partitions; partition {partition} does not exist",
            args.topic
        ))),
        Some(partition) => Ok(vec![TopicPartition::new(args.topic.clone(), partition)]),
        None => Ok((0..count)
            .map(|partition| TopicPartition::new(args.topic.clone(), partition))
            .collect()),
    }
}

/// The new offset of each partition, and notes for the user where the
/// target was moved into the log.
async fn reset_targets(
    admin: &Admin<TokioConnector>,
    connection: &ConnectionArgs,
    partitions: &[TopicPartition],
    target: ResetTarget,
) -> Result<(BTreeMap<TopicPartition, i64>, Vec<String>), CliError> {
    let what = "look up the offsets of the log";
    let list = |spec| connection.bounded(what, admin.list_offsets(partitions, spec));
    let firsts = list(OffsetSpec::Earliest).await?;
    let ends = list(OffsetSpec::Latest).await?;
    let found = match target {
        ResetTarget::Timestamp(ms) => Some(list(OffsetSpec::Timestamp(ms)).await?),
        _ => None,
    };
    let mut targets = BTreeMap::new();
    let mut notes = Vec::new();
    for tp in partitions {
        let (Some(first), Some(end)) = (firsts.get(tp), ends.get(tp)) else {
            return Err(CliError::Failed(format!("{what}: no answer for {tp}")));
        };
        let (first, end) = (first.offset, end.offset);
        let new = match target {
            ResetTarget::Earliest => first,
            ResetTarget::Latest => end,
            ResetTarget::Offset(offset) => {
                let kept = offset.clamp(first, end);
                if kept != offset {
                    notes.push(format!(
                        "offset {offset} is outside {tp} ({first}..{end}); using {kept}"
                    ));
                }
                kept
            }
            ResetTarget::Timestamp(_) => {
                match found.as_ref().and_then(|found| found.get(tp)) {
                    Some(listed) if listed.offset >= 0 => listed.offset,
                    // No record that late: the end, as Kafka's tool does.
                    _ => end,
                }
            }
        };
        targets.insert(tp.clone(), new);
    }
    Ok((targets, notes))
}

/// The human form of `reset-offsets`: the plan, as Kafka's tool prints
/// it, with the current offset beside the new one.
pub fn reset_text(group: &str, rows: &[ResetRow]) -> String {
    let mut table_rows = vec![[
        "GROUP".to_string(),
        "TOPIC".to_string(),
        "PARTITION".to_string(),
        "CURRENT-OFFSET".to_string(),
        "NEW-OFFSET".to_string(),
    ]];
    for row in rows {
        table_rows.push([
            group.to_string(),
            row.partition.topic.clone(),
            row.partition.partition.to_string(),
            offset_text(row.current),
            row.new.to_string(),
        ]);
    }
    table(&table_rows)
}

/// The JSON form of `reset-offsets`; `executed` says whether it was
/// committed.
pub fn reset_json(group: &str, executed: bool, rows: &[ResetRow]) -> Value {
    let partitions: Vec<Value> = rows
        .iter()
        .map(|row| {
            json!({
                "topic": row.partition.topic,
                "partition": row.partition.partition,
                "current_offset": row.current,
                "new_offset": row.new,
            })
        })
        .collect();
    json!({
        "group_id": group,
        "executed": executed,
        "partitions": partitions,
    })
}

async fn delete(args: DeleteArgs) -> Result<(), CliError> {
    let admin = admin(&args.connection)?;
    let what = format!("delete group {}", args.group);
    args.connection
        .bounded_with(&what, admin.delete_group(&args.group), group_error)
        .await?;
    let output = if args.json {
        json_line(&json!({ "deleted": args.group }))
    } else {
        format!("Deleted group {}.\n", args.group)
    };
    print_stdout(&output)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use sluice_client::group::protocol::Assignment;
    use sluice_client::MemberDescription;

    #[derive(Parser, Debug)]
    struct Wrapper {
        #[command(subcommand)]
        command: GroupsCommand,
    }

    fn parse(args: &[&str]) -> Result<GroupsCommand, clap::Error> {
        Wrapper::try_parse_from(std::iter::once("groups").chain(args.iter().copied()))
            .map(|w| w.command)
    }

    fn tp(topic: &str, partition: i32) -> TopicPartition {
        TopicPartition::new(topic, partition)
    }

    #[test]
    fn reset_targets_parse_as_kafka_names_them() {
        assert_eq!(ResetTarget::parse("earliest"), Ok(ResetTarget::Earliest));
        assert_eq!(ResetTarget::parse("latest"), Ok(ResetTarget::Latest));
        assert_eq!(ResetTarget::parse("offset:42"), Ok(ResetTarget::Offset(42)));
        assert_eq!(
            ResetTarget::parse("timestamp:1700000000000"),
            Ok(ResetTarget::Timestamp(1_700_000_000_000))
        );
        for bad in [
            "",
            "beginning",
            "offset:",
            "offset:-1",
            "offset:x",
            "timestamp:-5",
            "earliest:1",
            "shift:3",
        ] {
            assert!(ResetTarget::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn reset_offsets_takes_its_flags() {
        let GroupsCommand::ResetOffsets(args) = parse(&[
            "reset-offsets",
            "billing",
            "--topic",
            "orders",
            "--partition",
            "2",
            "--to",
            "timestamp:1000",
            "--execute",
            "--json",
            "--bootstrap-server",
            "h:1",
        ])
        .unwrap() else {
            panic!("not reset-offsets")
        };
        assert_eq!(args.group, "billing");
        assert_eq!(args.topic, "orders");
        assert_eq!(args.partition, Some(2));
        assert_eq!(args.to, ResetTarget::Timestamp(1000));
        assert!(args.execute && args.json && !args.dry_run);
        assert_eq!(args.connection.bootstrap_server.as_deref(), Some("h:1"));
        let GroupsCommand::ResetOffsets(args) = parse(&[
            "reset-offsets",
            "g",
            "-t",
            "t",
            "-p",
            "1",
            "--to",
            "earliest",
        ])
        .unwrap() else {
            panic!("not reset-offsets")
        };
        assert_eq!((args.topic.as_str(), args.partition), ("t", Some(1)));
        // The plan only, unless --execute says otherwise.
        assert!(!args.execute);
        let GroupsCommand::ResetOffsets(args) = parse(&[
            "reset-offsets",
            "g",
            "--topic",
            "t",
            "--to",
            "earliest",
            "--dry-run",
        ])
        .unwrap() else {
            panic!("not reset-offsets")
        };
        assert!(args.dry_run && !args.execute);
    }

    #[test]
    fn the_other_subcommands_take_a_group_and_json() {
        assert!(matches!(parse(&["list", "--json"]).unwrap(), GroupsCommand::List(a) if a.json));
        assert!(
            matches!(parse(&["describe", "g"]).unwrap(), GroupsCommand::Describe(a) if a.group == "g" && !a.json)
        );
        assert!(
            matches!(parse(&["delete", "g", "--json"]).unwrap(), GroupsCommand::Delete(a) if a.group == "g" && a.json)
        );
    }

    #[test]
    fn bad_arguments_are_refused_by_the_parser() {
        for bad in [
            &[][..],
            &["describe"],
            &["describe", ""],
            &["delete"],
            &["reset-offsets", "g", "--topic", "t"],
            &["reset-offsets", "g", "--to", "earliest"],
            &["reset-offsets", "g", "--topic", "t", "--to", "yesterday"],
            &[
                "reset-offsets",
                "g",
                "--topic",
                "t",
                "--to",
                "latest",
                "--partition",
                "-1",
            ],
            &["list", "extra"],
            &["rename", "g"],
            &[
                "reset-offsets",
                "g",
                "--topic",
                "t",
                "--to",
                "latest",
                "--dry-run",
                "--execute",
            ],
        ] {
            let error = parse(bad).unwrap_err();
            assert_eq!(error.exit_code(), 2, "{bad:?}");
        }
    }

    fn listing(group_id: &str, protocol_type: &str, state: Option<&str>) -> GroupListing {
        GroupListing {
            group_id: group_id.into(),
            protocol_type: protocol_type.into(),
            state: state.map(str::to_string),
        }
    }

    #[test]
    fn list_prints_a_table_or_nothing() {
        assert_eq!(listing_text(&[]), "");
        let listings = [
            listing("billing", "consumer", Some("Stable")),
            listing("offsets-only", "", None),
        ];
        assert_eq!(
            listing_text(&listings),
            "\
GROUP         PROTOCOL-TYPE  STATE
billing       consumer       Stable
offsets-only  -              -
"
        );
        assert_eq!(
            listing_json(&listings).to_string(),
            r#"[{"group_id":"billing","protocol_type":"consumer","state":"Stable"},{"group_id":"offsets-only","protocol_type":"","state":null}]"#
        );
    }

    fn sample() -> GroupReport {
        let member =
            |id: &str, instance: Option<&str>, partitions: Vec<TopicPartition>| MemberDescription {
                member_id: id.into(),
                group_instance_id: instance.map(str::to_string),
                client_id: "sluice-cli".into(),
                client_host: "/127.0.0.1".into(),
                assignment: Ok(Assignment {
                    partitions,
                    user_data: None,
                }),
            };
        let mut broken = member("m-3", None, vec![]);
        broken.assignment = Err("assignment v3: 4 bytes needed, 1 left".into());
        GroupReport {
            description: GroupDescription {
                group_id: "billing".into(),
                state: "Stable".into(),
                protocol_type: "consumer".into(),
                protocol: "range".into(),
                members: vec![
                    member("m-1", None, vec![tp("t", 0), tp("t", 1), tp("u", 0)]),
                    member("m-2", Some("host-b"), vec![tp("t", 2)]),
                    broken,
                ],
            },
            partitions: vec![
                PartitionRow {
                    partition: tp("gone", 0),
                    committed: Some(9),
                    log_end: None,
                    owner: None,
                },
                PartitionRow {
                    partition: tp("t", 0),
                    committed: Some(3),
                    log_end: Some(10),
                    owner: Some("m-1".into()),
                },
                PartitionRow {
                    partition: tp("t", 2),
                    committed: None,
                    log_end: Some(4),
                    owner: Some("m-2".into()),
                },
            ],
        }
    }

    #[test]
    fn describe_prints_members_and_lag_per_partition() {
        assert_eq!(
            report_text(&sample()),
            "\
Group:     billing
State:     Stable
Protocol:  consumer (range)
Members:   3

MEMBER-ID  INSTANCE-ID  CLIENT-ID   HOST        PARTITIONS
m-1        -            sluice-cli  /127.0.0.1  t(0,1), u(0)
m-2        host-b       sluice-cli  /127.0.0.1  t(2)
m-3        -            sluice-cli  /127.0.0.1  (unreadable: assignment v3: 4 bytes needed, 1 left)

TOPIC  PARTITION  CURRENT-OFFSET  LOG-END-OFFSET  LAG  MEMBER-ID
gone   0          9               -               -    -
t      0          3               10              7    m-1
t      2          -               4               -    m-2
"
        );
        let empty = GroupReport {
            description: GroupDescription {
                group_id: "idle".into(),
                state: "Empty".into(),
                protocol_type: String::new(),
                protocol: String::new(),
                members: vec![],
            },
            partitions: vec![],
        };
        assert_eq!(
            report_text(&empty),
            "\
Group:     idle
State:     Empty
Protocol:  -
Members:   none

No committed offsets and no assigned partitions.
"
        );
    }

    #[test]
    fn describe_json_has_members_with_assignments_and_lag() {
        let value = report_json(&sample());
        assert_eq!(value["state"], "Stable");
        assert_eq!(value["protocol"], "range");
        assert_eq!(
            value["members"][0]["assignment"],
            json!([{"topic": "t", "partitions": [0, 1]}, {"topic": "u", "partitions": [0]}])
        );
        assert_eq!(value["members"][1]["group_instance_id"], "host-b");
        assert_eq!(value["members"][2]["assignment"], Value::Null);
        assert!(value["members"][2]["assignment_error"]
            .as_str()
            .unwrap()
            .starts_with("assignment v3"));
        assert_eq!(
            value["partitions"][1],
            json!({"topic": "t", "partition": 0, "committed_offset": 3,
                   "log_end_offset": 10, "lag": 7, "member_id": "m-1"})
        );
        assert_eq!(value["partitions"][0]["lag"], Value::Null);
        assert_eq!(value["partitions"][2]["committed_offset"], Value::Null);
    }

    #[test]
    fn reset_prints_the_plan_with_current_and_new_offsets() {
        let rows = [
            ResetRow {
                partition: tp("t", 0),
                current: Some(120),
                new: 0,
            },
            ResetRow {
                partition: tp("t", 1),
                current: None,
                new: 17,
            },
        ];
        assert_eq!(
            reset_text("billing", &rows),
            "\
GROUP    TOPIC  PARTITION  CURRENT-OFFSET  NEW-OFFSET
billing  t      0          120             0
billing  t      1          -               17
"
        );
        assert_eq!(
            reset_json("g", false, &rows).to_string(),
            r#"{"executed":false,"group_id":"g","partitions":[{"current_offset":120,"new_offset":0,"partition":0,"topic":"t"},{"current_offset":null,"new_offset":17,"partition":1,"topic":"t"}]}"#
        );
    }

    #[test]
    fn broker_refusals_are_told_by_their_kafka_name() {
        let refusal = |error| sluice_client::Error::Broker {
            error,
            context: "delete group g".into(),
            message: None,
        };
        assert_eq!(
            group_error("delete group g", &refusal(ResponseError::NonEmptyGroup)).to_string(),
            "delete group g: NON_EMPTY_GROUP (the group has active members)"
        );
        assert_eq!(
            group_error("describe group g", &refusal(ResponseError::GroupIdNotFound)).to_string(),
            "describe group g: GROUP_ID_NOT_FOUND (the group does not exist)"
        );
        assert_eq!(
            group_error(
                "delete group g",
                &refusal(ResponseError::GroupAuthorizationFailed)
            )
            .to_string(),
            "delete group g: GROUP_AUTHORIZATION_FAILED"
        );
        let unreachable = sluice_client::Error::NoBrokerReachable {
            last: "refused".into(),
        };
        assert_eq!(
            group_error("list groups", &unreachable).to_string(),
            "list groups: no broker reachable (refused)"
        );
    }
}
