//! `sluice consume`: reads a topic with the client's `Consumer` and prints
//! each record with a `--format` string (see `format`) or as a JSON line.
//!
//! Without `--group` the command assigns itself every partition of the
//! topic (or the one `--partition` names) and starts at the end, at the
//! beginning with `--from-beginning`, at `--offset` on each assigned
//! partition (`earliest` or -2, `latest` or -1, as ListOffsets names them,
//! or an offset in the log), or at `--from-timestamp MS`: on each partition
//! the first record whose timestamp is at or after MS (ListOffsets by
//! timestamp), or the end where there is none. With `--group G` it subscribes as a member of consumer group
//! G instead: the group's leader shares the partitions among its members,
//! each partition starts at the group's committed offset (without one: at
//! the end, or the beginning with `--from-beginning`), and what was printed
//! is committed: every 5 s while reading (the consumer's auto-commit), then
//! once more on the way out, before a clean LeaveGroup. Records polled but
//! not printed (past `--max-messages`, or lost to a closed stdout) are not
//! committed: the partition is sought back to the first of them, so the
//! group's next reader gets them. `--partition`, `--offset` and
//! `--from-timestamp` make no sense in a group and are refused.
//!
//! Records of one partition come out in offset order; partitions interleave.
//!
//! When it stops:
//! - after `--max-messages` records (status 0);
//! - after `--timeout-ms` without a new record: status 0 when no
//!   `--max-messages` was given (the usual way to read what is there and
//!   exit), status 1 when fewer records than `--max-messages` came. With
//!   `--group` the clock starts once the group has given the consumer its
//!   partitions; that first join must happen within `--request-timeout-ms`;
//! - with neither flag it follows the topic until interrupted (Ctrl-C or
//!   SIGTERM, status 0), like `tail -f`;
//! - when stdout is closed by its reader (`| head`), status 0.
//!
//! `--isolation-level read_committed` shows only committed transactions
//! (reading stops at the last stable offset and aborted records are left
//! out); `read_uncommitted`, the default as in Kafka, shows every record.
//!
//! A count of the records read goes to stderr at the end unless `--quiet`.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use clap::Args;
use sluice_client::{
    Consumer, ConsumerConfig, ConsumerRecord, IsolationLevel, OffsetReset, OffsetSpec,
    TokioConnector, TopicPartition,
};
use tokio::time::Instant;

use super::format::{record_json, RecordFormat, FORMAT_DEFAULT, NULL_TEXT};
use super::{plural, CliError, ConnectionArgs};

/// How long one poll waits when no `--timeout-ms` bounds it; only the
/// granularity of the loop, not a limit.
pub const POLL_WAIT_MS: u64 = 1_000;

#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct ConsumeArgs {
    /// Topic to read.
    #[arg(long, short = 't')]
    pub topic: String,
    /// Read as a member of this consumer group: the group shares the
    /// partitions among its members, reading resumes at the group's
    /// committed offsets, and what is printed is committed.
    #[arg(long, value_name = "GROUP", value_parser = parse_group_id,
          conflicts_with_all = ["partition", "offset", "from_timestamp"])]
    pub group: Option<String>,
    /// Start at the first record still in the log instead of the end (with
    /// --group: only where the group has no committed offset).
    #[arg(long, conflicts_with_all = ["offset", "from_timestamp"])]
    pub from_beginning: bool,
    /// Read only this partition (default: all of them).
    #[arg(long, short = 'p', value_name = "P", value_parser = clap::value_parser!(i32).range(0..))]
    pub partition: Option<i32>,
    /// Where to start on each partition read: earliest (or -2), latest (or
    /// -1), or an offset (one outside the log is an error).
    #[arg(long, short = 'o', value_name = "OFFSET", value_parser = StartOffset::parse,
          allow_hyphen_values = true)]
    pub offset: Option<StartOffset>,
    /// Start on each partition at the first record whose timestamp is at or
    /// after MS (milliseconds since the epoch), or at its end if none is.
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(i64).range(0..),
          conflicts_with = "offset")]
    pub from_timestamp: Option<i64>,
    /// Stop after this many records.
    #[arg(long, short = 'c', visible_alias = "count", value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_messages: Option<u64>,
    /// Stop after this long without a new record (default: wait for ever;
    /// with --group, counted from the moment the group assigned partitions).
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_ms: Option<u64>,
    /// How to print a record: %k key, %s value, %K / %S their lengths,
    /// %o offset, %p partition, %t timestamp (ms), %h headers (k=v,...),
    /// %% a percent sign; escapes \n \t \r \\ \0.
    #[arg(long, short = 'f', value_name = "FMT", default_value = FORMAT_DEFAULT,
          value_parser = RecordFormat::parse, conflicts_with = "json")]
    pub format: RecordFormat,
    /// Print a null key or value as NULL instead of nothing (kcat's -Z).
    #[arg(short = 'Z', long = "null-as-text", conflicts_with = "json")]
    pub null_as_text: bool,
    /// Which transactional records to show: read_committed leaves out
    /// aborted ones and waits for open ones to end; read_uncommitted shows
    /// all of them.
    #[arg(long, value_name = "LEVEL", default_value = "read_uncommitted",
          value_parser = parse_isolation_level)]
    pub isolation_level: IsolationLevel,
    /// Print no count at the end.
    #[arg(long, short)]
    pub quiet: bool,
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Print each record as a JSON object on its own line.
    #[arg(long)]
    pub json: bool,
}

