//! `sluice cluster quorum`: the controller quorum as its leader describes
//! it, printed as `kafka-metadata-quorum.sh describe --status` and
//! `--replication` print it, one after the other (or as one JSON document
//! with `--json`). `sluice cluster describe`: the cluster id, controller
//! and brokers (DescribeCluster). `sluice cluster info`: the APIs a broker
//! serves with their version ranges (its ApiVersions answer), and the
//! version this client would use of each, as
//! `kafka-broker-api-versions.sh` shows them, then the cluster's finalized
//! features (`metadata.version`) with their epoch, as `kafka-features.sh
//! describe` names them.
//!
//! Only the quorum's leader answers DescribeQuorum, and the others do not
//! say which node leads, so the client asks each address of
//! `--bootstrap-server` in turn: give it every voter. The printing is kept
//! in pure functions over the client's values, tested without a broker.

use clap::{Args, Subcommand};
use kafka_protocol::messages::ApiKey;
use serde_json::{json, Value};
use sluice_client::connection::client_versions;
use sluice_client::{
    Admin, ApiVersionRange, BrokerApiVersions, ClusterDescription, QuorumDescription,
    QuorumReplica, ResponseError,
};

use super::{json_line, print_stdout, table, CliError, ConnectionArgs};

#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum ClusterCommand {
    /// Show the controller quorum: its leader, epoch and high watermark,
    /// and each voter's log end offset, lag and last fetch. Only the leader
    /// answers; list every voter in --bootstrap-server.
    Quorum(QuorumArgs),
    /// Show the cluster: its id, the active controller, and every
    /// registered broker with its address and whether it is fenced.
    Describe(QuorumArgs),
    /// Show the APIs a broker serves (its ApiVersions answer): name, key,
    /// lowest and highest version, and the version this client would use.
    Info(QuorumArgs),
}

#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct QuorumArgs {
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Print the quorum as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(command: ClusterCommand) -> Result<(), CliError> {
    match command {
        ClusterCommand::Quorum(args) => quorum(args).await,
        ClusterCommand::Describe(args) => describe(args).await,
        ClusterCommand::Info(args) => info(args).await,
    }
}

async fn info(args: QuorumArgs) -> Result<(), CliError> {
    let admin = Admin::new(args.connection.client(false)?);
    let versions = args
        .connection
        .bounded("ask a broker for its API versions", admin.api_versions())
        .await?;
    let output = if args.json {
        json_line(&api_versions_json(&versions))
    } else {
        api_versions_text(&versions)
    };
    print_stdout(&output)
}

/// An API's name as Kafka spells it (`Produce`, `ApiVersions`), or
/// `Unknown(N)` for a key this build does not know.
fn api_name(api_key: i16) -> String {
    match ApiKey::try_from(api_key) {
        Ok(api) => format!("{api:?}"),
        Err(()) => format!("Unknown({api_key})"),
    }
}

/// The version this client would use of an API the broker serves in
/// `range`: the highest both speak, or none (not an API the client sends,
/// or no common version).
fn usable_version(range: &ApiVersionRange) -> Option<i16> {
    let api = ApiKey::try_from(range.api_key).ok()?;
    let (client_min, client_max) = client_versions(api)?;
    let version = client_max.min(range.max_version);
    (version >= client_min.max(range.min_version)).then_some(version)
}

/// `cluster info` for a person: who answered, then one row per API.
pub fn api_versions_text(versions: &BrokerApiVersions) -> String {
    let mut out = format!("Broker:  {}\n\n", versions.answered_by);
    let mut rows = vec![[
        "API".to_string(),
        "KEY".to_string(),
        "MIN".to_string(),
        "MAX".to_string(),
        "USABLE".to_string(),
    ]];
    for range in &versions.apis {
        rows.push([
            api_name(range.api_key),
            range.api_key.to_string(),
            range.min_version.to_string(),
            range.max_version.to_string(),
            usable_version(range).map_or_else(|| "-".to_string(), |v| v.to_string()),
        ]);
    }
    out.push_str(&table(&rows));
    // As `kafka-features.sh describe` names them (a cluster's nodes name
    // metadata.version; a single node names none).
    if !versions.finalized_features.is_empty() {
        out.push('\n');
        for (name, level) in &versions.finalized_features {
            out.push_str(&format!(
                "Feature: {name}  FinalizedVersionLevel: {level}  Epoch: {}\n",
                versions.finalized_features_epoch
            ));
        }
    }
    out
}

