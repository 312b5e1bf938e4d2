//! The `sluice` binary: `serve` runs a broker; `dump-log` prints a segment;
//! `topics`, `groups`, `cluster`, `produce` and `consume` talk to a running broker
//! (see `cli`). `serve` runs the driver of `sluice-driver` over real sockets
//! and files, on one current-thread runtime.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{Parser, Subcommand};
use sluice_core::config::BrokerConfig;
use sluice_core::NodeId;
use sluice_driver as driver;
use sluice_server::cli::{self, cluster, consume, groups, produce, topics, transactions};
use sluice_server::{config_file, dump_log};

/// `sluice --version`: the crate's version and the commit it was built
/// from (`unknown` outside a git checkout; see build.rs).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("SLUICE_GIT_COMMIT"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "sluice",
    version = VERSION,
    about = "A Kafka-compatible distributed log"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node: a broker with its controller, alone or, when
    /// controller.quorum.voters names other nodes, a voter of that quorum.
    /// Without --config the embedded defaults apply: data in ./sluice-data,
    /// listening on 127.0.0.1:9092.
    Serve {
        /// A file of broker settings under Kafka's key names: TOML, or
        /// Kafka's server.properties format (a .properties name, or
        /// key=value lines).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Set one key, over the file: --override num.partitions=3
        #[arg(long = "override", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// How log lines are written to stderr: text (coloured only on a
        /// terminal) or json (one object per line). RUST_LOG sets the level.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Print the batches of a segment file (.log), or the entries of an index.
    DumpLog {
        file: PathBuf,
        /// Also print every record.
        #[arg(long)]
        records: bool,
    },
    /// Create, list, describe, delete or grow topics.
    Topics {
        #[command(subcommand)]
        command: topics::TopicsCommand,
    },
    /// List, describe or delete consumer groups, or reset their offsets.
    Groups {
        #[command(subcommand)]
        command: groups::GroupsCommand,
    },
    /// Describe the cluster: its brokers, its controller quorum (leader,
    /// epoch, voters' lag), the API versions a broker serves.
    Cluster {
        #[command(subcommand)]
        command: cluster::ClusterCommand,
    },
    /// List transactional ids and their state, or describe one.
    Transactions {
        #[command(subcommand)]
        command: transactions::TransactionsCommand,
    },
    /// Write lines from stdin or a file as records, one per line.
    Produce(produce::ProduceArgs),
    /// Print records of a topic, alone or as a member of a consumer group.
    Consume(consume::ConsumeArgs),
    /// Measure a running broker: produce, consume, or end-to-end latency.
    Perf(sluice_server::perf::PerfArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // A bare `sluice` (or `sluice topics`) shows the help it lacks.
        Err(error) if error.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            error.exit()
        }
        Err(error) if error.use_stderr() => {
            eprintln!("sluice: {}", cli::clap_error_line(&error));
            return ExitCode::from(2);
        }
        // --help and --version: clap prints them to stdout and exits 0.
        Err(help) => help.exit(),
    };
    let result = match cli.command {
        Command::Serve {
            config,
            overrides,
            log_format,
        } => serve(config, overrides, log_format),
        Command::DumpLog { file, records } => {
            dump_log::run(&file, records, &mut std::io::stdout().lock())
        }
        Command::Topics { command } => return cli::run(topics::run(command)),
        Command::Groups { command } => return cli::run(groups::run(command)),
        Command::Cluster { command } => return cli::run(cluster::run(command)),
        Command::Transactions { command } => return cli::run(transactions::run(command)),
        Command::Produce(args) => return cli::run(produce::run(args)),
        Command::Consume(args) => return cli::run(consume::run(args)),
        Command::Perf(args) => sluice_server::perf::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("sluice: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Sends log lines to stderr, as text (with colours only when stderr is a
/// terminal, so none reach a file or the journal) or as JSON lines.
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}

fn serve(
    config_path: Option<PathBuf>,
    overrides: Vec<String>,
    log_format: LogFormat,
) -> anyhow::Result<()> {
    init_logging(log_format);
    // Raised first, said after the identity lines: a refusal to start
    // stays the one line on stderr.
    let descriptors = driver::limits::raise_open_files_limit();
    let pairs = overrides
        .iter()
        .map(|argument| config_file::parse_override(argument))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let config = config_file::load(config_path.as_deref(), &pairs)?;
    let listen = config_file::parse_listener(&config.listeners)?;
    let advertised = config_file::parse_listener(&config.advertised_listeners)?;
    let metrics_address = match config.metrics_listener.as_str() {
        "" => None,
        value => Some(config_file::parse_metrics_listener(value)?),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let shutdown = shutdown_signal()?;
        // The directory first: a second broker on it stops here, before it
        // binds anything. What the broker is and what it read is logged
        // before it listens, so whoever waits for the port finds it.
        let mut disk = driver::FileDisk::open(std::path::Path::new(&config.log_dirs))
            .map_err(|error| anyhow::anyhow!("log.dirs: {error}"))?;
        log_identity(&config, config_path.as_deref(), &pairs);
        let descriptors_soft = log_descriptor_limit(descriptors);
        disk.set_open_files_max(
            config
                .open_files_max
                .unwrap_or_else(|| driver::limits::open_files_max_default(descriptors_soft)),
        );
        tracing::info!(
            open_files_max = disk.open_files_max(),
            derived = config.open_files_max.is_none(),
            "segment files held open at most (log.open.files.max); idle ones are closed"
        );
        let peers = quorum_peers(&config);
        let listener = driver::bind(&listen).await?;
        let metrics_listener = match &metrics_address {
            Some(address) => Some(driver::bind(address).await?),
            None => None,
        };
        // An ephemeral port (0) is advertised as the port actually bound.
        let bound = listener.local_addr()?.port();
        let advertised = (
            if advertised.0.is_empty() || advertised.0 == "0.0.0.0" {
                "localhost".to_string()
            } else {
                advertised.0
            },
            if advertised.1 == 0 {
                bound
            } else {
                advertised.1
            },
        );
        log_listeners(
            &config,
            listener.local_addr()?,
            &advertised,
            match &metrics_listener {
                Some(bound) => Some(bound.local_addr()?),
                None => None,
            },
        );
        let environment = driver::Environment {
            config,
            listener,
            disk,
            advertised,
            clock: driver::system_clock(),
            seed: fresh_seed(),
            peers,
            connector: driver::TokioConnector,
            peer_status: None,
            metrics_listener,
        };
        Ok(driver::serve(environment, shutdown).await?)
    })
}

