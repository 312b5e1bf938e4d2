//! Kafka's own configuration habits: the `server.properties` format (Java
//! properties: `key=value`, `key: value` or `key value`, `#` and `!`
//! comments, `\` continuations and escapes), the older names Kafka still
//! reads (`broker.id`, `log.dir`, `log.retention.hours`, ...), and the
//! Kafka broker keys Sluice has no use for, which are ignored with one
//! line each rather than refused like a misspelt key.

/// A file's lines as Java's `Properties.load` reads them: each key with
/// its value and the 1-based line it starts on. A later key wins over an
/// earlier one, as in Java.
pub fn parse_properties(text: &str) -> Result<Vec<(String, String, usize)>, String> {
    let mut pairs = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((index, first)) = lines.next() {
        let start_line = index + 1;
        let trimmed = first.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with('!') {
            continue;
        }
        // A line ending in an odd number of backslashes goes on.
        let mut logical = String::from(trimmed);
        while ends_continued(&logical) {
            logical.pop();
            match lines.next() {
                Some((_, next)) => logical.push_str(next.trim_start()),
                None => break,
            }
        }
        let (key, value) = split_pair(&logical);
        let key = unescape(key).map_err(|why| format!("line {start_line}: {why}"))?;
        let value = unescape(value).map_err(|why| format!("line {start_line}: {why}"))?;
        pairs.push((key, value, start_line));
    }
    Ok(pairs)
}

fn ends_continued(line: &str) -> bool {
    line.bytes().rev().take_while(|&b| b == b'\\').count() % 2 == 1
}

/// Splits a logical line at the first unescaped `=`, `:` or whitespace.
fn split_pair(line: &str) -> (&str, &str) {
    let bytes = line.as_bytes();
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'\\' => at += 2,
            b'=' | b':' | b' ' | b'\t' | b'\x0c' => break,
            _ => at += 1,
        }
    }
    let at = at.min(bytes.len());
    let key = &line[..at];
    let mut rest = line[at..].trim_start_matches([' ', '\t', '\x0c']);
    if let Some(after) = rest.strip_prefix(['=', ':']) {
        rest = after.trim_start_matches([' ', '\t', '\x0c']);
    }
    (key, rest)
}

fn unescape(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('f') => out.push('\x0c'),
            Some('u') => {
                let hex: String = chars.by_ref().take(4).collect();
                let code = u32::from_str_radix(&hex, 16)
                    .ok()
                    .filter(|_| hex.len() == 4)
                    .and_then(char::from_u32)
                    .ok_or_else(|| format!("`\\u{hex}` is not a \\uXXXX escape"))?;
                out.push(code);
            }
            Some(other) => out.push(other),
            None => {}
        }
    }
    Ok(out)
}

/// Whether a file without a telling extension reads as properties: every
/// line that is not blank or a comment starts with a key-shaped word
/// followed by `=`, `:` or a space.
pub fn looks_like_properties(text: &str) -> bool {
    let mut any = false;
    for line in text.lines().map(str::trim_start) {
        if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
            continue;
        }
        if line.starts_with('[') || line.starts_with('"') {
            return false;
        }
        let key_end = line
            .find(|c: char| !(c.is_ascii_alphanumeric() || "._-".contains(c)))
            .unwrap_or(line.len());
        if key_end == 0 {
            return false;
        }
        any = true;
    }
    any
}

/// Older Kafka names and the key Sluice reads them as: (old name, key,
/// how many of the key's unit one of the old name's unit holds). Kafka
/// reads them only when the newer key is not set.
const RENAMED: &[(&str, &str, i64)] = &[
    ("broker.id", "node.id", 1),
    ("log.dir", "log.dirs", 1),
    ("log.retention.minutes", "log.retention.ms", 60_000),
    ("log.retention.hours", "log.retention.ms", 3_600_000),
    ("log.roll.hours", "log.roll.ms", 3_600_000),
];

