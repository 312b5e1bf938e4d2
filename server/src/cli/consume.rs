//! `sluice consume`: reads a topic with the client's `Consumer` and prints
//! each record with a `--format` string (see `format`) or as a JSON line.
//!
//! Consumer groups do not exist yet, so the command assigns itself every
//! partition of the topic (or the one `--partition` names) and starts at
//! the end, at the beginning with `--from-beginning`, or at `--offset` on
//! each assigned partition. Records of one partition come out in offset
//! order; partitions interleave.
//!
//! When it stops:
//! - after `--max-messages` records (status 0);
//! - after `--timeout-ms` without a new record: status 0 when no
//!   `--max-messages` was given (the usual way to read what is there and
//!   exit), status 1 when fewer records than `--max-messages` came;
//! - with neither flag it follows the topic until interrupted (Ctrl-C,
//!   status 0), like `tail -f`;
//! - when stdout is closed by its reader (`| head`), status 0.
//!
//! A count of the records read goes to stderr at the end unless `--quiet`.

use std::io::Write;
use std::time::Duration;

use clap::Args;
use sluice_client::{Consumer, ConsumerConfig, OffsetReset, OffsetSpec, TopicPartition};
use tokio::time::Instant;

use super::format::{record_json, RecordFormat, FORMAT_DEFAULT};
use super::{plural, CliError, ConnectionArgs};

/// How long one poll waits when no `--timeout-ms` bounds it; only the
/// granularity of the loop, not a limit.
pub const POLL_WAIT_MS: u64 = 1_000;

#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct ConsumeArgs {
    /// Topic to read.
    #[arg(long)]
    pub topic: String,
    /// Start at the first record still in the log instead of the end.
    #[arg(long, conflicts_with = "offset")]
    pub from_beginning: bool,
    /// Read only this partition (default: all of them).
    #[arg(long, value_name = "P", value_parser = clap::value_parser!(i32).range(0..))]
    pub partition: Option<i32>,
    /// Start at this offset on each partition read (an offset outside the
    /// log is an error).
    #[arg(long, value_name = "O", value_parser = clap::value_parser!(i64).range(0..))]
    pub offset: Option<i64>,
    /// Stop after this many records.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_messages: Option<u64>,
    /// Stop after this long without a new record (default: wait for ever).
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_ms: Option<u64>,
    /// How to print a record: %k key, %s value, %K / %S their lengths,
    /// %o offset, %p partition, %t timestamp (ms), %h headers (k=v,...),
    /// %% a percent sign; escapes \n \t \r \\ \0.
    #[arg(long, value_name = "FMT", default_value = FORMAT_DEFAULT,
          value_parser = RecordFormat::parse, conflicts_with = "json")]
    pub format: RecordFormat,
    /// Print no count at the end.
    #[arg(long, short)]
    pub quiet: bool,
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Print each record as a JSON object on its own line.
    #[arg(long)]
    pub json: bool,
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
    let partitions: Vec<TopicPartition> = match args.partition {
        Some(partition) if partition >= topic.partition_count() => {
            return Err(CliError::Failed(format!(
                "topic {} has {} partitions; partition {partition} does not exist",
                args.topic,
                topic.partition_count()
            )))
        }
        Some(partition) => vec![TopicPartition::new(args.topic.clone(), partition)],
        None => (0..topic.partition_count())
            .map(|partition| TopicPartition::new(args.topic.clone(), partition))
            .collect(),
    };
    let config = ConsumerConfig {
        // An explicit offset outside the log is the user's mistake, said
        // as such; otherwise a log trimmed under us restarts at its start.
        auto_offset_reset: if args.offset.is_some() {
            OffsetReset::None
        } else {
            OffsetReset::Earliest
        },
        ..ConsumerConfig::default()
    };
    let mut consumer =
        Consumer::new(client, config).map_err(|error| CliError::Usage(error.to_string()))?;
    consumer.assign(partitions.clone());
    if let Some(offset) = args.offset {
        seek_checked(connection, &mut consumer, &partitions, offset).await?;
    } else if args.from_beginning {
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
    let mut count = 0u64;
    let stop = read_loop(&args, &mut consumer, &mut count).await?;
    if let (Stop::Idle, Some(wanted)) = (&stop, args.max_messages) {
        return Err(CliError::Failed(format!(
            "read {count} of {wanted} records from {}: none came for {} ms",
            args.topic,
            args.timeout_ms.unwrap_or_default()
        )));
    }
    if !args.quiet {
        eprintln!("Consumed {} from {}.", plural(count, "record"), args.topic);
    }
    Ok(())
}

/// Seeks every partition to `offset` after checking that the offset lies
/// in its log (end included: reading there waits for the next record), so
/// a wrong offset is reported with the range instead of a fetch error.
async fn seek_checked(
    connection: &ConnectionArgs,
    consumer: &mut Consumer<sluice_client::TokioConnector>,
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

async fn read_loop(
    args: &ConsumeArgs,
    consumer: &mut Consumer<sluice_client::TokioConnector>,
    count: &mut u64,
) -> Result<Stop, CliError> {
    let mut last_record_at = Instant::now();
    let mut out = Vec::new();
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        if args.max_messages.is_some_and(|max| *count >= max) {
            return Ok(Stop::MaxMessages);
        }
        let wait = match args.timeout_ms {
            Some(timeout_ms) => {
                let idle_until = last_record_at + Duration::from_millis(timeout_ms);
                let left = idle_until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(Stop::Idle);
                }
                left
            }
            None => Duration::from_millis(POLL_WAIT_MS),
        };
        let records = tokio::select! {
            polled = consumer.poll(wait) => polled
                .map_err(|error| CliError::from_client(&format!("read {}", args.topic), &error))?,
            _ = &mut interrupted => return Ok(Stop::Interrupted),
        };
        if records.is_empty() {
            continue;
        }
        last_record_at = Instant::now();
        out.clear();
        for record in &records {
            if args.max_messages.is_some_and(|max| *count >= max) {
                break;
            }
            if args.json {
                out.extend_from_slice(record_json(record).to_string().as_bytes());
                out.push(b'\n');
            } else {
                args.format.render(record, &mut out);
            }
            *count += 1;
        }
        let mut stdout = std::io::stdout().lock();
        match stdout.write_all(&out).and_then(|()| stdout.flush()) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => {
                return Ok(Stop::StdoutClosed)
            }
            Err(error) => return Err(CliError::Failed(format!("write to stdout: {error}"))),
        }
    }
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
        assert_eq!(args.offset, Some(17));
        assert_eq!(args.max_messages, Some(10));
        assert_eq!(args.timeout_ms, Some(2500));
        assert_eq!(args.format, RecordFormat::parse("%p %o %k:%s\\n").unwrap());
        assert!(args.quiet);
        assert!(
            parse(&["--topic", "t", "--from-beginning", "--json"])
                .unwrap()
                .from_beginning
        );
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
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