/// Where `--offset` starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartOffset {
    Earliest,
    Latest,
    At(i64),
}

impl StartOffset {
    /// `earliest`/`beginning`/-2, `latest`/`end`/-1 (ListOffsets' two
    /// sentinels), or an offset >= 0.
    pub fn parse(text: &str) -> Result<StartOffset, String> {
        match text {
            "earliest" | "beginning" | "-2" => Ok(StartOffset::Earliest),
            "latest" | "end" | "-1" => Ok(StartOffset::Latest),
            _ => text
                .parse::<i64>()
                .ok()
                .filter(|offset| *offset >= 0)
                .map(StartOffset::At)
                .ok_or_else(|| {
                    format!("expected earliest, latest, -2, -1 or an offset >= 0, got `{text}`")
                }),
        }
    }
}

/// `--isolation-level`: Kafka's two names.
pub fn parse_isolation_level(text: &str) -> Result<IsolationLevel, String> {
    text.parse::<IsolationLevel>()
        .map_err(|_| format!("expected read_committed or read_uncommitted, got `{text}`"))
}

/// A group id as `--group` (and `sluice groups`) take it: not empty, as
/// brokers refuse an empty one (INVALID_GROUP_ID).
pub fn parse_group_id(text: &str) -> Result<String, String> {
    if text.is_empty() {
        Err("a group id must not be empty".into())
    } else {
        Ok(text.to_string())
    }
}

/// Why the read loop ended.
#[derive(Debug, PartialEq, Eq)]
enum Stop {
    MaxMessages,
    Idle,
    Interrupted,
    StdoutClosed,
}

pub async fn run(args: ConsumeArgs) -> Result<(), CliError> {
    let connection = &args.connection;
    let client = connection.client(false)?;
    let topic = connection
        .bounded(
            &format!("look up topic {}", args.topic),
            client.topic(&args.topic),
        )
        .await?;
    let mut consumer = match &args.group {
        Some(group) => {
            let config = ConsumerConfig {
                auto_offset_reset: if args.from_beginning {
                    OffsetReset::Earliest
                } else {
                    OffsetReset::Latest
                },
                isolation_level: args.isolation_level,
                ..ConsumerConfig::with_group(group.clone())
            };
            let mut consumer = Consumer::new(client, config)
                .map_err(|error| CliError::Usage(error.to_string()))?;
            consumer
                .subscribe([args.topic.clone()])
                .map_err(|error| CliError::Usage(error.to_string()))?;
            consumer
        }
        None => assigned_consumer(&args, client, topic.partition_count()).await?,
    };
    let mut count = 0u64;
    let read = read_loop(&args, &mut consumer, &mut count).await;
    // A group member commits what it printed and leaves, whatever ended
    // the reading; a failure to read is the error to report.
    let closed = match &args.group {
        Some(group) => {
            let what = format!("commit the offsets of group {group} and leave it");
            // A second Ctrl-C (or SIGTERM) stops waiting for that.
            tokio::select! {
                closed = connection.bounded(&what, consumer.close()) => closed,
                _ = interrupted() => Err(CliError::Failed(format!(
                    "interrupted before the offsets of group {group} were committed"
                ))),
            }
        }
        None => Ok(()),
    };
    let stop = read?;
    closed?;
    if let (Stop::Idle, Some(wanted)) = (&stop, args.max_messages) {
        return Err(CliError::Failed(format!(
            "read {count} of {wanted} records from {}: none came for {} ms",
            args.topic,
            args.timeout_ms.unwrap_or_default()
        )));
    }
    if !args.quiet {
        let group = match &args.group {
            Some(group) => format!(" as group {group}"),
            None => String::new(),
        };
        eprintln!(
            "Consumed {} from {}{group}.",
            plural(count, "record"),
            args.topic
        );
    }
    Ok(())
}