/// Kafka broker keys that Sluice does not use: accepted and ignored, with
/// a line saying so. (Sluice's own keys are in `sluice_core::config`.)
const IGNORED: &[&str] = &[
    "advertised.host.name",
    "advertised.port",
    "alter.config.policy.class.name",
    "authorizer.class.name",
    "auto.include.jmx.reporter",
    "auto.leader.rebalance.enable",
    "background.threads",
    "broker.id.generation.enable",
    "broker.rack",
    "client.quota.callback.class",
    "compression.gzip.level",
    "compression.lz4.level",
    "compression.zstd.level",
    "config.providers",
    "connection.failed.authentication.delay.ms",
    "connections.max.reauth.ms",
    "controlled.shutdown.enable",
    "controlled.shutdown.max.retries",
    "controlled.shutdown.retry.backoff.ms",
    "controller.quorum.append.linger.ms",
    "controller.quorum.bootstrap.servers",
    "controller.quorum.election.backoff.max.ms",
    "controller.quorum.request.timeout.ms",
    "controller.quorum.retry.backoff.ms",
    "controller.socket.timeout.ms",
    "create.topic.policy.class.name",
    "delete.records.purgatory.purge.interval.requests",
    "delete.topic.enable",
    "early.start.listeners",
    "fetch.max.bytes",
    "fetch.purgatory.purge.interval.requests",
    "group.max.session.timeout.ms",
    "group.max.size",
    "group.min.session.timeout.ms",
    "initial.broker.registration.timeout.ms",
    "inter.broker.listener.name",
    "inter.broker.protocol.version",
    "kafka.metrics.polling.interval.secs",
    "kafka.metrics.reporters",
    "leader.imbalance.check.interval.seconds",
    "leader.imbalance.per.broker.percentage",
    "listener.security.protocol.map",
    "log.flush.interval.messages",
    "log.flush.interval.ms",
    "log.flush.offset.checkpoint.interval.ms",
    "log.flush.scheduler.interval.ms",
    "log.flush.start.offset.checkpoint.interval.ms",
    "log.index.size.max.bytes",
    "log.local.retention.bytes",
    "log.local.retention.ms",
    "log.message.downconversion.enable",
    "log.message.format.version",
    "log.message.timestamp.difference.max.ms",
    "log.preallocate",
    "log.roll.jitter.hours",
    "log.roll.jitter.ms",
    "log.segment.delete.delay.ms",
    "max.connection.creation.rate",
    "max.connections.per.ip.overrides",
    "max.incremental.fetch.session.cache.slots",
    "metadata.log.dir",
    "metadata.log.max.record.bytes.between.snapshots",
    "metadata.log.max.snapshot.interval.ms",
    "metadata.log.segment.bytes",
    "metadata.log.segment.ms",
    "metadata.max.idle.interval.ms",
    "metadata.max.retention.bytes",
    "metadata.max.retention.ms",
    "metric.reporters",
    "metrics.num.samples",
    "metrics.recording.level",
    "metrics.sample.window.ms",
    "num.io.threads",
    "num.network.threads",
    "num.recovery.threads.per.data.dir",
    "num.replica.alter.log.dirs.threads",
    "num.replica.fetchers",
    "offset.metadata.max.bytes",
    "offsets.commit.required.acks",
    "offsets.commit.timeout.ms",
    "offsets.load.buffer.size",
    "offsets.topic.compression.codec",
    "offsets.topic.replication.factor",
    "offsets.topic.segment.bytes",
    "principal.builder.class",
    "producer.id.expiration.check.interval.ms",
    "producer.id.expiration.ms",
    "producer.purgatory.purge.interval.requests",
    "quota.window.num",
    "quota.window.size.seconds",
    "replica.fetch.min.bytes",
    "replica.fetch.response.max.bytes",
    "replica.selector.class",
    "replica.socket.receive.buffer.bytes",
    "replica.socket.timeout.ms",
    "request.timeout.ms",
    "reserved.broker.max.id",
    "security.inter.broker.protocol",
    "socket.connection.setup.timeout.max.ms",
    "socket.connection.setup.timeout.ms",
    "socket.listen.backlog.size",
    "socket.receive.buffer.bytes",
    "socket.send.buffer.bytes",
    "super.users",
    "transaction.state.log.load.buffer.size",
    "transaction.state.log.min.isr",
    "transaction.state.log.replication.factor",
    "transaction.state.log.segment.bytes",
    "zookeeper.connect",
];