pub fn api_versions_json(versions: &BrokerApiVersions) -> Value {
    json!({
        "answered_by": versions.answered_by,
        "apis": versions.apis.iter().map(|range| json!({
            "api": api_name(range.api_key),
            "key": range.api_key,
            "min_version": range.min_version,
            "max_version": range.max_version,
            "usable_version": usable_version(range),
        })).collect::<Vec<_>>(),
        "finalized_features": versions.finalized_features.iter().map(|(name, level)| json!({
            "name": name,
            "level": level,
        })).collect::<Vec<_>>(),
        "finalized_features_epoch": versions.finalized_features_epoch,
    })
}

async fn describe(args: QuorumArgs) -> Result<(), CliError> {
    let admin = Admin::new(args.connection.client(false)?);
    let cluster = args
        .connection
        .bounded("describe the cluster", admin.describe_cluster())
        .await?;
    let output = if args.json {
        json_line(&cluster_json(&cluster))
    } else {
        cluster_text(&cluster)
    };
    print_stdout(&output)
}

/// The cluster as `sluice cluster describe` prints it.
pub fn cluster_text(cluster: &ClusterDescription) -> String {
    let controller = cluster
        .controller_id
        .map_or("none".to_string(), |id| id.to_string());
    let mut out = format!(
        "ClusterId:   {}
Controller:  {controller}

",
        cluster.cluster_id
    );
    let mut rows = vec![[
        "ID".to_string(),
        "HOST".to_string(),
        "PORT".to_string(),
        "RACK".to_string(),
        "STATUS".to_string(),
    ]];
    for broker in &cluster.brokers {
        let status = if cluster.fenced.contains(&broker.node_id) {
            "fenced"
        } else {
            "unfenced"
        };
        rows.push([
            broker.node_id.to_string(),
            broker.host.clone(),
            broker.port.to_string(),
            broker.rack.clone().unwrap_or_else(|| "-".into()),
            status.to_string(),
        ]);
    }
    out.push_str(&table(&rows));
    out
}

pub fn cluster_json(cluster: &ClusterDescription) -> Value {
    json!({
        "cluster_id": cluster.cluster_id,
        "controller_id": cluster.controller_id,
        "brokers": cluster.brokers.iter().map(|b| json!({
            "id": b.node_id,
            "host": b.host,
            "port": b.port,
            "rack": b.rack,
            "fenced": cluster.fenced.contains(&b.node_id),
        })).collect::<Vec<_>>(),
    })
}

async fn quorum(args: QuorumArgs) -> Result<(), CliError> {
    let admin = Admin::new(args.connection.client(false)?);
    let what = "describe the controller quorum";
    let (cluster, quorum) = args
        .connection
        .bounded_with(
            what,
            async {
                let quorum = admin.describe_quorum().await?;
                let cluster = admin.describe_cluster().await?;
                Ok((cluster, quorum))
            },
            explain,
        )
        .await?;
    let output = if args.json {
        json_line(&quorum_json(&cluster.cluster_id, &quorum))
    } else {
        quorum_text(&cluster.cluster_id, &quorum)
    };
    print_stdout(&output)
}