/// The consumer of every partition (or `--partition`), positioned at
/// `--offset`, the beginning or the end.
async fn assigned_consumer(
    args: &ConsumeArgs,
    client: sluice_client::Client<TokioConnector>,
    partition_count: i32,
) -> Result<Consumer<TokioConnector>, CliError> {
    let connection = &args.connection;
    let partitions: Vec<TopicPartition> = match args.partition {
        Some(partition) if partition >= partition_count => {
            return Err(CliError::Failed(format!(
                "topic {} has {partition_count} partitions; partition {partition} does not exist",
                args.topic,
            )))
        }
        Some(partition) => vec![TopicPartition::new(args.topic.clone(), partition)],
        None => (0..partition_count)
            .map(|partition| TopicPartition::new(args.topic.clone(), partition))
            .collect(),
    };
    let config = ConsumerConfig {
        // An explicit offset outside the log is the user's mistake, said
        // as such; otherwise a log trimmed under us restarts at its start.
        auto_offset_reset: if matches!(args.offset, Some(StartOffset::At(_))) {
            OffsetReset::None
        } else {
            OffsetReset::Earliest
        },
        isolation_level: args.isolation_level,
        ..ConsumerConfig::default()
    };
    let mut consumer =
        Consumer::new(client, config).map_err(|error| CliError::Usage(error.to_string()))?;
    consumer.assign(partitions.clone());
    let start = match (args.offset, args.from_timestamp) {
        (Some(StartOffset::At(offset)), _) => {
            seek_checked(connection, &mut consumer, &partitions, offset).await?;
            return Ok(consumer);
        }
        (_, Some(timestamp_ms)) => {
            seek_to_timestamp(connection, &mut consumer, &partitions, timestamp_ms).await?;
            return Ok(consumer);
        }
        (Some(StartOffset::Earliest), None) => StartOffset::Earliest,
        (None, None) if args.from_beginning => StartOffset::Earliest,
        (Some(StartOffset::Latest) | None, None) => StartOffset::Latest,
    };
    if start == StartOffset::Earliest {
        let what = format!("find the start of {}", args.topic);
        connection
            .bounded(&what, consumer.seek_to_beginning(&partitions))
            .await?;
    } else {
        let what = format!("find the end of {}", args.topic);
        connection
            .bounded(&what, consumer.seek_to_end(&partitions))
            .await?;
    }
    Ok(consumer)
}

/// Seeks every partition to its first record at or after `timestamp_ms`
/// (one ListOffsets by timestamp), or to its end where no record is that
/// late, as Kafka's consumers do with `offsetsForTimes`.
async fn seek_to_timestamp(
    connection: &ConnectionArgs,
    consumer: &mut Consumer<TokioConnector>,
    partitions: &[TopicPartition],
    timestamp_ms: i64,
) -> Result<(), CliError> {
    let what = format!("look up the offsets at timestamp {timestamp_ms}");
    let found = connection
        .bounded(
            &what,
            consumer.list_offsets(partitions, OffsetSpec::Timestamp(timestamp_ms)),
        )
        .await?;
    let mut too_late = Vec::new();
    for tp in partitions {
        match found.get(tp) {
            Some(listed) if listed.offset >= 0 => consumer
                .seek(tp, listed.offset)
                .map_err(|error| CliError::from_client("seek", &error))?,
            Some(_) => too_late.push(tp.clone()),
            None => return Err(CliError::Failed(format!("{what}: no answer for {tp}"))),
        }
    }
    if !too_late.is_empty() {
        connection
            .bounded(&what, consumer.seek_to_end(&too_late))
            .await?;
    }
    Ok(())
}

