//! The client commands of the `sluice` binary: `topics`, `groups`,
//! `cluster`, `transactions`, `produce` and `consume`, built on
//! `sluice-client`.
//!
//! This module holds what they share: the connection flags
//! (`--bootstrap-server` or `-b`, else `SLUICE_BOOTSTRAP_SERVERS`, else
//! `KAFKA_BOOTSTRAP_SERVERS`, else `127.0.0.1:9092`; and
//! `--request-timeout-ms`), the tokio runtime each
//! command runs in, the bound on every broker operation, the printing of
//! tables and JSON, and the one error type whose `Display` is the single
//! line printed on failure. Errors a user
//! can cause (no broker, an unknown topic, bad arguments) become that line
//! and a non-zero exit status: 2 for bad arguments (as clap does), 1 for
//! everything else. Machine-readable output (`--json`) always goes to
//! stdout; summaries meant for a person go to stderr.

pub mod cluster;
pub mod consume;
pub mod format;
pub mod groups;
pub mod produce;
pub mod topics;
pub mod transactions;

use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde_json::Value;
use sluice_client::{Client, ClientConfig, ResponseError, TokioConnector};

/// The address clients use when none is given, as Kafka's tools do.
pub const BOOTSTRAP_SERVER_DEFAULT: &str = "127.0.0.1:9092";

/// Environment variables that name the bootstrap servers when no
/// `--bootstrap-server` is given, the first one set winning.
pub const BOOTSTRAP_ENV_VARS: [&str; 2] = ["SLUICE_BOOTSTRAP_SERVERS", "KAFKA_BOOTSTRAP_SERVERS"];

/// Longest wait for one TCP connection and version negotiation; a
/// blackholed address then fails well inside the operation bound.
pub const CONNECT_TIMEOUT_MS_MAX: u64 = 5_000;

/// Flags every client command takes.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct ConnectionArgs {
    /// Broker address(es) to start from, `host:port[,host:port...]`
    /// [default: $SLUICE_BOOTSTRAP_SERVERS, else $KAFKA_BOOTSTRAP_SERVERS,
    /// else 127.0.0.1:9092].
    #[arg(long, short = 'b', value_name = "HOST:PORT")]
    pub bootstrap_server: Option<String>,
    /// How long one operation on the cluster (a lookup, a topic change, a
    /// record's delivery) may take, retries included.
    #[arg(long, value_name = "MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub request_timeout_ms: u64,
}

/// The bootstrap list to use and where it came from (a flag, a variable
/// or the default), so that a bad one can be blamed on its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bootstrap {
    pub servers: String,
    pub source: &'static str,
}

/// The flag's value, else the first of `BOOTSTRAP_ENV_VARS` that `lookup`
/// finds non-blank, else the default. Kept apart from the process's
/// environment so tests need not change it.
pub fn resolve_bootstrap(flag: Option<&str>, lookup: impl Fn(&str) -> Option<String>) -> Bootstrap {
    if let Some(servers) = flag {
        return Bootstrap {
            servers: servers.to_string(),
            source: "--bootstrap-server",
        };
    }
    for name in BOOTSTRAP_ENV_VARS {
        if let Some(servers) = lookup(name).filter(|value| !value.trim().is_empty()) {
            return Bootstrap {
                servers,
                source: name,
            };
        }
    }
    Bootstrap {
        servers: BOOTSTRAP_SERVER_DEFAULT.to_string(),
        source: "the default",
    }
}

/// `resolve_bootstrap` over the process's environment.
pub fn bootstrap_from_environment(flag: Option<&str>) -> Bootstrap {
    resolve_bootstrap(flag, |name| std::env::var(name).ok())
}

/// A bootstrap list split on commas, each entry checked to be
/// `host:port`; a bad one is named with the list's source.
pub fn split_bootstrap(bootstrap: &Bootstrap) -> Result<Vec<String>, CliError> {
    let servers: Vec<String> = bootstrap
        .servers
        .split(',')
        .map(|server| server.trim().to_string())
        .collect();
    if let Some(bad) = servers.iter().find(|s| !looks_like_host_port(s)) {
        return Err(CliError::Usage(format!(
            "{} wants HOST:PORT[,HOST:PORT...], got `{bad}`",
            bootstrap.source
        )));
    }
    Ok(servers)
}

impl ConnectionArgs {
    /// The bootstrap list: the flag, the environment or the default.
    pub fn bootstrap(&self) -> Bootstrap {
        bootstrap_from_environment(self.bootstrap_server.as_deref())
    }