/// Logs how raising the soft limit on open descriptors to the hard limit
/// went; returns the soft limit in force.
fn log_descriptor_limit(raised: std::io::Result<driver::limits::OpenFilesRaise>) -> u64 {
    match raised {
        Ok(raised) => {
            tracing::info!(
                soft_before = raised.soft_before,
                soft = raised.limit.soft,
                hard = raised.limit.hard,
                "file descriptor limit (RLIMIT_NOFILE): soft raised to the hard limit"
            );
            raised.limit.soft
        }
        Err(error) => {
            let soft = driver::limits::open_files_limit().map_or(1024, |limit| limit.soft);
            tracing::warn!(%error, soft, "cannot raise the file descriptor limit");
            soft
        }
    }
}

/// The first lines an operator reads: what runs as which node, which
/// configuration it read (the file, and each override on top), and where
/// its data is.
fn log_identity(
    config: &BrokerConfig,
    config_path: Option<&std::path::Path>,
    overrides: &[(String, String)],
) {
    tracing::info!(
        version = VERSION,
        node_id = config.node_id,
        "starting sluice"
    );
    let source = match config_path {
        Some(path) => path.display().to_string(),
        None => "built-in defaults (no --config)".to_string(),
    };
    let overrides: Vec<String> = overrides
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    tracing::info!(
        config = %source,
        keys_set = config.values.explicit.len(),
        overrides = %overrides.join(" "),
        "configuration"
    );
    let log_dir = std::path::Path::new(&config.log_dirs);
    let absolute = std::fs::canonicalize(log_dir).unwrap_or_else(|_| log_dir.to_path_buf());
    tracing::info!(log_dir = %absolute.display(), "log directory");
}

/// Where the broker listens and what it tells clients (with a warning
/// for every address told as `localhost`), and where metrics are served.
fn log_listeners(
    config: &BrokerConfig,
    listener: std::net::SocketAddr,
    advertised: &(String, u16),
    metrics: Option<std::net::SocketAddr>,
) {
    let told = format!("{}:{}", advertised.0, advertised.1);
    tracing::info!(listener = %listener, advertised = %told, "listening for clients");
    if listener.ip().is_unspecified() && config.get("advertised.listeners").is_empty() {
        tracing::warn!(
            listener = %listener,
            advertised = %told,
            "listening on every address but telling clients `{}`: set advertised.listeners to an address they can reach",
            advertised.0
        );
    }
    match metrics {
        Some(address) => {
            tracing::info!(address = %address, "serving metrics at /metrics, /health and /ready")
        }
        None => tracing::info!("no metrics.listener: metrics are not served"),
    }
}

/// The other voters of `controller.quorum.voters`, where the driver keeps
/// a link to each: a voter's address is its one listener, where it serves
/// the quorum and clients alike. Logs which quorum this node joins; with
/// no voters configured the node is alone and has no peers.
fn quorum_peers(config: &BrokerConfig) -> BTreeMap<NodeId, (String, u16)> {
    let voters = &config.quorum_voters;
    if voters.is_empty() {
        tracing::info!(
            node_id = config.node_id,
            "no controller.quorum.voters: a single node"
        );
        return BTreeMap::new();
    }
    let listed: Vec<String> = voters
        .iter()
        .map(|v| format!("{}@{}:{}", v.id, v.host, v.port))
        .collect();
    tracing::info!(
        node_id = config.node_id,
        voters = %listed.join(","),
        "joining the controller quorum"
    );
    voters
        .iter()
        .filter(|voter| voter.id != config.node_id)
        .map(|voter| (NodeId(voter.id), (voter.host.clone(), voter.port)))
        .collect()
}

/// A seed for the node's generator; only ids (topic, cluster) depend on it.
fn fresh_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ ((std::process::id() as u64) << 32)
}

/// Resolves at SIGTERM or SIGINT. The handlers are installed when this is
/// called, not when it is first awaited: a signal during start-up (bind,
/// recovery) waits for the broker to serve, then stops it cleanly, where
/// the default action would have killed it mid-recovery.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}