/// Seeks every partition to `offset` after checking that the offset lies
/// in its log (end included: reading there waits for the next record), so
/// a wrong offset is reported with the range instead of a fetch error.
async fn seek_checked(
    connection: &ConnectionArgs,
    consumer: &mut Consumer<TokioConnector>,
    partitions: &[TopicPartition],
    offset: i64,
) -> Result<(), CliError> {
    let what = "look up the offsets of the log";
    let firsts = connection
        .bounded(
            what,
            consumer.list_offsets(partitions, OffsetSpec::Earliest),
        )
        .await?;
    let ends = connection
        .bounded(what, consumer.list_offsets(partitions, OffsetSpec::Latest))
        .await?;
    for tp in partitions {
        let (first, end) = match (firsts.get(tp), ends.get(tp)) {
            (Some(first), Some(end)) => (first.offset, end.offset),
            _ => return Err(CliError::Failed(format!("{what}: no answer for {tp}"))),
        };
        if offset > end {
            return Err(CliError::Failed(format!(
                "offset {offset} is past the end of {tp} (its next offset is {end})"
            )));
        }
        if offset < first {
            return Err(CliError::Failed(format!(
                "offset {offset} is before the start of {tp} (its first offset is {first})"
            )));
        }
        consumer
            .seek(tp, offset)
            .map_err(|error| CliError::from_client("seek", &error))?;
    }
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM (only Ctrl-C where SIGTERM cannot be
/// watched).
pub async fn interrupted() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// How long the next poll may wait, or why reading is over: the idle
/// clock ran out (`Ok(None)`), or a group member still without partitions
/// passed its join deadline.
fn next_wait(
    args: &ConsumeArgs,
    last_record_at: Option<Instant>,
    join_deadline: Instant,
) -> Result<Option<Duration>, CliError> {
    let now = Instant::now();
    let Some(last_record_at) = last_record_at else {
        // Still joining the group: not idle yet, but bounded.
        let left = join_deadline.saturating_duration_since(now);
        if left.is_zero() {
            return Err(CliError::Failed(format!(
                "join group {}: no partitions assigned within {} ms (--request-timeout-ms)",
                args.group.as_deref().unwrap_or_default(),
                args.connection.request_timeout_ms
            )));
        }
        return Ok(Some(left.min(Duration::from_millis(POLL_WAIT_MS))));
    };
    match args.timeout_ms {
        Some(timeout_ms) => {
            let idle_until = last_record_at + Duration::from_millis(timeout_ms);
            let left = idle_until.saturating_duration_since(now);
            Ok(Some(left).filter(|left| !left.is_zero()))
        }
        None => Ok(Some(Duration::from_millis(POLL_WAIT_MS))),
    }
}

async fn read_loop(
    args: &ConsumeArgs,
    consumer: &mut Consumer<TokioConnector>,
    count: &mut u64,
) -> Result<Stop, CliError> {
    let started = Instant::now();
    let join_deadline = started + Duration::from_millis(args.connection.request_timeout_ms);
    // A group member's idle clock starts when it has its partitions.
    let mut last_record_at = args.group.is_none().then_some(started);
    let mut out = Vec::new();
    let interrupted = interrupted();
    tokio::pin!(interrupted);
    loop {
        if args.max_messages.is_some_and(|max| *count >= max) {
            return Ok(Stop::MaxMessages);
        }
        let Some(wait) = next_wait(args, last_record_at, join_deadline)? else {
            return Ok(Stop::Idle);
        };
        let records = tokio::select! {
            polled = consumer.poll(wait) => polled
                .map_err(|error| CliError::from_client(&format!("read {}", args.topic), &error))?,
            _ = &mut interrupted => return Ok(Stop::Interrupted),
        };
        if last_record_at.is_none() && consumer.generation().is_some() {
            last_record_at = Some(Instant::now());
        }
        if records.is_empty() {
            continue;
        }
        last_record_at = Some(Instant::now());
        out.clear();
        let mut printed = 0;
        for record in &records {
            if args.max_messages.is_some_and(|max| *count >= max) {
                break;
            }
            if args.json {
                out.extend_from_slice(record_json(record).to_string().as_bytes());
                out.push(b'\n');
            } else {
                args.format.render(record, null_text(args), &mut out);
            }
            *count += 1;
            printed += 1;
        }
        // The write may block (a paused pager): it runs off the runtime's
        // thread, so a group member keeps heartbeating meanwhile.
        let (written, buffer) = tokio::task::spawn_blocking(move || {
            let mut stdout = std::io::stdout().lock();
            let written = stdout.write_all(&out).and_then(|()| stdout.flush());
            (written, out)
        })
        .await
        .map_err(|error| CliError::Failed(format!("write to stdout: {error}")))?;
        out = buffer;
        if let Err(error) = written {
            // Nothing of this batch is known to have been read: a group
            // commits none of it.
            *count -= printed as u64;
            rewind(consumer, &records)?;
            if error.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(Stop::StdoutClosed);
            }
            return Err(CliError::Failed(format!("write to stdout: {error}")));
        }
        rewind(consumer, &records[printed..])?;
    }
}

/// What a null key or value prints as.
fn null_text(args: &ConsumeArgs) -> &'static [u8] {
    if args.null_as_text {
        NULL_TEXT
    } else {
        b""
    }
}

