//! The broker's configuration file: TOML under Kafka's key names, or
//! Kafka's own `server.properties` format (`kafka`): a `.properties` name,
//! or text that is not TOML and reads as `key=value` lines.
//!
//! Either way, Kafka's older names (`broker.id`, `log.dir`,
//! `log.retention.hours`, ...) are read as the keys they stand for, and
//! Kafka broker keys Sluice has no use for are ignored with one line each;
//! any other unknown key is refused.
//!
//! A key may be written as one quoted name (`"log.dirs" = "/data"`) or with
//! TOML's own dotted keys and tables (`log.dirs = "/data"`, or `dirs` under
//! `[log]`); nested tables are flattened back into dotted names. Strings,
//! integers and booleans become their string forms, and an array of strings
//! becomes Kafka's comma-separated list. `--override key=value` pairs from the
//! command line go on top of the file, and the result is checked against the
//! key table of `sluice_core::config`. Every error is one line that says
//! where the bad key came from, as in
//! ``sluice.toml:3: unknown configuration key `log.dir` ``.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context};
use sluice_core::config::{BrokerConfig, ConfigError, BROKER_KEYS, MUTATION_KEY};
use toml::de::{DeTable, DeValue};

pub mod kafka;

/// The formats a config file may be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Toml,
    /// Kafka's `server.properties`.
    Properties,
}

/// A configuration read, with what reading it noticed: the Kafka keys it
/// ignored and the older names it read as newer keys, one line each.
#[derive(Debug)]
pub struct Loaded {
    pub config: BrokerConfig,
    pub format: Option<Format>,
    pub notes: Vec<String>,
}

/// Where a configuration value came from, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// A line of the config file.
    Line(usize),
    /// A `--override` on the command line.
    Override,
}

/// Values by key name, each with where it came from.
type Values = BTreeMap<String, (String, Origin)>;

/// The text of a config file with its name, for locating errors.
struct Source<'a> {
    name: String,
    text: &'a str,
}

impl Source<'_> {
    /// The 1-based line holding byte `offset`.
    fn line(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    /// The 1-based column of byte `offset`, in characters.
    fn column(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        let start = self.text.as_bytes()[..end]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |n| n + 1);
        self.text
            .get(start..end)
            .map_or(1, |s| s.chars().count() + 1)
    }
}

/// Reads the broker configuration: the file at `path` (if any), then the
/// command-line `overrides` on top, checked against the known keys. Without a
/// path the result is the built-in defaults plus the overrides.
pub fn load(path: Option<&Path>, overrides: &[(String, String)]) -> anyhow::Result<BrokerConfig> {
    let loaded = load_noting(path, overrides)?;
    for note in &loaded.notes {
        tracing::warn!("{note}");
    }
    Ok(loaded.config)
}

/// `load`, returning what it noticed instead of logging it.
pub fn load_noting(path: Option<&Path>, overrides: &[(String, String)]) -> anyhow::Result<Loaded> {
    let mut values: BTreeMap<String, (String, Origin)> = BTreeMap::new();
    let mut file_name = String::new();
    let mut format = None;
    if let Some(path) = path {
        file_name = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {file_name}"))?;
        let source = Source {
            name: file_name.clone(),
            text: &text,
        };
        let (read_as, read) = read_file(path, &source)?;
        format = Some(read_as);
        values = read;
    }
    for (key, value) in overrides {
        let key = key.trim();
        if key.is_empty() {
            bail!("--override {key}={value}: the key is empty");
        }
        values.insert(key.to_string(), (value.clone(), Origin::Override));
    }
    let notes = kafka_names(&mut values, &file_name)?;

    let pairs: BTreeMap<String, String> = values
        .iter()
        .map(|(k, (v, _))| (k.clone(), v.clone()))
        .collect();
    let place = |key: &str| match values.get(key) {
        Some((_, Origin::Line(line))) => format!("{file_name}:{line}"),
        Some((_, Origin::Override)) => "--override".to_string(),
        None if file_name.is_empty() => "default configuration".to_string(),
        None => file_name.clone(),
    };
    let config = BrokerConfig::from_pairs(&pairs).map_err(|err| {
        let key = match &err {
            ConfigError::UnknownKey(key) => key,
            ConfigError::BadValue { key, .. } => key,
        };
        anyhow!("{}: {err}", place(key))
    })?;

    parse_listener(&config.listeners)
        .map_err(|err| anyhow!("{}: `listeners`: {err}", place("listeners")))?;
    let advertised = config.get("advertised.listeners");
    if !advertised.is_empty() {
        let place = place("advertised.listeners");
        let (host, _) = parse_listener(&advertised)
            .map_err(|err| anyhow!("{place}: `advertised.listeners`: {err}"))?;
        if matches!(host.as_str(), "0.0.0.0" | "::") {
            bail!("{place}: `advertised.listeners` must name an address clients can reach, not `{host}`");
        }
    }
    if !config.metrics_listener.is_empty() {
        parse_metrics_listener(&config.metrics_listener)
            .map_err(|err| anyhow!("{}: `metrics.listener`: {err}", place("metrics.listener")))?;
    }
    Ok(Loaded {
        config,
        format,
        notes,
    })
}

