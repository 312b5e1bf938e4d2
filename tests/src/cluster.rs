//! A three-node cluster for whole-system tests: three `sluice serve`
//! processes sharing `controller.quorum.voters`, every node a voter and a
//! broker, each with a metrics listener.
//!
//! [`Cluster::start`] returns once every node lists all three brokers at
//! the ports they were given and names the same controller, and the
//! quorum agrees. The helpers here poll what each running node's Metadata
//! says ([`Cluster::partitions`], [`Cluster::wait_for_failover`], ...)
//! against deadlines; a cluster dropped while its test panics prints that
//! state, beside the log tails the brokers' own drops print.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::thread;
use std::time::{Duration, Instant};

use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::metadata_response::MetadataResponsePartition;
use kafka_protocol::messages::{
    ApiKey, BrokerId, FindCoordinatorRequest, FindCoordinatorResponse, MetadataRequest,
    MetadataResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use serde_json::{json, Value};

use crate::wire::Wire;
use crate::{free_ports, metric_sample, run_sluice, scrape_metrics, Broker, BrokerOptions};

/// Nodes of the cluster, ids `1..=NODES`.
pub const NODES: usize = 3;

/// With [`short_sessions`], a broker not heard from for this long is
/// fenced: the time from a kill to its leaderships moving, when the
/// controller survives.
pub const SESSION_TIMEOUT_MS: i64 = 3_000;
pub const HEARTBEAT_INTERVAL_MS: i64 = 500;

/// From the last start to every node listing all three brokers and naming
/// one controller (an election, three registrations, their unfencing).
const FORMED_WITHIN: Duration = Duration::from_secs(20);

/// From a topic's creation to every node reporting its partitions with a
/// leader and a full ISR.
const SPREAD_WITHIN: Duration = Duration::from_secs(15);

/// The pause between two polls.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Bound on one Metadata or FindCoordinator answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// Bound on one `sluice` command.
const SLUICE_TIMEOUT: Duration = Duration::from_secs(30);

/// Metadata v12: brokers, controller, leaders with epochs, replicas, ISR
/// and offline replicas.
const METADATA_VERSION: i16 = 12;

/// FindCoordinator key types.
pub const GROUP_KEY: i8 = 0;
pub const TRANSACTION_KEY: i8 = 1;

/// Short broker sessions, so that a killed broker is fenced within
/// seconds and failover tests stay short.
pub fn short_sessions(options: BrokerOptions) -> BrokerOptions {
    options
        .config("broker.session.timeout.ms", SESSION_TIMEOUT_MS)
        .config("broker.heartbeat.interval.ms", HEARTBEAT_INTERVAL_MS)
}

/// One partition as a broker's Metadata describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionView {
    pub partition: i32,
    /// -1 when the partition answered an error.
    pub leader: i32,
    pub leader_epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    pub offline: Vec<i32>,
}

impl PartitionView {
    pub fn of(described: &MetadataResponsePartition) -> PartitionView {
        PartitionView {
            partition: described.partition_index,
            leader: if described.error_code == 0 {
                described.leader_id.0
            } else {
                -1
            },
            leader_epoch: described.leader_epoch,
            replicas: ids(&described.replica_nodes),
            isr: ids(&described.isr_nodes),
            offline: ids(&described.offline_replicas),
        }
    }

    pub fn isr_set(&self) -> BTreeSet<i32> {
        self.isr.iter().copied().collect()
    }
}

fn ids(list: &[BrokerId]) -> Vec<i32> {
    list.iter().map(|id| id.0).collect()
}

/// Three `sluice serve` processes sharing `controller.quorum.voters`.
/// Dropped while its test panics, it prints what every running node's
/// Metadata says.
pub struct Cluster {
    nodes: Vec<Broker>,
    /// Each node's metrics listener, by node index.
    metrics_ports: Vec<u16>,
    /// The active controller when the cluster formed.
    pub controller: i32,
}