/// A node without a quorum has no `__cluster_metadata-0`: say that, not
/// that a topic is missing.
fn explain(what: &str, error: &sluice_client::Error) -> CliError {
    match error.response_error() {
        Some(ResponseError::UnknownTopicOrPartition) => CliError::Failed(format!(
            "{what}: no controller quorum here (the node has no {}-0; \
             start the nodes with controller.quorum.voters) (UNKNOWN_TOPIC_OR_PARTITION)",
            sluice_client::admin::quorum::METADATA_TOPIC
        )),
        Some(ResponseError::NotLeaderOrFollower) => CliError::Failed(format!(
            "{what}: none of the nodes asked leads the quorum (NOT_LEADER_OR_FOLLOWER); \
             list every voter in --bootstrap-server, or wait for the election"
        )),
        _ => CliError::from_client(what, error),
    }
}

/// `Leader`, `Follower` or `Observer`, as Kafka's tool names them.
fn status_of(quorum: &QuorumDescription, replica: &QuorumReplica, voter: bool) -> &'static str {
    match (voter, replica.node_id == quorum.leader_id) {
        (true, true) => "Leader",
        (true, false) => "Follower",
        (false, _) => "Observer",
    }
}

/// The replicas in the order Kafka's `--replication` lists them: the
/// leader, the other voters, the observers; each with whether it votes.
fn replication_order(quorum: &QuorumDescription) -> Vec<(&QuorumReplica, bool)> {
    let leader = quorum.leader().map(|l| (l, true));
    let followers = quorum
        .voters
        .iter()
        .filter(|v| v.node_id != quorum.leader_id)
        .map(|v| (v, true));
    let observers = quorum.observers.iter().map(|o| (o, false));
    leader
        .into_iter()
        .chain(followers)
        .chain(observers)
        .collect()
}

/// A voter as Kafka's `--status` writes it: id and endpoints.
fn replica_summary(quorum: &QuorumDescription, replica: &QuorumReplica) -> String {
    let endpoints: Vec<String> = quorum
        .endpoints
        .iter()
        .filter(|e| e.node_id == replica.node_id)
        .map(|e| format!("\"{}://{}\"", e.listener, host_port(&e.host, e.port)))
        .collect();
    if endpoints.is_empty() {
        format!("{{\"id\": {}}}", replica.node_id)
    } else {
        format!(
            "{{\"id\": {}, \"endpoints\": [{}]}}",
            replica.node_id,
            endpoints.join(", ")
        )
    }
}

fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn timestamp_text(ms: Option<i64>) -> String {
    ms.map_or_else(|| "-1".to_string(), |ms| ms.to_string())
}

/// `describe --status`, a blank line, then `describe --replication`.
pub fn quorum_text(cluster_id: &str, quorum: &QuorumDescription) -> String {
    let list = |replicas: &[QuorumReplica]| {
        let items: Vec<String> = replicas
            .iter()
            .map(|r| replica_summary(quorum, r))
            .collect();
        format!("[{}]", items.join(", "))
    };
    let mut out = format!(
        "ClusterId:              {cluster_id}\n\
         LeaderId:               {}\n\
         LeaderEpoch:            {}\n\
         HighWatermark:          {}\n\
         MaxFollowerLag:         {}\n\
         MaxFollowerLagTimeMs:   {}\n\
         CurrentVoters:          {}\n\
         CurrentObservers:       {}\n\n",
        quorum.leader_id,
        quorum.leader_epoch,
        quorum.high_watermark,
        quorum.max_follower_lag(),
        quorum.max_follower_lag_time_ms(),
        list(&quorum.voters),
        list(&quorum.observers),
    );
    let mut rows = vec![[
        "NodeId".to_string(),
        "LogEndOffset".to_string(),
        "Lag".to_string(),
        "LastFetchTimestamp".to_string(),
        "LastCaughtUpTimestamp".to_string(),
        "Status".to_string(),
    ]];
    for (replica, voter) in replication_order(quorum) {
        rows.push([
            replica.node_id.to_string(),
            replica.log_end_offset.to_string(),
            quorum.lag(replica).to_string(),
            timestamp_text(replica.last_fetch_timestamp),
            timestamp_text(replica.last_caught_up_timestamp),
            status_of(quorum, replica, voter).to_string(),
        ]);
    }
    out.push_str(&table(&rows));
    out
}