/// Reads a config file as TOML or as Kafka's properties: by its extension,
/// else TOML unless the text is not TOML and reads as properties.
fn read_file(path: &Path, source: &Source<'_>) -> anyhow::Result<(Format, Values)> {
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let format = match extension {
        "properties" => Format::Properties,
        "toml" => Format::Toml,
        _ => match read_toml(source) {
            Ok(values) => return Ok((Format::Toml, values)),
            Err(_) if kafka::looks_like_properties(source.text) => Format::Properties,
            Err(error) => return Err(error),
        },
    };
    let values = match format {
        Format::Toml => read_toml(source)?,
        Format::Properties => kafka::parse_properties(source.text)
            .map_err(|why| anyhow!("{}: {why}", source.name))?
            .into_iter()
            .map(|(key, value, line)| (key, (value, Origin::Line(line))))
            .collect(),
    };
    Ok((format, values))
}

/// Reads Kafka's older names as the keys they stand for and drops the
/// Kafka keys Sluice ignores; returns one line for each.
fn kafka_names(
    values: &mut BTreeMap<String, (String, Origin)>,
    file_name: &str,
) -> anyhow::Result<Vec<String>> {
    let known = |key: &str| key == MUTATION_KEY || BROKER_KEYS.iter().any(|k| k.name == key);
    let where_ = |origin: Origin| match origin {
        Origin::Line(line) => format!("{file_name}:{line}"),
        Origin::Override => "--override".to_string(),
    };
    let mut notes = Vec::new();
    let mut unknown: Vec<String> = values.keys().filter(|k| !known(k)).cloned().collect();
    unknown.sort_by_key(|key| kafka::rename_rank(key));
    for key in unknown {
        let Some((value, origin)) = values.get(&key).cloned() else {
            continue;
        };
        let place = where_(origin);
        if kafka::rename_rank(&key) != usize::MAX {
            values.remove(&key);
            let Some((target, converted)) = kafka::renamed(&key, &value) else {
                bail!("{place}: `{key}`: `{value}` is not a whole number");
            };
            if let Some((_, first)) = values.get(target) {
                notes.push(format!(
                    "{place}: `{key}` ignored: `{target}` is set ({})",
                    where_(*first)
                ));
            } else {
                notes.push(format!(
                    "{place}: Kafka's `{key}={value}` read as `{target}={converted}`"
                ));
                values.insert(target.to_string(), (converted, origin));
            }
        } else if kafka::is_ignored(&key) {
            values.remove(&key);
            notes.push(format!(
                "{place}: `{key}` is a Kafka setting Sluice does not use; ignored"
            ));
        }
    }
    Ok(notes)
}