    /// The bootstrap list, split on commas, empty entries refused.
    pub fn bootstrap_servers(&self) -> Result<Vec<String>, CliError> {
        split_bootstrap(&self.bootstrap())
    }

    /// A client for these brokers. `auto_create` says whether Metadata may
    /// create unknown topics (only `produce` lets the broker decide).
    pub fn client(&self, auto_create: bool) -> Result<Client<TokioConnector>, CliError> {
        let mut config = ClientConfig::new(self.bootstrap_servers()?).with_client_id("sluice-cli");
        config.seed = fresh_seed();
        config.request_timeout_ms = self.request_timeout_ms;
        config.connect_timeout_ms = self.request_timeout_ms.min(CONNECT_TIMEOUT_MS_MAX);
        config.allow_auto_topic_creation = auto_create;
        Client::new(TokioConnector, config).map_err(|error| CliError::Usage(error.to_string()))
    }

    /// Runs one broker operation within `--request-timeout-ms`; the client's
    /// own error wins when it comes first (it says more than a timeout).
    pub async fn bounded<T>(
        &self,
        what: &str,
        operation: impl Future<Output = sluice_client::Result<T>>,
    ) -> Result<T, CliError> {
        self.bounded_with(what, operation, CliError::from_client)
            .await
    }

    /// As `bounded`, telling a client error with `explain` instead.
    pub async fn bounded_with<T>(
        &self,
        what: &str,
        operation: impl Future<Output = sluice_client::Result<T>>,
        explain: impl FnOnce(&str, &sluice_client::Error) -> CliError,
    ) -> Result<T, CliError> {
        let bound = Duration::from_millis(self.request_timeout_ms);
        match tokio::time::timeout(bound, operation).await {
            Ok(result) => result.map_err(|error| explain(what, &error)),
            Err(_) => Err(CliError::Failed(format!(
                "{what}: no answer from {} within {} ms",
                self.bootstrap().servers,
                self.request_timeout_ms
            ))),
        }
    }
}

fn looks_like_host_port(server: &str) -> bool {
    match server.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    }
}

/// A seed for the client's jitter and sticky partitions: each run differs,
/// as Kafka's tools do.
fn fresh_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64);
    nanos ^ ((std::process::id() as u64) << 32)
}

/// Why a command failed; `Display` is the one line printed after `sluice: `.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CliError {
    /// Arguments that cannot work (exit status 2).
    #[error("{0}")]
    Usage(String),
    /// The command was understood but could not be carried out (status 1).
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Usage(_) => ExitCode::from(2),
            CliError::Failed(_) => ExitCode::from(1),
        }
    }

    /// A client error, told the way a user wants to read it: unknown topics
    /// and unreachable brokers by name, everything else as the client says.
    pub fn from_client(what: &str, error: &sluice_client::Error) -> CliError {
        use sluice_client::Error;
        let message = match error {
            Error::Broker {
                error: ResponseError::UnknownTopicOrPartition,
                ..
            } => format!("{what}: the topic does not exist (UNKNOWN_TOPIC_OR_PARTITION)"),
            Error::Broker {
                error: ResponseError::TopicAlreadyExists,
                ..
            } => format!("{what}: the topic already exists (TOPIC_ALREADY_EXISTS)"),
            Error::NoBrokerReachable { last } => format!("{what}: no broker reachable ({last})"),
            // The client names what it was doing; say it once.
            other => match other.to_string() {
                text if text.starts_with(what) => text,
                text => format!("{what}: {text}"),
            },
        };
        CliError::Failed(message)
    }

    /// A client error where a broker's refusal is told by its Kafka name,
    /// followed by `meaning(code)` (what it means to a user, or nothing).
    pub fn refused(
        what: &str,
        error: &sluice_client::Error,
        meaning: impl FnOnce(ResponseError) -> &'static str,
    ) -> CliError {
        let Some(code) = error.response_error() else {
            return CliError::from_client(what, error);
        };
        CliError::Failed(format!("{what}: {}{}", error_name(code), meaning(code)))
    }

    fn io(what: &str, error: &std::io::Error) -> CliError {
        CliError::Failed(format!("{what}: {error}"))
    }
}

/// Runs a command's future on a runtime of its own and turns the outcome
/// into an exit status, printing a failure as one line on stderr.
pub fn run(command: impl Future<Output = Result<(), CliError>>) -> ExitCode {
    install_log_subscriber();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(&CliError::io("cannot start the runtime", &error)),
    };
    match runtime.block_on(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(&error),
    }
}

