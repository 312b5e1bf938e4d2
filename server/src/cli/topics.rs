//! `sluice topics create|list|describe|delete|alter`: topic administration
//! through the client's `Admin`.
//!
//! Each subcommand makes one bounded admin call and prints the outcome for
//! a person, or as one JSON document with `--json`; `describe` also looks
//! up each partition's log start and end offsets (ListOffsets earliest and
//! latest on its leader) beside its leader, replicas and ISR. The printing is kept
//! in pure functions over the client's values so tests can pin it down
//! without a broker. Topic ids are shown as Kafka's tools show them
//! (unpadded URL-safe base64 of the 16 bytes).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use clap::{Args, Subcommand};
use serde_json::{json, Value};
use sluice_client::{
    Admin, ConfigEntry, ConfigSource, NewTopic, OffsetSpec, TokioConnector, TopicDescription,
    TopicPartition,
};

use super::format::base64;
use super::{json_line, parse_key_value, print_stdout, table, CliError, ConnectionArgs};

#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum TopicsCommand {
    /// Create a topic.
    Create(CreateArgs),
    /// List every topic, one name per line.
    List(ListArgs),
    /// Show a topic's id, configs and partitions (leader, replicas, ISR,
    /// log start and end offsets).
    Describe(DescribeArgs),
    /// Delete a topic and its data.
    Delete(DeleteArgs),
    /// Add partitions to a topic.
    Alter(AlterArgs),
}