impl Cluster {
    /// Starts the nodes, each with `configure` applied to its options (node
    /// id, voters, a metrics listener and `group.initial.rebalance.delay.ms
    /// = 0` set), and waits until the cluster has formed.
    pub fn start(configure: impl Fn(BrokerOptions) -> BrokerOptions) -> Cluster {
        let all_ports = free_ports(2 * NODES);
        let (ports, metrics_ports) = all_ports.split_at(NODES);
        let voters = (0..NODES)
            .map(|i| format!("{}@127.0.0.1:{}", i + 1, ports[i]))
            .collect::<Vec<_>>()
            .join(",");
        let nodes: Vec<Broker> = (0..NODES)
            .map(|i| {
                let options = BrokerOptions::default()
                    .config("node.id", (i + 1) as i64)
                    .config("controller.quorum.voters", voters.as_str())
                    .config("group.initial.rebalance.delay.ms", 0)
                    .config(
                        "metrics.listener",
                        format!("127.0.0.1:{}", metrics_ports[i]),
                    );
                Broker::start_on(ports[i], configure(options))
            })
            .collect();
        let started = Instant::now();
        let mut cluster = Cluster {
            nodes,
            metrics_ports: metrics_ports.to_vec(),
            controller: 0,
        };
        cluster.controller = cluster.wait_until(
            FORMED_WITHIN,
            "every node listing all three brokers and naming one controller",
            Cluster::agreed_controller,
        );
        eprintln!(
            "cluster formed {:.1?} after the last start; controller {}",
            started.elapsed(),
            cluster.controller
        );
        let quorum = cluster.quorum();
        assert_eq!(
            quorum["leader_id"],
            json!(cluster.controller),
            "Metadata names controller {}, the quorum another leader: {quorum}",
            cluster.controller
        );
        cluster
    }

    /// The controller every node names, once each lists all three brokers
    /// at their own ports.
    fn agreed_controller(&self) -> Result<i32, String> {
        let expected: BTreeMap<i32, i32> = self
            .ids()
            .map(|id| (id, i32::from(self.node(id).port())))
            .collect();
        let mut named = BTreeSet::new();
        for id in self.ids() {
            let answer = metadata(&self.bootstrap(id), Some(&[]))?;
            let listed: BTreeMap<i32, i32> = answer
                .brokers
                .iter()
                .map(|b| (b.node_id.0, b.port))
                .collect();
            if listed != expected {
                return Err(format!("node {id} lists brokers {listed:?}"));
            }
            named.insert(answer.controller_id.0);
        }
        match named.len() {
            1 => Ok(*named.first().expect("one controller")),
            _ => Err(format!("the nodes name controllers {named:?}")),
        }
    }

    pub fn ids(&self) -> impl Iterator<Item = i32> {
        1..=NODES as i32
    }

    pub fn node(&self, id: i32) -> &Broker {
        &self.nodes[index(id)]
    }

    pub fn node_mut(&mut self, id: i32) -> &mut Broker {
        &mut self.nodes[index(id)]
    }

    pub fn bootstrap(&self, id: i32) -> String {
        self.node(id).bootstrap()
    }