/// Prints `sluice: <error>` as exactly one line and returns its status.
pub fn fail(error: &CliError) -> ExitCode {
    eprintln!("sluice: {}", one_line(&error.to_string()));
    error.exit_code()
}

/// Line breaks (a broker's error message may hold some) become spaces.
pub fn one_line(text: &str) -> String {
    text.split(['\n', '\r'])
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The client logs through `tracing`; a person debugging sets `RUST_LOG`
/// to see it. Without it nothing but the commands' own output appears.
fn install_log_subscriber() {
    if std::env::var_os("RUST_LOG").is_none() {
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
}

/// A clap error as one line: its first paragraph (the message and, for a
/// missing argument, its name), plus its tip when it has one. Help and
/// version requests are not errors; clap prints those itself.
pub fn clap_error_line(error: &clap::Error) -> String {
    let rendered = error.render().to_string();
    let message: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .take_while(|line| !line.is_empty())
        .collect();
    let message = message.join(" ");
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    let tip = rendered
        .lines()
        .find_map(|line| line.trim().strip_prefix("tip: "));
    match tip {
        Some(tip) => format!("{message} ({tip}); see --help"),
        None => format!("{message}; see --help"),
    }
}

/// Writes `text` to stdout; a reader that stopped early (`| head`) is not
/// an error of ours.
pub fn print_stdout(text: &str) -> Result<(), CliError> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(error) => Err(CliError::io("write to stdout", &error)),
    }
}

/// A JSON document as one line of output.
pub fn json_line(value: &Value) -> String {
    format!("{value}\n")
}