/// The same as one JSON document; unknown timestamps are null.
pub fn quorum_json(cluster_id: &str, quorum: &QuorumDescription) -> Value {
    let replica = |replica: &QuorumReplica, voter: bool| {
        let endpoints: Vec<String> = quorum
            .endpoints
            .iter()
            .filter(|e| e.node_id == replica.node_id)
            .map(|e| format!("{}://{}", e.listener, host_port(&e.host, e.port)))
            .collect();
        json!({
            "node_id": replica.node_id,
            "log_end_offset": replica.log_end_offset,
            "lag": quorum.lag(replica),
            "last_fetch_timestamp": replica.last_fetch_timestamp,
            "last_caught_up_timestamp": replica.last_caught_up_timestamp,
            "status": status_of(quorum, replica, voter),
            "endpoints": endpoints,
        })
    };
    json!({
        "cluster_id": cluster_id,
        "leader_id": quorum.leader_id,
        "leader_epoch": quorum.leader_epoch,
        "high_watermark": quorum.high_watermark,
        "max_follower_lag": quorum.max_follower_lag(),
        "max_follower_lag_time_ms": quorum.max_follower_lag_time_ms(),
        "voters": quorum.voters.iter().map(|v| replica(v, true)).collect::<Vec<_>>(),
        "observers": quorum.observers.iter().map(|o| replica(o, false)).collect::<Vec<_>>(),
        "answered_by": quorum.answered_by,
    })
}

#[cfg(test)]
mod tests {
    use sluice_client::{BrokerInfo, QuorumEndpoint};

    use super::*;

    #[test]
    fn cluster_text_lists_each_broker_with_its_fencing() {
        let broker = |node_id: i32| BrokerInfo {
            node_id,
            host: "127.0.0.1".into(),
            port: 9091 + node_id,
            rack: None,
        };
        let cluster = ClusterDescription {
            cluster_id: "abc".into(),
            controller_id: Some(2),
            brokers: vec![broker(1), broker(2)],
            fenced: vec![1],
        };
        assert_eq!(
            cluster_text(&cluster),
            "ClusterId:   abc\nController:  2\n\n\
             ID  HOST       PORT  RACK  STATUS\n\
             1   127.0.0.1  9092  -     fenced\n\
             2   127.0.0.1  9093  -     unfenced\n"
        );
        let json = cluster_json(&cluster);
        assert_eq!(json["brokers"][0]["fenced"], true);
        assert_eq!(json["brokers"][1]["fenced"], false);
    }

    #[test]
    fn info_names_each_api_with_its_range_and_the_version_used() {
        let range = |api_key, min_version, max_version| ApiVersionRange {
            api_key,
            min_version,
            max_version,
        };
        let versions = BrokerApiVersions {
            answered_by: "127.0.0.1:9092".into(),
            apis: vec![
                range(ApiKey::Produce as i16, 3, 13),
                range(ApiKey::ApiVersions as i16, 0, 4),
                // The client does not send this one.
                range(ApiKey::SaslHandshake as i16, 0, 1),
                range(999, 0, 2),
            ],
            finalized_features: Vec::new(),
            finalized_features_epoch: -1,
        };
        let (_, produce_max) = client_versions(ApiKey::Produce).unwrap();
        let (_, api_versions_max) = client_versions(ApiKey::ApiVersions).unwrap();
        assert_eq!(
            api_versions_text(&versions),
            format!(
                "Broker:  127.0.0.1:9092\n\n\
                 API            KEY  MIN  MAX  USABLE\n\
                 Produce        0    3    13   {}\n\
                 ApiVersions    18   0    4    {}\n\
                 SaslHandshake  17   0    1    -\n\
                 Unknown(999)   999  0    2    -\n",
                produce_max.min(13),
                api_versions_max.min(4)
            )
        );
        let json = api_versions_json(&versions);
        assert_eq!(json["apis"][0]["api"], "Produce");
        assert_eq!(json["apis"][0]["max_version"], 13);
        assert_eq!(json["apis"][2]["usable_version"], Value::Null);
        assert_eq!(json["finalized_features"], json!([]));
    }