    /// Every node's address, dead or alive, as a client is configured.
    pub fn bootstrap_all(&self) -> String {
        self.ids()
            .map(|id| self.bootstrap(id))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The running nodes' addresses.
    pub fn bootstrap_running(&self) -> String {
        self.running()
            .into_iter()
            .map(|id| self.bootstrap(id))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The nodes whose process runs.
    pub fn running(&self) -> Vec<i32> {
        self.ids()
            .filter(|&id| self.node(id).pid().is_some())
            .collect()
    }

    /// The nodes that are not the controller the cluster formed with.
    pub fn followers(&self) -> Vec<i32> {
        self.ids().filter(|&id| id != self.controller).collect()
    }

    /// A running node other than `not`.
    pub fn other_than(&self, not: &[i32]) -> i32 {
        self.running()
            .into_iter()
            .find(|id| !not.contains(id))
            .expect("a running node outside the excluded ones")
    }

    /// Kills a node with SIGKILL: a crash.
    pub fn kill(&mut self, id: i32) {
        self.node_mut(id).kill9();
        eprintln!("killed node {id} with SIGKILL");
    }

    /// Starts a killed node again, with its data.
    pub fn restart(&mut self, id: i32) {
        self.node_mut(id).restart();
        eprintln!("restarted node {id}");
    }

    /// A node's `/metrics` text.
    pub fn metrics(&self, id: i32) -> Result<String, String> {
        scrape_metrics(self.metrics_ports[index(id)]).map_err(|e| format!("node {id}: {e}"))
    }

    /// The sum of one unlabelled metric over the running nodes.
    pub fn metric_sum(&self, name: &str) -> Result<f64, String> {
        let mut sum = 0.0;
        for id in self.running() {
            let text = self.metrics(id)?;
            sum += metric_sample(&text, name).ok_or_else(|| format!("node {id} has no {name}"))?;
        }
        Ok(sum)
    }

    /// `sluice cluster quorum --json`, asked of every node.
    pub fn quorum(&self) -> Value {
        let run = run_sluice(
            &[
                "cluster",
                "quorum",
                "--json",
                "--bootstrap-server",
                &self.bootstrap_all(),
            ],
            None,
            SLUICE_TIMEOUT,
        );
        assert!(
            run.status.success(),
            "`{}`: {}",
            run.command_line,
            String::from_utf8_lossy(&run.stderr)
        );
        serde_json::from_slice(&run.stdout).expect("`sluice cluster quorum --json` prints JSON")
    }

    /// Polls `probe` until it answers `Ok`; panics past `within` with its
    /// last error and the cluster's state.
    pub fn wait_until<T>(
        &self,
        within: Duration,
        what: &str,
        mut probe: impl FnMut(&Cluster) -> Result<T, String>,
    ) -> T {
        let started = Instant::now();
        loop {
            let last = match probe(self) {
                Ok(value) => return value,
                Err(last) => last,
            };
            assert!(
                started.elapsed() < within,
                "{what}: not within {within:?}; last poll: {last}\n{}",
                self.state()
            );
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Creates a topic with three replicas and `min.insync.replicas=2`
    /// (sent to every node; one that is not the controller forwards it)
    /// and waits until every node reports each partition led, with all
    /// three replicas in its ISR.
    pub fn create_topic(&self, topic: &str, partitions: i32) -> Vec<PartitionView> {
        crate::sluice_stdout(
            &self.bootstrap_all(),
            &[
                "topics",
                "create",
                topic,
                "--partitions",
                &partitions.to_string(),
                "--replication-factor",
                "3",
                "--config",
                "min.insync.replicas=2",
            ],
        );
        self.wait_for_full_isr(topic, partitions, SPREAD_WITHIN)
    }

    /// A topic's `partitions` partitions, each with a leader, as every
    /// running node reports them (an error while two nodes disagree).
    pub fn partitions(&self, topic: &str, partitions: i32) -> Result<Vec<PartitionView>, String> {
        let mut seen: Option<(i32, Vec<PartitionView>)> = None;
        for id in self.running() {
            let views = partition_views(&self.bootstrap(id), topic, partitions)?;
            match &seen {
                Some((first, earlier)) if *earlier != views => {
                    return Err(format!(
                        "node {first} reports {earlier:?}, node {id} reports {views:?}"
                    ))
                }
                Some(_) => {}
                None => seen = Some((id, views)),
            }
        }
        seen.map(|(_, views)| views)
            .ok_or_else(|| "no node is running".to_string())
    }

    /// Waits, at most `within`, after `killed` was killed, until every
    /// partition of the topic is led by another node in a later leader
    /// epoch than `before` had where `killed` led, and `killed` is in no
    /// ISR. The views then.
    pub fn wait_for_failover(
        &self,
        topic: &str,
        killed: i32,
        before: &[PartitionView],
        within: Duration,
    ) -> Vec<PartitionView> {
        let partitions = before.len() as i32;
        self.wait_until(
            within,
            &format!("{topic}'s partitions led elsewhere and node {killed} out of their ISRs"),
            |cluster| {
                let views = cluster.partitions(topic, partitions)?;
                for (view, old) in views.iter().zip(before) {
                    let moved = old.leader != killed || view.leader_epoch > old.leader_epoch;
                    if view.leader == killed || view.isr.contains(&killed) || !moved {
                        return Err(format!("partition {view:?} (was {old:?})"));
                    }
                }
                Ok(views)
            },
        )
    }

    /// Waits, at most `within`, until every partition of the topic has all
    /// three replicas in its ISR. The views then.
    pub fn wait_for_full_isr(
        &self,
        topic: &str,
        partitions: i32,
        within: Duration,
    ) -> Vec<PartitionView> {
        let everyone: BTreeSet<i32> = self.ids().collect();
        self.wait_until(
            within,
            &format!("all three replicas in the ISR of every partition of {topic}"),
            |cluster| {
                let views = cluster.partitions(topic, partitions)?;
                match views.iter().find(|view| view.isr_set() != everyone) {
                    Some(view) => Err(format!("partition {view:?} has not a full ISR")),
                    None => Ok(views),
                }
            },
        )
    }

    /// What every running node's Metadata says: brokers, controller and
    /// each topic's partitions, for failure messages.
    pub fn state(&self) -> String {
        let mut out = String::from("---- the cluster as each running node describes it ----\n");
        for id in self.ids() {
            if self.node(id).pid().is_none() {
                let _ = writeln!(out, "node {id}: not running");
                continue;
            }
            match metadata(&self.bootstrap(id), None) {
                Ok(answer) => out.push_str(&describe_metadata(id, &answer)),
                Err(error) => {
                    let _ = writeln!(out, "node {id}: {error}");
                }
            }
        }
        out.push_str("---- end of the cluster's state ----");
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("{}", self.state());
        }
    }
}

fn index(id: i32) -> usize {
    usize::try_from(id - 1).expect("node ids start at 1")
}

/// One node's Metadata answer, a line per broker list and partition.
fn describe_metadata(id: i32, answer: &MetadataResponse) -> String {
    let brokers: Vec<i32> = answer.brokers.iter().map(|b| b.node_id.0).collect();
    let mut out = format!(
        "node {id}: brokers {brokers:?}, controller {}\n",
        answer.controller_id.0
    );
    for topic in &answer.topics {
        let name = topic.name.as_ref().map_or("?", |n| n.0.as_str());
        for p in &topic.partitions {
            let _ = writeln!(
                out,
                "  {name}/{}: error {}, leader {} epoch {}, replicas {:?}, isr {:?}, offline {:?}",
                p.partition_index,
                p.error_code,
                p.leader_id.0,
                p.leader_epoch,
                ids(&p.replica_nodes),
                ids(&p.isr_nodes),
                ids(&p.offline_replicas),
            );
        }
    }
    out
}

/// Metadata from one node, for `topics` (every topic when `None`), never
/// creating one.
pub fn metadata(bootstrap: &str, topics: Option<&[&str]>) -> Result<MetadataResponse, String> {
    let mut wire = Wire::connect(bootstrap).map_err(|e| format!("connect to {bootstrap}: {e}"))?;
    let _ = wire.stream.set_read_timeout(Some(ANSWER_WITHIN));
    let topics = topics.map(|names| {
        names
            .iter()
            .map(|name| {
                MetadataRequestTopic::default()
                    .with_name(Some(TopicName(StrBytes::from_string(name.to_string()))))
            })
            .collect()
    });
    let request = MetadataRequest::default()
        .with_topics(topics)
        .with_allow_auto_topic_creation(false);
    wire.call(ApiKey::Metadata, METADATA_VERSION, &request)
        .map_err(|e| format!("Metadata v{METADATA_VERSION} from {bootstrap}: {e}"))
}

/// A topic's partitions as one node reports them, once it has
/// `partitions` partitions, each with a leader and no error.
pub fn partition_views(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
) -> Result<Vec<PartitionView>, String> {
    let answer = metadata(bootstrap, Some(&[topic]))?;
    let described = answer
        .topics
        .iter()
        .find(|t| t.name.as_ref().map(|n| n.0.as_str()) == Some(topic))
        .ok_or_else(|| format!("{bootstrap} does not answer for {topic}"))?;
    if described.error_code != 0 {
        return Err(format!(
            "{bootstrap}: {topic} has error {}",
            described.error_code
        ));
    }
    let mut views: Vec<PartitionView> =
        described.partitions.iter().map(PartitionView::of).collect();
    views.sort_by_key(|view| view.partition);
    let numbers: Vec<i32> = views.iter().map(|view| view.partition).collect();
    if numbers != (0..partitions).collect::<Vec<_>>() {
        return Err(format!("{bootstrap}: {topic} has partitions {numbers:?}"));
    }
    match views.iter().find(|view| view.leader < 1) {
        Some(view) => Err(format!("{bootstrap}: {topic} has no leader: {view:?}")),
        None => Ok(views),
    }
}

/// The coordinator FindCoordinator v3 at `bootstrap` names for `key` (a
/// group with [`GROUP_KEY`], a transactional id with [`TRANSACTION_KEY`]);
/// an error while there is none (or its internal topic is being made).
pub fn find_coordinator(bootstrap: &str, key: &str, key_type: i8) -> Result<i32, String> {
    let mut wire = Wire::connect(bootstrap).map_err(|e| format!("connect to {bootstrap}: {e}"))?;
    let _ = wire.stream.set_read_timeout(Some(ANSWER_WITHIN));
    let request = FindCoordinatorRequest::default()
        .with_key(StrBytes::from_string(key.to_string()))
        .with_key_type(key_type);
    let response: FindCoordinatorResponse = wire
        .call(ApiKey::FindCoordinator, 3, &request)
        .map_err(|e| format!("FindCoordinator v3 from {bootstrap}: {e}"))?;
    match response.error_code {
        0 => Ok(response.node_id.0),
        code => Err(format!(
            "FindCoordinator for {key} (key type {key_type}) at {bootstrap} answered error {code}"
        )),
    }
}