/// Seeks each partition back to the first of `unprinted`, so that a group
/// commits only what was printed.
fn rewind(
    consumer: &mut Consumer<TokioConnector>,
    unprinted: &[ConsumerRecord],
) -> Result<(), CliError> {
    let mut firsts: BTreeMap<TopicPartition, i64> = BTreeMap::new();
    for record in unprinted {
        let tp = TopicPartition::new(record.topic.clone(), record.partition);
        firsts.entry(tp).or_insert(record.offset);
    }
    for (tp, offset) in firsts {
        consumer.seek(&tp, offset).map_err(|error| {
            CliError::from_client("seek back to the first record not printed", &error)
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Wrapper {
        #[command(flatten)]
        args: ConsumeArgs,
    }

    fn parse(args: &[&str]) -> Result<ConsumeArgs, clap::Error> {
        Wrapper::try_parse_from(std::iter::once("consume").chain(args.iter().copied()))
            .map(|w| w.args)
    }

    #[test]
    fn defaults_read_values_from_the_end_for_ever() {
        let args = parse(&["--topic", "t"]).unwrap();
        assert!(!args.from_beginning);
        assert_eq!(args.partition, None);
        assert_eq!(args.offset, None);
        assert_eq!(args.max_messages, None);
        assert_eq!(args.timeout_ms, None);
        assert_eq!(args.format, RecordFormat::parse("%s\\n").unwrap());
        assert!(!args.json);
        assert_eq!(args.group, None);
        assert_eq!(args.isolation_level, IsolationLevel::ReadUncommitted);
    }

    #[test]
    fn isolation_levels_take_kafkas_names() {
        let args = parse(&["--topic", "t", "--isolation-level", "read_committed"]).unwrap();
        assert_eq!(args.isolation_level, IsolationLevel::ReadCommitted);
        let args = parse(&["--topic", "t", "--isolation-level", "read_uncommitted"]).unwrap();
        assert_eq!(args.isolation_level, IsolationLevel::ReadUncommitted);
        for bad in ["", "committed", "READ_COMMITTED", "1"] {
            let error = parse(&["--topic", "t", "--isolation-level", bad]).unwrap_err();
            assert_eq!(error.exit_code(), 2, "{bad:?} was accepted");
        }
    }

    #[test]
    fn a_group_takes_the_reading_flags_and_counts_by_c_or_count() {
        let args = parse(&[
            "--topic",
            "t",
            "--group",
            "billing",
            "-c",
            "7",
            "--from-beginning",
            "--timeout-ms",
            "500",
            "--json",
        ])
        .unwrap();
        assert_eq!(args.group.as_deref(), Some("billing"));
        assert_eq!(args.max_messages, Some(7));
        assert!(args.from_beginning);
        assert_eq!(args.timeout_ms, Some(500));
        let args = parse(&["--topic", "t", "--group", "g", "--count", "3"]).unwrap();
        assert_eq!(args.max_messages, Some(3));
    }

    #[test]
    fn a_group_refuses_explicit_partitions_and_offsets() {
        for bad in [
            &["--topic", "t", "--group", "g", "--partition", "0"][..],
            &["--topic", "t", "--group", "g", "--offset", "5"],
            &["--topic", "t", "--group", "g", "--from-timestamp", "5"],
            &["--topic", "t", "--partition", "1", "--group", "g"],
            &["--topic", "t", "--group", ""],
            &["--topic", "t", "--group"],
        ] {
            let error = parse(bad).unwrap_err();
            assert_eq!(
                error.exit_code(),
                2,
                "{bad:?}: clap errors exit with status 2"
            );
            let line = super::super::clap_error_line(&error);
            assert!(!line.contains('\n'), "{line}");
        }
        let error = parse(&["--topic", "t", "--group", "g", "--offset", "5"]).unwrap_err();
        let line = super::super::clap_error_line(&error);
        assert!(
            line.contains("'--group <GROUP>' cannot be used with '--offset <OFFSET>'"),
            "{line}"
        );
    }

    #[test]
    fn every_flag_parses() {
        let args = parse(&[
            "--topic",
            "t",
            "--partition",
            "3",
            "--offset",
            "17",
            "--max-messages",
            "10",
            "--timeout-ms",
            "2500",
            "--format",
            "%p %o %k:%s\\n",
            "--bootstrap-server",
            "h:9",
            "-q",
        ])
        .unwrap();
        assert_eq!(args.partition, Some(3));
        assert_eq!(args.offset, Some(StartOffset::At(17)));
        assert_eq!(args.max_messages, Some(10));
        assert_eq!(args.timeout_ms, Some(2500));
        assert_eq!(args.format, RecordFormat::parse("%p %o %k:%s\\n").unwrap());
        assert!(args.quiet);
        assert!(
            parse(&["--topic", "t", "--from-beginning", "--json"])
                .unwrap()
                .from_beginning
        );
        let short = parse(&[
            "-t", "t", "-p", "1", "-o", "-2", "-c", "4", "-f", "%s", "-Z", "-b", "h:1",
        ])
        .unwrap();
        assert_eq!(short.topic, "t");
        assert_eq!(short.partition, Some(1));
        assert_eq!(short.offset, Some(StartOffset::Earliest));
        assert_eq!(short.max_messages, Some(4));
        assert_eq!(short.format, RecordFormat::parse("%s").unwrap());
        assert!(short.null_as_text);
        assert_eq!(short.connection.bootstrap_server.as_deref(), Some("h:1"));
        let stamped = parse(&["-t", "t", "--from-timestamp", "1700000000000"]).unwrap();
        assert_eq!(stamped.from_timestamp, Some(1_700_000_000_000));
    }

    #[test]
    fn start_offsets_take_names_sentinels_and_numbers() {
        for (text, start) in [
            ("earliest", StartOffset::Earliest),
            ("beginning", StartOffset::Earliest),
            ("-2", StartOffset::Earliest),
            ("latest", StartOffset::Latest),
            ("end", StartOffset::Latest),
            ("-1", StartOffset::Latest),
            ("0", StartOffset::At(0)),
            ("42", StartOffset::At(42)),
        ] {
            assert_eq!(StartOffset::parse(text), Ok(start), "{text}");
        }
        for bad in ["", "-3", "first", "1.5", "s@100"] {
            assert!(StartOffset::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn conflicting_or_bad_flags_are_refused() {
        for bad in [
            &[][..],
            &["--topic", "t", "--from-beginning", "--offset", "3"],
            &["--topic", "t", "--json", "--format", "%s"],
            &["--topic", "t", "--format", "%q"],
            &["--topic", "t", "--max-messages", "0"],
            &["--topic", "t", "--timeout-ms", "0"],
            &["--topic", "t", "--offset", "-5"],
            &["--topic", "t", "--partition", "-1"],
            &["--topic", "t", "--offset", "3", "--from-timestamp", "5"],
            &["--topic", "t", "--from-beginning", "--from-timestamp", "5"],
            &["--topic", "t", "--from-timestamp", "-1"],
            &["--topic", "t", "-Z", "--json"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