    #[test]
    fn info_names_a_clusters_finalized_features_after_the_apis() {
        let versions = BrokerApiVersions {
            answered_by: "127.0.0.1:9093".into(),
            apis: Vec::new(),
            finalized_features: vec![("metadata.version".into(), 23)],
            finalized_features_epoch: 41,
        };
        let text = api_versions_text(&versions);
        assert!(
            text.ends_with("\nFeature: metadata.version  FinalizedVersionLevel: 23  Epoch: 41\n"),
            "{text}"
        );
        let json = api_versions_json(&versions);
        assert_eq!(
            json["finalized_features"],
            json!([{"name": "metadata.version", "level": 23}])
        );
        assert_eq!(json["finalized_features_epoch"], 41);
    }

    fn sample() -> QuorumDescription {
        let replica = |node_id, log_end_offset, seen_ms: Option<i64>| QuorumReplica {
            node_id,
            log_end_offset,
            last_fetch_timestamp: seen_ms,
            last_caught_up_timestamp: seen_ms,
        };
        QuorumDescription {
            leader_id: 2,
            leader_epoch: 5,
            high_watermark: 7,
            voters: vec![
                replica(1, 7, Some(1_700_000_000_500)),
                replica(2, 7, Some(1_700_000_001_000)),
                replica(3, -1, None),
            ],
            observers: Vec::new(),
            endpoints: (1..=3)
                .map(|id| QuorumEndpoint {
                    node_id: id,
                    listener: "CONTROLLER".into(),
                    host: "127.0.0.1".into(),
                    port: 9090 + id as u16,
                })
                .collect(),
            answered_by: "127.0.0.1:9092".into(),
        }
    }

    #[test]
    fn the_text_is_kafkas_status_then_its_replication_table() {
        assert_eq!(
            quorum_text("q-abc", &sample()),
            "\
ClusterId:              q-abc
LeaderId:               2
LeaderEpoch:            5
HighWatermark:          7
MaxFollowerLag:         8
MaxFollowerLagTimeMs:   -1
CurrentVoters:          [{\"id\": 1, \"endpoints\": [\"CONTROLLER://127.0.0.1:9091\"]}, \
{\"id\": 2, \"endpoints\": [\"CONTROLLER://127.0.0.1:9092\"]}, \
{\"id\": 3, \"endpoints\": [\"CONTROLLER://127.0.0.1:9093\"]}]
CurrentObservers:       []

NodeId  LogEndOffset  Lag  LastFetchTimestamp  LastCaughtUpTimestamp  Status
2       7             0    1700000001000       1700000001000          Leader
1       7             0    1700000000500       1700000000500          Follower
3       -1            8    -1                  -1                     Follower
"
        );
    }

    #[test]
    fn the_json_names_every_voter_with_its_lag_and_status() {
        let value = quorum_json("q-abc", &sample());
        assert_eq!(value["leader_id"], 2);
        assert_eq!(value["leader_epoch"], 5);
        assert_eq!(value["max_follower_lag"], 8);
        let voters = value["voters"].as_array().expect("voters");
        assert_eq!(voters.len(), 3);
        assert_eq!(voters[1]["status"], "Leader");
        assert_eq!(voters[0]["lag"], 0);
        assert_eq!(voters[2]["last_fetch_timestamp"], Value::Null);
        assert_eq!(
            voters[0]["endpoints"],
            json!(["CONTROLLER://127.0.0.1:9091"])
        );
    }
}