/// Parses `metrics.listener`: `host:port`, or `http://host:port`.
pub fn parse_metrics_listener(value: &str) -> anyhow::Result<(String, u16)> {
    let value = value.trim();
    let address = match value.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
        Some((scheme, _)) => {
            bail!("bad listener `{value}`: unsupported scheme `{scheme}`, only http is served")
        }
        None => value,
    };
    parse_listener(address.trim_end_matches('/'))
}

/// Splits one `--override` argument, `key=value`, at its first `=`.
pub fn parse_override(argument: &str) -> anyhow::Result<(String, String)> {
    match argument.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_string(), value.to_string()))
        }
        _ => bail!("bad override `{argument}`: expected key=value"),
    }
}

/// Parses the file into dotted key names, each with its value and line.
fn read_toml(source: &Source<'_>) -> anyhow::Result<BTreeMap<String, (String, Origin)>> {
    let document = DeTable::parse(source.text).map_err(|err| {
        let message = err.message().trim().replace('\n', "; ");
        match err.span() {
            Some(span) => anyhow!(
                "{}:{}:{}: invalid TOML: {message}",
                source.name,
                source.line(span.start),
                source.column(span.start)
            ),
            None => anyhow!("{}: invalid TOML: {message}", source.name),
        }
    })?;
    let mut values = BTreeMap::new();
    flatten(source, "", document.get_ref(), &mut values)?;
    Ok(values)
}

fn flatten(
    source: &Source<'_>,
    prefix: &str,
    table: &DeTable<'_>,
    values: &mut BTreeMap<String, (String, Origin)>,
) -> anyhow::Result<()> {
    for (key, value) in table.iter() {
        let name = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{}", key.get_ref())
        };
        let line = source.line(key.span().start);
        let at = |what: &str| anyhow!("{}:{line}: `{name}`: {what}", source.name);
        let text = match value.get_ref() {
            DeValue::Table(inner) => {
                flatten(source, &name, inner, values)?;
                continue;
            }
            DeValue::String(s) => s.to_string(),
            DeValue::Boolean(b) => b.to_string(),
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
                .map_err(|_| at("integer out of the 64-bit range"))?
                .to_string(),
            DeValue::Float(_) => {
                return Err(at("decimal numbers are not accepted; write a whole number"))
            }
            DeValue::Datetime(_) => {
                return Err(at(
                    "dates and times are not accepted; write a number or a string",
                ))
            }
            DeValue::Array(items) => {
                let mut parts = Vec::with_capacity(items.len());
                for item in items.iter() {
                    match item.get_ref() {
                        DeValue::String(s) => parts.push(s.to_string()),
                        _ => return Err(at("an array may hold only strings")),
                    }
                }
                parts.join(",")
            }
        };
        if let Some(&(_, Origin::Line(other))) = values.get(&name) {
            // Tables are walked in key order, not file order: blame the later line.
            let (first, second) = (other.min(line), other.max(line));
            bail!(
                "{}:{second}: `{name}`: set twice (first on line {first})",
                source.name
            );
        }
        values.insert(name, (text, Origin::Line(line)));
    }
    Ok(())
}