/// Left-aligned columns two spaces apart, without trailing spaces.
pub fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (index, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if index + 1 < N {
                let pad = widths[index] - cell.chars().count() + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A Kafka error code by the name Kafka's tools print (`NON_EMPTY_GROUP`),
/// made from the crate's variant name (`NonEmptyGroup`).
pub fn error_name(error: ResponseError) -> String {
    if let ResponseError::Unknown(code) = error {
        return format!("UNKNOWN_ERROR_CODE_{code}");
    }
    let mut name = String::new();
    for (index, c) in error.to_string().chars().enumerate() {
        if c.is_ascii_uppercase() && index > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

/// "1 record", "2 records".
pub fn plural(count: u64, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

/// `--config KEY=VALUE` (and the like): the pair, or why not.
pub fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_string(), value.trim().to_string()))
        }
        _ => Err(format!("expected KEY=VALUE, got `{text}`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Wrapper {
        #[command(flatten)]
        connection: ConnectionArgs,
    }

    #[test]
    fn connection_defaults_to_the_local_broker() {
        let parsed = Wrapper::try_parse_from(["t"]).unwrap();
        assert_eq!(parsed.connection.bootstrap_server, None);
        assert_eq!(parsed.connection.request_timeout_ms, 10_000);
        let nothing_set = |_: &str| None;
        let bootstrap = resolve_bootstrap(None, nothing_set);
        assert_eq!(bootstrap.servers, "127.0.0.1:9092");
        assert_eq!(split_bootstrap(&bootstrap).unwrap(), vec!["127.0.0.1:9092"]);
    }

    #[test]
    fn the_flag_wins_over_sluice_then_kafka_variables() {
        let both = |name: &str| match name {
            "SLUICE_BOOTSTRAP_SERVERS" => Some("s:1".to_string()),
            "KAFKA_BOOTSTRAP_SERVERS" => Some("k:2".to_string()),
            _ => None,
        };
        let kafka_only = |name: &str| (name == "KAFKA_BOOTSTRAP_SERVERS").then(|| "k:2".into());
        let blank_sluice = |name: &str| match name {
            "SLUICE_BOOTSTRAP_SERVERS" => Some("  ".to_string()),
            _ => kafka_only(name),
        };
        assert_eq!(resolve_bootstrap(Some("f:3"), both).servers, "f:3");
        assert_eq!(resolve_bootstrap(None, both).servers, "s:1");
        assert_eq!(resolve_bootstrap(None, kafka_only).servers, "k:2");
        assert_eq!(resolve_bootstrap(None, blank_sluice).servers, "k:2");
        let parsed = Wrapper::try_parse_from(["t", "-b", "f:3"]).unwrap();
        assert_eq!(parsed.connection.bootstrap_server.as_deref(), Some("f:3"));
        // A bad list is blamed on where it came from.
        let bad = resolve_bootstrap(None, |name| {
            (name == "KAFKA_BOOTSTRAP_SERVERS").then(|| "nohost".into())
        });
        let error = split_bootstrap(&bad).unwrap_err();
        assert_eq!(
            error,
            CliError::Usage(
                "KAFKA_BOOTSTRAP_SERVERS wants HOST:PORT[,HOST:PORT...], got `nohost`".into()
            )
        );
    }

    #[test]
    fn bootstrap_lists_split_on_commas_and_refuse_bad_entries() {
        let flag = |text: &str| resolve_bootstrap(Some(text), |_| None);
        assert_eq!(
            split_bootstrap(&flag("a:1, [::1]:9092")).unwrap(),
            vec!["a:1", "[::1]:9092"]
        );
        for bad in ["localhost", "a:1,", "a:0", "a:99999", ":9092"] {
            let error = split_bootstrap(&flag(bad)).unwrap_err();
            assert!(matches!(error, CliError::Usage(_)), "{bad}: {error}");
        }
        assert!(Wrapper::try_parse_from(["t", "--request-timeout-ms", "0"]).is_err());
    }

    #[test]
    fn clap_errors_become_one_line_with_the_tip() {
        let error = Wrapper::try_parse_from(["t", "--bootstrap-servers", "x:1"]).unwrap_err();
        let line = clap_error_line(&error);
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.starts_with("unexpected argument '--bootstrap-servers'"),
            "{line}"
        );
        assert!(line.contains("'--bootstrap-server'"), "{line}");
        let error = Wrapper::try_parse_from(["t", "--request-timeout-ms"]).unwrap_err();
        let line = clap_error_line(&error);
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains("--request-timeout-ms <MS>"), "{line}");
    }

    #[test]
    fn counts_agree_with_their_noun() {
        assert_eq!(plural(0, "record"), "0 records");
        assert_eq!(plural(1, "record"), "1 record");
        assert_eq!(plural(2, "record"), "2 records");
    }

    #[test]
    fn error_codes_are_named_as_kafka_names_them() {
        assert_eq!(error_name(ResponseError::NonEmptyGroup), "NON_EMPTY_GROUP");
        assert_eq!(
            error_name(ResponseError::GroupIdNotFound),
            "GROUP_ID_NOT_FOUND"
        );
        assert_eq!(
            error_name(ResponseError::UnknownTopicOrPartition),
            "UNKNOWN_TOPIC_OR_PARTITION"
        );
        assert_eq!(
            error_name(ResponseError::UnknownServerError),
            "UNKNOWN_SERVER_ERROR"
        );
        assert_eq!(
            error_name(ResponseError::Unknown(999)),
            "UNKNOWN_ERROR_CODE_999"
        );
    }

    #[test]
    fn tables_align_columns_without_trailing_spaces() {
        let rows = [
            ["A".to_string(), "LONG-HEADER".to_string(), "C".to_string()],
            ["wide cell".to_string(), "x".to_string(), String::new()],
        ];
        assert_eq!(table(&rows), "A          LONG-HEADER  C\nwide cell  x\n");
    }

    #[test]
    fn messages_lose_their_line_breaks() {
        assert_eq!(one_line("a\nb\r\n  c\n"), "a b c");
    }

    #[test]
    fn key_value_pairs_split_on_the_first_equals_sign() {
        assert_eq!(
            parse_key_value("retention.ms=1000").unwrap(),
            ("retention.ms".into(), "1000".into())
        );
        assert_eq!(
            parse_key_value("a=b=c").unwrap(),
            ("a".into(), "b=c".into())
        );
        assert!(parse_key_value("novalue").is_err());
        assert!(parse_key_value("=v").is_err());
    }

    #[test]
    fn client_errors_name_unknown_topics_and_unreachable_brokers() {
        let unknown = sluice_client::Error::Broker {
            error: ResponseError::UnknownTopicOrPartition,
            context: "metadata for topic x".into(),
            message: None,
        };
        assert_eq!(
            CliError::from_client("describe topic x", &unknown).to_string(),
            "describe topic x: the topic does not exist (UNKNOWN_TOPIC_OR_PARTITION)"
        );
        let unreachable = sluice_client::Error::NoBrokerReachable {
            last: "cannot connect to h:1: refused".into(),
        };
        assert_eq!(
            CliError::from_client("list topics", &unreachable).to_string(),
            "list topics: no broker reachable (cannot connect to h:1: refused)"
        );
        let invalid = sluice_client::Error::Broker {
            error: ResponseError::InvalidPartitions,
            context: "add partitions to t".into(),
            message: Some("3 would not be an increase".into()),
        };
        assert_eq!(
            CliError::from_client("add partitions to t", &invalid).to_string(),
            "add partitions to t: broker answered InvalidPartitions (3 would not be an increase)"
        );
    }
}