#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct CreateArgs {
    pub name: String,
    /// Number of partitions (default: the broker's num.partitions).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(1..))]
    pub partitions: Option<i32>,
    /// Replicas of each partition (default: the broker's default.replication.factor).
    #[arg(long, value_name = "R", value_parser = clap::value_parser!(i16).range(1..))]
    pub replication_factor: Option<i16>,
    /// A topic config, e.g. --config retention.ms=86400000 (repeatable).
    #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub configs: Vec<(String, String)>,
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct ListArgs {
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Print the topics as a JSON array with ids and partition counts.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct DescribeArgs {
    pub name: String,
    /// Also list configs the topic takes from the broker or the defaults.
    #[arg(long)]
    pub all_configs: bool,
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Print the description as JSON (every config, with its source).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct DeleteArgs {
    pub name: String,
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct AlterArgs {
    pub name: String,
    /// The new total number of partitions (only growing is possible).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(1..))]
    pub partitions: Option<i32>,
    /// A config to change. The broker does not serve config changes yet,
    /// so this is refused; set configs with `topics create --config`.
    #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub configs: Vec<(String, String)>,
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What `alter --config` answers until the broker serves config changes.
pub const ALTER_CONFIGS_UNSUPPORTED: &str = "changing topic configs is not supported yet: \
    the broker serves neither AlterConfigs nor IncrementalAlterConfigs; \
    set configs when creating the topic (sluice topics create --config KEY=VALUE)";

pub async fn run(command: TopicsCommand) -> Result<(), CliError> {
    match command {
        TopicsCommand::Create(args) => create(args).await,
        TopicsCommand::List(args) => list(args).await,
        TopicsCommand::Describe(args) => describe(args).await,
        TopicsCommand::Delete(args) => delete(args).await,
        TopicsCommand::Alter(args) => alter(args).await,
    }
}

fn admin(connection: &ConnectionArgs) -> Result<Admin<sluice_client::TokioConnector>, CliError> {
    Ok(Admin::new(connection.client(false)?))
}

async fn create(args: CreateArgs) -> Result<(), CliError> {
    let admin = admin(&args.connection)?;
    let mut topic = NewTopic::new(
        &args.name,
        args.partitions.unwrap_or(-1),
        args.replication_factor.unwrap_or(-1),
    );
    for (key, value) in &args.configs {
        topic = topic.with_config(key, value);
    }
    let what = format!("create topic {}", args.name);
    args.connection
        .bounded(&what, admin.create_topic(&topic))
        .await?;
    let output = if args.json {
        let configs: BTreeMap<&str, &str> = topic
            .configs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        json_line(&json!({
            "created": args.name,
            "partitions": args.partitions,
            "replication_factor": args.replication_factor,
            "configs": configs,
        }))
    } else {
        format!("Created topic {}.\n", args.name)
    };
    print_stdout(&output)
}

async fn list(args: ListArgs) -> Result<(), CliError> {
    let admin = admin(&args.connection)?;
    let listings = args
        .connection
        .bounded("list topics", admin.list_topics())
        .await?;
    let metadata = admin.client().metadata();
    let output = if args.json {
        let topics: Vec<Value> = listings
            .iter()
            .map(|listing| {
                let partitions = metadata
                    .topics
                    .get(&listing.name)
                    .map(|t| t.partition_count());
                json!({
                    "name": listing.name,
                    "id": kafka_topic_id(listing.id.as_bytes()),
                    "partitions": partitions,
                    "internal": listing.is_internal,
                })
            })
            .collect();
        json_line(&Value::Array(topics))
    } else {
        listings.iter().map(|l| format!("{}\n", l.name)).collect()
    };
    print_stdout(&output)
}

async fn describe(args: DescribeArgs) -> Result<(), CliError> {
    let admin = admin(&args.connection)?;
    let what = format!("describe topic {}", args.name);
    let mut descriptions = args
        .connection
        .bounded(
            &what,
            admin.describe_topics(std::slice::from_ref(&args.name)),
        )
        .await?;
    let Some(description) = descriptions.pop() else {
        return Err(CliError::Failed(format!(
            "{what}: the broker described nothing"
        )));
    };
    let offsets = log_offsets(&admin, &args.connection, &description).await;
    let output = if args.json {
        json_line(&description_json(&description, &offsets))
    } else {
        description_text(&description, &offsets, args.all_configs)
    };
    print_stdout(&output)
}

/// A partition's log start offset and log end offset (high watermark).
pub type LogOffsets = BTreeMap<i32, (i64, i64)>;

/// The log start and end offsets of every partition that has a leader.
/// A description is most wanted when something is wrong, so offsets that
/// cannot be had leave their cells empty (said once on stderr) instead of
/// failing the command.
async fn log_offsets(
    admin: &Admin<TokioConnector>,
    connection: &ConnectionArgs,
    description: &TopicDescription,
) -> LogOffsets {
    let led: Vec<TopicPartition> = description
        .partitions
        .iter()
        .filter(|p| p.leader.is_some())
        .map(|p| TopicPartition::new(description.name.clone(), p.partition))
        .collect();
    if led.is_empty() {
        return LogOffsets::new();
    }
    let what = format!("look up the log offsets of {}", description.name);
    let both = async {
        let starts = admin.list_offsets(&led, OffsetSpec::Earliest).await?;
        let ends = admin.list_offsets(&led, OffsetSpec::Latest).await?;
        Ok((starts, ends))
    };
    match connection.bounded(&what, both).await {
        Ok((starts, ends)) => starts
            .iter()
            .filter_map(|(tp, start)| Some((tp.partition, (start.offset, ends.get(tp)?.offset))))
            .collect(),
        Err(error) => {
            eprintln!("sluice: {error}; offsets left out");
            LogOffsets::new()
        }
    }
}

async fn delete(args: DeleteArgs) -> Result<(), CliError> {
    let admin = admin(&args.connection)?;
    let what = format!("delete topic {}", args.name);
    args.connection
        .bounded(&what, admin.delete_topic(&args.name))
        .await?;
    let output = if args.json {
        json_line(&json!({ "deleted": args.name }))
    } else {
        format!("Deleted topic {}.\n", args.name)
    };
    print_stdout(&output)
}

async fn alter(args: AlterArgs) -> Result<(), CliError> {
    // Refused before anything changes, so a half-applied alter cannot happen.
    if !args.configs.is_empty() {
        return Err(CliError::Failed(ALTER_CONFIGS_UNSUPPORTED.into()));
    }
    let Some(partitions) = args.partitions else {
        return Err(CliError::Usage(
            "topics alter: nothing to change; give --partitions N".into(),
        ));
    };
    let admin = admin(&args.connection)?;
    let what = format!("add partitions to {}", args.name);
    args.connection
        .bounded(&what, admin.create_partitions(&args.name, partitions))
        .await?;
    let output = if args.json {
        json_line(&json!({ "altered": args.name, "partitions": partitions }))
    } else {
        format!("Topic {} now has {partitions} partitions.\n", args.name)
    };
    print_stdout(&output)
}

/// A topic id as Kafka prints it: URL-safe base64 of its bytes, unpadded.
pub fn kafka_topic_id(id: &[u8; 16]) -> String {
    base64(id)
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}

fn source_name(source: ConfigSource) -> String {
    match source {
        ConfigSource::Topic => "TOPIC_CONFIG".into(),
        ConfigSource::DynamicBroker => "DYNAMIC_BROKER_CONFIG".into(),
        ConfigSource::DynamicDefaultBroker => "DYNAMIC_DEFAULT_BROKER_CONFIG".into(),
        ConfigSource::StaticBroker => "STATIC_BROKER_CONFIG".into(),
        ConfigSource::Default => "DEFAULT_CONFIG".into(),
        ConfigSource::Other(code) => format!("UNKNOWN({code})"),
    }
}

fn config_value(entry: &ConfigEntry) -> &str {
    match (&entry.value, entry.is_sensitive) {
        (_, true) => "(sensitive)",
        (Some(value), false) => value,
        (None, false) => "(null)",
    }
}

/// Replicas of the first partition: what Kafka's tools call the topic's
/// replication factor.
fn replication_factor(description: &TopicDescription) -> usize {
    description
        .partitions
        .first()
        .map_or(0, |p| p.replicas.len())
}

fn ids(list: &[i32]) -> String {
    let parts: Vec<String> = list.iter().map(i32::to_string).collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(",")
    }
}

/// The human form of `describe`.
pub fn description_text(
    description: &TopicDescription,
    offsets: &LogOffsets,
    all_configs: bool,
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Topic:              {}", description.name);
    let _ = writeln!(
        out,
        "Topic id:           {}",
        kafka_topic_id(description.id.as_bytes())
    );
    if description.is_internal {
        let _ = writeln!(out, "Internal:           yes");
    }
    let _ = writeln!(out, "Partitions:         {}", description.partitions.len());
    let _ = writeln!(
        out,
        "Replication factor: {}",
        replication_factor(description)
    );
    let shown: Vec<&ConfigEntry> = description
        .configs
        .iter()
        .filter(|c| all_configs || c.source == ConfigSource::Topic)
        .collect();
    let label = if all_configs {
        "Configs:           "
    } else {
        "Configs (set):     "
    };
    if shown.is_empty() {
        let _ = writeln!(out, "{label} none");
    }
    for (index, entry) in shown.iter().enumerate() {
        let prefix = if index == 0 {
            label
        } else {
            "                   "
        };
        let source = if all_configs {
            format!("  ({})", source_name(entry.source))
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "{prefix} {}={}{source}",
            entry.name,
            config_value(entry)
        );
    }
    out.push('\n');
    let mut rows = vec![[
        "PARTITION".to_string(),
        "LEADER".to_string(),
        "REPLICAS".to_string(),
        "ISR".to_string(),
        "OFFLINE".to_string(),
        "LOG-START-OFFSET".to_string(),
        "LOG-END-OFFSET".to_string(),
    ]];
    for partition in &description.partitions {
        let (start, end) = match offsets.get(&partition.partition) {
            Some((start, end)) => (start.to_string(), end.to_string()),
            None => ("-".to_string(), "-".to_string()),
        };
        rows.push([
            partition.partition.to_string(),
            partition
                .leader
                .map_or_else(|| "none".to_string(), |l| l.to_string()),
            ids(&partition.replicas),
            ids(&partition.isr),
            ids(&partition.offline_replicas),
            start,
            end,
        ]);
    }
    out.push_str(&table(&rows));
    let under: Vec<String> = description
        .partitions
        .iter()
        .filter(|p| p.isr.len() < p.replicas.len())
        .map(|p| p.partition.to_string())
        .collect();
    if !under.is_empty() {
        // As `kafka-topics.sh --describe --under-replicated-partitions`
        // would list them: fewer in sync than replicas.
        let _ = writeln!(out, "\nUnder-replicated partitions: {}", under.join(", "));
    }
    out
}

/// The JSON form of `describe`; offsets not known are null.
pub fn description_json(description: &TopicDescription, offsets: &LogOffsets) -> Value {
    let partitions: Vec<Value> = description
        .partitions
        .iter()
        .map(|p| {
            let known = offsets.get(&p.partition);
            json!({
                "partition": p.partition,
                "leader": p.leader,
                "leader_epoch": p.leader_epoch,
                "replicas": p.replicas,
                "isr": p.isr,
                "offline_replicas": p.offline_replicas,
                "under_replicated": p.isr.len() < p.replicas.len(),
                "log_start_offset": known.map(|(start, _)| start),
                "log_end_offset": known.map(|(_, end)| end),
                "error": p.error.map(super::error_name),
            })
        })
        .collect();
    let configs: Vec<Value> = description
        .configs
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "value": if c.is_sensitive { None } else { c.value.clone() },
                "source": source_name(c.source),
                "read_only": c.read_only,
                "sensitive": c.is_sensitive,
            })
        })
        .collect();
    json!({
        "name": description.name,
        "id": kafka_topic_id(description.id.as_bytes()),
        "internal": description.is_internal,
        "replication_factor": replication_factor(description),
        "partitions": partitions,
        "configs": configs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use sluice_client::PartitionInfo;

    #[derive(Parser, Debug)]
    struct Wrapper {
        #[command(subcommand)]
        command: TopicsCommand,
    }

    fn parse(args: &[&str]) -> Result<TopicsCommand, clap::Error> {
        Wrapper::try_parse_from(std::iter::once("topics").chain(args.iter().copied()))
            .map(|w| w.command)
    }

    #[test]
    fn create_takes_partitions_replication_and_repeated_configs() {
        let TopicsCommand::Create(args) = parse(&[
            "create",
            "orders",
            "--partitions",
            "6",
            "--replication-factor",
            "1",
            "--config",
            "retention.ms=1000",
            "--config",
            "cleanup.policy=delete",
            "--bootstrap-server",
            "h:1",
            "--json",
        ])
        .unwrap() else {
            panic!("not create")
        };
        assert_eq!(args.name, "orders");
        assert_eq!(args.partitions, Some(6));
        assert_eq!(args.replication_factor, Some(1));
        assert_eq!(
            args.configs,
            vec![
                ("retention.ms".into(), "1000".into()),
                ("cleanup.policy".into(), "delete".into())
            ]
        );
        assert_eq!(args.connection.bootstrap_server.as_deref(), Some("h:1"));
        assert!(args.json);
    }

    #[test]
    fn create_defaults_to_the_broker_settings() {
        let TopicsCommand::Create(args) = parse(&["create", "t"]).unwrap() else {
            panic!("not create")
        };
        assert_eq!(args.partitions, None);
        assert_eq!(args.replication_factor, None);
        assert_eq!(args.connection.bootstrap_server, None);
    }

    #[test]
    fn bad_arguments_are_refused_by_the_parser() {
        for bad in [
            &["create"][..],
            &["create", "t", "--partitions", "0"],
            &["create", "t", "--partitions", "many"],
            &["create", "t", "--replication-factor", "-1"],
            &["create", "t", "--config", "novalue"],
            &["describe"],
            &["alter", "t", "--partitions", "-3"],
            &["rename", "t"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn alter_takes_partitions_and_configs() {
        let TopicsCommand::Alter(args) =
            parse(&["alter", "t", "--partitions", "8", "--config", "a=b"]).unwrap()
        else {
            panic!("not alter")
        };
        assert_eq!(args.partitions, Some(8));
        assert_eq!(args.configs, vec![("a".into(), "b".into())]);
    }

    #[test]
    fn alter_refuses_config_changes_before_connecting() {
        let TopicsCommand::Alter(args) = parse(&[
            "alter",
            "t",
            "--config",
            "a=b",
            "--bootstrap-server",
            "127.0.0.1:1",
        ])
        .unwrap() else {
            panic!("not alter")
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let error = runtime.block_on(alter(args)).unwrap_err();
        assert_eq!(error, CliError::Failed(ALTER_CONFIGS_UNSUPPORTED.into()));
        let TopicsCommand::Alter(args) = parse(&["alter", "t"]).unwrap() else {
            panic!("not alter")
        };
        let error = runtime.block_on(alter(args)).unwrap_err();
        assert!(matches!(error, CliError::Usage(_)), "{error}");
    }

    fn sample() -> TopicDescription {
        let partition = |partition, leader: Option<i32>| PartitionInfo {
            partition,
            leader,
            leader_epoch: 0,
            replicas: vec![1],
            isr: if leader.is_some() { vec![1] } else { vec![] },
            offline_replicas: vec![],
            error: None,
        };
        let config = |name: &str, value: &str, source| ConfigEntry {
            name: name.into(),
            value: Some(value.into()),
            source,
            read_only: false,
            is_sensitive: false,
        };
        TopicDescription {
            name: "orders".into(),
            id: uuid::Uuid::from_bytes([
                0xed, 0x3a, 0xb6, 0x60, 0x7a, 0x51, 0x46, 0xc4, 0x93, 0x27, 0x30, 0x25, 0x43, 0x7b,
                0x52, 0xee,
            ]),
            is_internal: false,
            partitions: vec![partition(0, Some(1)), partition(1, None)],
            configs: vec![
                config("cleanup.policy", "delete", ConfigSource::Default),
                config("retention.ms", "60000", ConfigSource::Topic),
            ],
        }
    }

    #[test]
    fn topic_ids_print_like_kafka() {
        let id = [
            0xed, 0x3a, 0xb6, 0x60, 0x7a, 0x51, 0x46, 0xc4, 0x93, 0x27, 0x30, 0x25, 0x43, 0x7b,
            0x52, 0xee,
        ];
        assert_eq!(kafka_topic_id(&id), "7Tq2YHpRRsSTJzAlQ3tS7g");
        assert_eq!(kafka_topic_id(&[0xff; 16]), "_____________________w");
    }

    #[test]
    fn describe_prints_the_set_configs_and_a_partition_table() {
        let offsets = LogOffsets::from([(0, (12, 340))]);
        assert_eq!(
            description_text(&sample(), &offsets, false),
            "\
Topic:              orders
Topic id:           7Tq2YHpRRsSTJzAlQ3tS7g
Partitions:         2
Replication factor: 1
Configs (set):      retention.ms=60000

PARTITION  LEADER  REPLICAS  ISR  OFFLINE  LOG-START-OFFSET  LOG-END-OFFSET
0          1       1         1    -        12                340
1          none    1         -    -        -                 -

Under-replicated partitions: 1
"
        );
        let all = description_text(&sample(), &offsets, true);
        assert!(all.contains(
            "Configs:            cleanup.policy=delete  (DEFAULT_CONFIG)\n                    retention.ms=60000  (TOPIC_CONFIG)\n"
        ), "{all}");
    }

    #[test]
    fn describe_json_has_every_config_with_its_source() {
        let value = description_json(&sample(), &LogOffsets::from([(0, (12, 340))]));
        assert_eq!(value["id"], "7Tq2YHpRRsSTJzAlQ3tS7g");
        assert_eq!(value["replication_factor"], 1);
        assert_eq!(value["partitions"][1]["leader"], Value::Null);
        assert_eq!(value["partitions"][0]["isr"], json!([1]));
        assert_eq!(value["partitions"][0]["under_replicated"], false);
        assert_eq!(value["partitions"][1]["under_replicated"], true);
        assert_eq!(value["partitions"][0]["log_start_offset"], 12);
        assert_eq!(value["partitions"][0]["log_end_offset"], 340);
        assert_eq!(value["partitions"][1]["log_end_offset"], Value::Null);
        assert_eq!(value["configs"][0]["source"], "DEFAULT_CONFIG");
        assert_eq!(value["configs"][1]["value"], "60000");
    }
}