/// Families of Kafka keys ignored as a whole (security, ZooKeeper, the log
/// cleaner, tiered storage, per-listener settings, ...).
const IGNORED_PREFIXES: &[&str] = &[
    "confluent.",
    "delegation.token.",
    "group.consumer.",
    "group.coordinator.",
    "group.share.",
    "listener.name.",
    "log.cleaner.",
    "password.encoder.",
    "remote.log.",
    "sasl.",
    "share.",
    "ssl.",
    "zookeeper.",
];

/// Whether `key` is a Kafka broker key that Sluice ignores.
pub fn is_ignored(key: &str) -> bool {
    IGNORED.binary_search(&key).is_ok() || IGNORED_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// Kafka's older name `key` read as a Sluice key: the key, and the value
/// converted to its unit; None if `key` is no such name or its value is
/// no number where one is needed.
pub fn renamed(key: &str, value: &str) -> Option<(&'static str, String)> {
    let &(_, target, factor) = RENAMED.iter().find(|(old, _, _)| *old == key)?;
    if factor == 1 {
        return Some((target, value.to_string()));
    }
    let number: i64 = value.trim().parse().ok()?;
    let converted = if number < 0 {
        -1
    } else {
        number.saturating_mul(factor)
    };
    Some((target, converted.to_string()))
}

/// The order older names give way in when several name one key: the
/// earlier in `RENAMED` wins over the later (minutes over hours, as Kafka
/// reads them).
pub fn rename_rank(key: &str) -> usize {
    RENAMED
        .iter()
        .position(|(old, _, _)| *old == key)
        .unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_parse_as_java_reads_them() {
        let text = "# comment\n! also a comment\n\nlog.dirs=/data/a\nnum.partitions : 3\n\
                    listeners PLAINTEXT://h:9092\n  advertised.listeners = \\\n    PLAINTEXT://x:1\n\
                    key\\=with\\:escapes=a\\tb\\u0041\nempty=\n";
        let pairs = parse_properties(text).expect("parses");
        let got: Vec<(&str, &str, usize)> = pairs
            .iter()
            .map(|(k, v, l)| (k.as_str(), v.as_str(), *l))
            .collect();
        assert_eq!(
            got,
            [
                ("log.dirs", "/data/a", 4),
                ("num.partitions", "3", 5),
                ("listeners", "PLAINTEXT://h:9092", 6),
                ("advertised.listeners", "PLAINTEXT://x:1", 7),
                ("key=with:escapes", "a\tbA", 9),
                ("empty", "", 10),
            ]
        );
        assert!(parse_properties("bad=\\u00zz\n").is_err());
    }

    #[test]
    fn properties_are_told_from_toml() {
        assert!(looks_like_properties(
            "# x\nlog.dirs=/data\nnum.partitions=1\n"
        ));
        assert!(!looks_like_properties("\"log.dirs\" = \"/data\"\n"));
        assert!(!looks_like_properties("[log]\ndirs = \"/data\"\n"));
        assert!(!looks_like_properties("# only a comment\n"));
    }

    #[test]
    fn the_ignored_list_is_sorted_and_holds_no_sluice_key() {
        assert!(
            IGNORED.windows(2).all(|w| w[0] < w[1]),
            "keep IGNORED sorted"
        );
        for key in sluice_core::config::BROKER_KEYS {
            assert!(!is_ignored(key.name), "{} is Sluice's own", key.name);
        }
        assert!(is_ignored("num.network.threads"));
        assert!(is_ignored("ssl.keystore.location"));
        assert!(!is_ignored("log.dir.typo"));
    }

    #[test]
    fn older_names_convert_to_their_keys_units() {
        assert_eq!(
            renamed("log.retention.hours", "168"),
            Some(("log.retention.ms", "604800000".to_string()))
        );
        assert_eq!(
            renamed("log.retention.minutes", "-1"),
            Some(("log.retention.ms", "-1".to_string()))
        );
        assert_eq!(
            renamed("broker.id", "7"),
            Some(("node.id", "7".to_string()))
        );
        assert_eq!(renamed("log.retention.hours", "a week"), None);
        assert_eq!(renamed("num.partitions", "3"), None);
        assert!(rename_rank("log.retention.minutes") < rename_rank("log.retention.hours"));
    }
}