/// Parses a listener, `PLAINTEXT://host:port` or `host:port`, into the host
/// to bind (without IPv6 brackets; `0.0.0.0` when empty) and the port.
/// Only one listener, of the PLAINTEXT kind, is supported.
pub fn parse_listener(value: &str) -> anyhow::Result<(String, u16)> {
    let value = value.trim();
    let bad = |why: &str| anyhow!("bad listener `{value}`: {why}");
    if value.is_empty() {
        return Err(bad("it is empty"));
    }
    if value.contains(',') {
        return Err(bad("only one listener is supported"));
    }
    let address = match value.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("PLAINTEXT") => rest,
        Some((scheme, _)) => {
            return Err(bad(&format!(
                "unsupported scheme `{scheme}`, only PLAINTEXT is supported"
            )))
        }
        None => value,
    };
    let (host, port) = if let Some(rest) = address.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| bad("missing `]` after the IPv6 address"))?;
        if host.is_empty() || host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad(&format!("`{host}` is not an IPv6 address")));
        }
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| bad("expected `:port` after the IPv6 address"))?;
        (host, port)
    } else {
        let (host, port) = address
            .rsplit_once(':')
            .ok_or_else(|| bad("expected host:port"))?;
        if host.contains(':') {
            return Err(bad("write an IPv6 address in brackets, as in [::1]:9092"));
        }
        if host
            .chars()
            .any(|c| c.is_whitespace() || "/[]@?#".contains(c))
        {
            return Err(bad(&format!("`{host}` is not a host name")));
        }
        (host, port)
    };
    let port = port
        .parse::<u16>()
        .map_err(|_| bad(&format!("`{port}` is not a port number (0 to 65535)")))?;
    let host = if host.is_empty() { "0.0.0.0" } else { host };
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::config::BROKER_KEYS;
    use std::io::Write;

    /// The example configuration shipped in config/.
    fn example() -> (std::path::PathBuf, String) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/sluice.example.toml");
        let text = std::fs::read_to_string(&path).expect("read config/sluice.example.toml");
        (path, text)
    }

    /// A file with `name` (its extension matters) holding `text`.
    fn named_file(name: &str, text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        (dir, path)
    }

    /// Kafka's KRaft server.properties, as Kafka ships it but for the one
    /// listener Sluice serves the quorum and clients on.
    const KAFKA_PROPERTIES: &str = "\
# The role of this server.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@localhost:9092
listeners=PLAINTEXT://127.0.0.1:9092
inter.broker.listener.name=PLAINTEXT
advertised.listeners=PLAINTEXT://localhost:9092
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
num.network.threads=3
num.io.threads=8
socket.send.buffer.bytes=102400
socket.receive.buffer.bytes=102400
socket.request.max.bytes=104857600
log.dirs=/tmp/kraft-combined-logs
num.partitions=1
num.recovery.threads.per.data.dir=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
log.retention.hours=168
log.segment.bytes=1073741824
log.retention.check.interval.ms=300000
";

    #[test]
    fn kafkas_server_properties_is_read_with_a_line_per_ignored_key() {
        for name in ["server.properties", "server.conf"] {
            let (_dir, path) = named_file(name, KAFKA_PROPERTIES);
            let loaded = load_noting(Some(&path), &[]).expect("Kafka's file loads");
            assert_eq!(loaded.format, Some(Format::Properties), "{name}");
            let config = &loaded.config;
            assert_eq!(config.log_dirs, "/tmp/kraft-combined-logs");
            assert_eq!(config.get("log.retention.ms"), "604800000");
            assert_eq!(config.quorum_voters.len(), 1);
            assert_eq!(
                config.get("advertised.listeners"),
                "PLAINTEXT://localhost:9092"
            );
            let ignored: Vec<&String> = loaded
                .notes
                .iter()
                .filter(|n| n.ends_with("Sluice does not use; ignored"))
                .collect();
            assert_eq!(ignored.len(), 10, "{:#?}", loaded.notes);
            let display = path.display().to_string();
            assert!(
                loaded
                    .notes
                    .contains(&format!("{display}:10: `num.network.threads` is a Kafka setting Sluice does not use; ignored")),
                "{:#?}",
                loaded.notes
            );
            assert!(loaded.notes.contains(&format!(
                "{display}:21: Kafka's `log.retention.hours=168` read as `log.retention.ms=604800000`"
            )));
        }
    }

    #[test]
    fn a_misspelt_key_in_properties_is_still_refused_by_line() {
        let (_dir, path) = named_file("broker.properties", "num.partitions=2\nlog.dir.s=/x\n");
        let error = load(Some(&path), &[]).expect_err("refused").to_string();
        assert!(
            error.contains("broker.properties:2") && error.contains("log.dir.s"),
            "{error}"
        );
        let (_dir, path) = named_file("bad.properties", "log.retention.hours=a week\n");
        let error = load(Some(&path), &[]).expect_err("refused").to_string();
        assert!(
            error.contains("bad.properties:1") && error.contains("whole number"),
            "{error}"
        );
    }

    #[test]
    fn newer_keys_win_over_kafkas_older_names() {
        let (_dir, path) = named_file(
            "s.properties",
            "log.retention.hours=1\nlog.retention.minutes=2\nbroker.id=4\nlog.dir=/d\n",
        );
        let loaded = load_noting(Some(&path), &[]).expect("loads");
        // Kafka reads minutes before hours.
        assert_eq!(loaded.config.get("log.retention.ms"), "120000");
        assert_eq!(loaded.config.node_id, 4);
        assert_eq!(loaded.config.log_dirs, "/d");
        let overridden = load_noting(
            Some(&path),
            &[("log.retention.ms".to_string(), "5".to_string())],
        )
        .expect("loads");
        assert_eq!(overridden.config.get("log.retention.ms"), "5");
        assert!(
            overridden.notes.iter().any(|n| n
                .contains("`log.retention.hours` ignored: `log.retention.ms` is set (--override)")),
            "{:#?}",
            overridden.notes
        );
    }

    #[test]
    fn toml_files_take_kafkas_habits_too() {
        let (_dir, path) = named_file(
            "sluice.toml",
            "\"num.io.threads\" = 8\n\"log.retention.hours\" = 1\n",
        );
        let loaded = load_noting(Some(&path), &[]).expect("loads");
        assert_eq!(loaded.format, Some(Format::Toml));
        assert_eq!(loaded.config.get("log.retention.ms"), "3600000");
        assert_eq!(loaded.notes.len(), 2, "{:#?}", loaded.notes);
    }

    #[test]
    fn the_example_config_lists_every_key_and_is_the_defaults() {
        let (path, text) = example();
        for key in BROKER_KEYS {
            let line = format!("# \"{}\" = ", key.name);
            assert_eq!(
                text.lines().filter(|l| l.starts_with(&line)).count(),
                1,
                "the example lists `{}` once, commented out",
                key.name
            );
        }
        // Every key line is one the broker knows.
        for line in text.lines().filter(|l| l.starts_with("# \"")) {
            let name = line.split('"').nth(1).unwrap_or_default();
            assert!(
                BROKER_KEYS.iter().any(|k| k.name == name),
                "the example names an unknown key: {line}"
            );
        }
        let config = load(Some(&path), &[]).expect("the example parses");
        assert_eq!(config, BrokerConfig::defaults());
    }

    #[test]
    fn the_example_config_shows_each_default_as_a_valid_value() {
        let (_, text) = example();
        // Every key set, to the value shown.
        let uncommented: String = text
            .lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(rest) if rest.starts_with('"') => format!("{rest}\n"),
                _ => format!("{line}\n"),
            })
            .collect();
        let example = file(&uncommented);
        let config = load(Some(example.path()), &[]).expect("the example, uncommented, parses");
        assert_eq!(config.values.explicit.len(), BROKER_KEYS.len());
        for key in BROKER_KEYS {
            assert_eq!(
                config.get(key.name),
                key.default,
                "the example shows `{}` at another value than its default",
                key.name
            );
        }
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::Builder::new()
            .suffix(".toml")
            .tempfile()
            .expect("temp file");
        file.write_all(text.as_bytes()).expect("write");
        file
    }

    fn load_text(text: &str, overrides: &[(&str, &str)]) -> anyhow::Result<BrokerConfig> {
        let file = file(text);
        let overrides: Vec<(String, String)> = overrides
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        load(Some(file.path()), &overrides)
    }

    fn error_text(text: &str, overrides: &[(&str, &str)]) -> String {
        let file = file(text);
        let overrides: Vec<(String, String)> = overrides
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let err = load(Some(file.path()), &overrides).expect_err("should fail");
        // Replace the random temp path so messages can be compared.
        err.to_string()
            .replace(&file.path().display().to_string(), "sluice.toml")
    }

    #[test]
    fn quoted_dotted_keys() {
        let config = load_text(
            "\"log.dirs\" = \"/data\"\n\"num.partitions\" = 3\n\"auto.create.topics.enable\" = false\n",
            &[],
        )
        .expect("valid");
        assert_eq!(config.log_dirs, "/data");
        assert_eq!(config.num_partitions, 3);
        assert!(!config.auto_create_topics);
    }

    #[test]
    fn toml_dotted_keys_and_tables() {
        let config = load_text(
            "node.id = 7\n[log]\ndirs = \"/data\"\nsegment.bytes = 4096\nretention.ms = 1_000\n\
             [log.retention.check]\ninterval.ms = 10\n",
            &[],
        )
        .expect("valid");
        assert_eq!(config.node_id, 7);
        assert_eq!(config.log_dirs, "/data");
        assert_eq!(config.get("log.segment.bytes"), "4096");
        assert_eq!(config.get("log.retention.ms"), "1000");
        assert_eq!(config.retention_check_interval_ms, 10);
    }

    #[test]
    fn inline_tables_and_hex_integers() {
        let config = load_text(
            "log = { dirs = \"/d\", \"index.interval.bytes\" = 0x100 }\n",
            &[],
        )
        .expect("valid");
        assert_eq!(config.log_dirs, "/d");
        assert_eq!(config.get("log.index.interval.bytes"), "256");
    }

    #[test]
    fn arrays_of_strings_become_lists() {
        let config = load_text("listeners = [\"PLAINTEXT://:9092\"]\n", &[]).expect("valid");
        assert_eq!(config.listeners, "PLAINTEXT://:9092");
        let err = error_text(
            "listeners = [\"PLAINTEXT://a:1\", \"PLAINTEXT://b:2\"]\n",
            &[],
        );
        assert!(err.contains("only one listener"), "{err}");
        let err = error_text("listeners = [1, 2]\n", &[]);
        assert_eq!(
            err,
            "sluice.toml:1: `listeners`: an array may hold only strings"
        );
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let err = error_text("node.id = 1\n\n[log]\ndirz = \"/data\"\n", &[]);
        assert_eq!(err, "sluice.toml:4: unknown configuration key `log.dirz`");
    }

    #[test]
    fn bad_value_names_file_line_and_key() {
        let err = error_text("\"num.partitions\" = \"many\"\n", &[]);
        assert_eq!(
            err,
            "sluice.toml:1: bad value `many` for `num.partitions`: not a whole number"
        );
        let err = error_text("num.partitions = 0\n", &[]);
        assert_eq!(
            err,
            "sluice.toml:1: bad value `0` for `num.partitions`: must be at least 1"
        );
    }

    #[test]
    fn floats_dates_and_nested_arrays_are_refused() {
        let err = error_text("log.roll.ms = 1.5\n", &[]);
        assert_eq!(
            err,
            "sluice.toml:1: `log.roll.ms`: decimal numbers are not accepted; write a whole number"
        );
        let err = error_text("\n\"log.dirs\" = 1979-05-27\n", &[]);
        assert_eq!(err, "sluice.toml:2: `log.dirs`: dates and times are not accepted; write a number or a string");
        let err = error_text("listeners = [[\"a\"]]\n", &[]);
        assert_eq!(
            err,
            "sluice.toml:1: `listeners`: an array may hold only strings"
        );
        let err = error_text("[[log]]\ndirs = \"x\"\n", &[]);
        assert_eq!(err, "sluice.toml:1: `log`: an array may hold only strings");
    }

    #[test]
    fn a_key_in_both_styles_is_refused() {
        let err = error_text("\"log.dirs\" = \"a\"\n[log]\ndirs = \"b\"\n", &[]);
        assert_eq!(
            err,
            "sluice.toml:3: `log.dirs`: set twice (first on line 1)"
        );
    }

    #[test]
    fn syntax_errors_name_file_and_line() {
        let err = error_text("node.id = 1\nlog.dirs = \n", &[]);
        assert!(err.starts_with("sluice.toml:2:"), "{err}");
        assert!(err.contains("invalid TOML"), "{err}");
        assert!(!err.contains('\n'), "{err}");
        let err = error_text("a = 1\na = 2\n", &[]);
        assert!(err.starts_with("sluice.toml:2:"), "{err}");
    }

    #[test]
    fn missing_file_is_an_error() {
        let err = load(Some(Path::new("/nonexistent/sluice.toml")), &[]).expect_err("missing");
        assert!(
            err.to_string().contains("/nonexistent/sluice.toml"),
            "{err}"
        );
    }

    #[test]
    fn overrides_win_over_the_file() {
        let config = load_text(
            "log.dirs = \"/file\"\nnum.partitions = 2\n",
            &[("log.dirs", "/cli")],
        )
        .expect("valid");
        assert_eq!(config.log_dirs, "/cli");
        assert_eq!(config.num_partitions, 2);
        let err = error_text("log.dirs = \"/file\"\n", &[("log.dirz", "/cli")]);
        assert_eq!(err, "--override: unknown configuration key `log.dirz`");
    }

    #[test]
    fn no_file_means_defaults_plus_overrides() {
        let config = load(None, &[]).expect("defaults");
        assert_eq!(config, BrokerConfig::defaults());
        let config = load(None, &[("node.id".into(), "4".into())]).expect("valid");
        assert_eq!(config.node_id, 4);
        let err = load(None, &[("node.id".into(), "-4".into())]).expect_err("bad");
        assert_eq!(
            err.to_string(),
            "--override: bad value `-4` for `node.id`: must be at least 0"
        );
    }

    #[test]
    fn override_arguments_split_at_the_first_equals() {
        assert_eq!(
            parse_override("a.b=c=d").expect("valid"),
            ("a.b".into(), "c=d".into())
        );
        assert_eq!(
            parse_override("a.b=").expect("valid"),
            ("a.b".into(), String::new())
        );
        assert!(parse_override("a.b").is_err());
        assert!(parse_override("=x").is_err());
    }

    #[test]
    fn advertised_listeners_must_be_reachable() {
        let err = error_text("advertised.listeners = \"PLAINTEXT://0.0.0.0:9092\"\n", &[]);
        assert!(
            err.starts_with("sluice.toml:1: `advertised.listeners` must name"),
            "{err}"
        );
        let config =
            load_text("advertised.listeners = \"PLAINTEXT://broker1:9092\"\n", &[]).expect("valid");
        assert_eq!(config.advertised_listeners, "PLAINTEXT://broker1:9092");
    }

    #[test]
    fn listeners_parse() {
        let ok = |s: &str| parse_listener(s).expect(s);
        assert_eq!(ok("PLAINTEXT://127.0.0.1:9092"), ("127.0.0.1".into(), 9092));
        assert_eq!(
            ok("plaintext://broker.example:19092"),
            ("broker.example".into(), 19092)
        );
        assert_eq!(ok("localhost:9092"), ("localhost".into(), 9092));
        assert_eq!(ok("PLAINTEXT://:9092"), ("0.0.0.0".into(), 9092));
        assert_eq!(ok(":0"), ("0.0.0.0".into(), 0));
        assert_eq!(ok("PLAINTEXT://[::1]:9092"), ("::1".into(), 9092));
        assert_eq!(ok("[::]:9093"), ("::".into(), 9093));
    }

    #[test]
    fn bad_listeners_are_explained() {
        let err = |s: &str| parse_listener(s).expect_err(s).to_string();
        assert!(err("SSL://host:9093").contains("unsupported scheme `SSL`"));
        assert!(err("PLAINTEXT://a:1,PLAINTEXT://b:2").contains("only one listener"));
        assert!(err("PLAINTEXT://host").contains("expected host:port"));
        assert!(err("PLAINTEXT://host:99999").contains("not a port number"));
        assert!(err("PLAINTEXT://host:").contains("not a port number"));
        assert!(err("::1:9092").contains("in brackets"));
        assert!(err("[::1:9092").contains("missing `]`"));
        assert!(err("[::1]9092").contains("expected `:port`"));
        assert!(err("[nope]:9092").contains("not an IPv6 address"));
        assert!(err("PLAINTEXT://host:9092/x").contains("not a port number"));
        assert!(err("").contains("empty"));
    }
}
