//! `sluice produce`: one record per input line, from stdin or a file, sent
//! with the client's `Producer`.
//!
//! A thread reads the input (so a blocking read never stalls the producer's
//! sender task) and hands lines over in chunks through a bounded channel;
//! a chunk leaves as soon as the reader has nothing more buffered, so lines
//! typed at a terminal go out at once. Lines split on `\n` only and keep
//! every other byte (a `\r` included), so a consumer printing `%s\n` gets
//! the input back byte for byte. With `--key-separator` (`-K`, as kcat)
//! the key is what comes before its first occurrence; a line without it is
//! an error, as in Kafka's console producer. `-k KEY` gives every record
//! the same key instead. `-H key=value` (repeatable) adds a header to every
//! record. With `-Z`, as kcat, an empty value is sent as null (with a key:
//! a tombstone, which compaction reads as a deletion) and an empty key as
//! no key.
//!
//! With `--transactional-id ID` every line of the run goes into one
//! transaction (the client's `TransactionalProducer`, acks=all, without
//! compression), committed once the input ends and aborted if the input
//! or a send fails, so read_committed readers see all of the run or none
//! of it. Records go to `--partition`, else to the key's partition
//! (murmur2, as elsewhere), else each chunk of lines to the next partition
//! in turn. Starting with an id fences an older producer of the same id and
//! aborts what it left open.
//!
//! The command waits for every record's delivery. On success it prints a
//! summary (records, bytes of keys and values, time, rate) to stderr, or
//! as JSON to stdout with `--json`; on any failure it prints one line
//! saying how many records were delivered and why the rest were not.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use serde_json::json;
use sluice_client::partitioner::key_partition;
use sluice_client::{
    system_clock, Acks, Compression, DeliveryFuture, Header, Producer, ProducerConfig,
    ProducerRecord, TokioConnector, TopicPartition, TransactionalConfig, TransactionalProducer,
};
use tokio::sync::mpsc;

use super::{plural, CliError, ConnectionArgs};

/// Longest input line; a longer one stops the command instead of growing
/// memory without bound. (A record must also fit the producer's request
/// size, 1 MiB, so this only guards the reader.)
pub const LINE_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Lines in one chunk from the reader thread.
pub const CHUNK_LINES_MAX: usize = 1024;

/// Chunks queued between the reader thread and the producer.
pub const CHUNKS_QUEUED_MAX: usize = 16;

/// Deliveries awaited at once; past it the oldest is awaited before the
/// next record is sent (the producer's buffer memory bounds bytes too).
pub const DELIVERIES_PENDING_MAX: usize = 100_000;

#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct ProduceArgs {
    /// Topic to write to (created on first use if the broker auto-creates topics).
    #[arg(long, short = 't')]
    pub topic: String,
    /// Read lines from this file instead of stdin.
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Split each line into key and value at the first occurrence of SEP.
    #[arg(long, short = 'K', value_name = "SEP", value_parser = non_empty,
          allow_hyphen_values = true)]
    pub key_separator: Option<String>,
    /// Give every record this key.
    #[arg(
        long,
        short = 'k',
        value_name = "KEY",
        conflicts_with = "key_separator"
    )]
    pub key: Option<String>,
    /// Add this header to every record (repeatable; `name=` gives an empty value).
    #[arg(long = "header", short = 'H', value_name = "NAME=VALUE", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// Send an empty value as null (a tombstone when the record has a key)
    /// and an empty key as no key, as kcat's -Z does.
    #[arg(long = "null-empty", short = 'Z')]
    pub null_empty: bool,
    /// Write every record to this partition instead of letting the key choose.
    #[arg(long, short = 'p', value_name = "P", value_parser = clap::value_parser!(i32).range(0..))]
    pub partition: Option<i32>,
    /// Replicas that must have a record before it counts: 0, 1 or all.
    #[arg(long, value_name = "0|1|all", default_value = "all", value_parser = parse_acks,
          allow_hyphen_values = true)]
    pub acks: Acks,
    /// Compression of record batches.
    #[arg(long, value_name = "CODEC", default_value = "none", value_parser = parse_compression)]
    pub compression: Compression,
    /// How long a batch waits for more records before it is sent.
    #[arg(long, value_name = "MS", default_value_t = 5)]
    pub linger_ms: u64,
    /// Write all lines of the run in one transaction with this id,
    /// committed at the end, aborted if the input or a send fails.
    #[arg(long, value_name = "ID", value_parser = non_empty)]
    pub transactional_id: Option<String>,
    /// Print no summary.
    #[arg(long, short)]
    pub quiet: bool,
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `-H name=value`: split at the first `=`, kept byte for byte otherwise.
pub fn parse_header(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err(format!("expected NAME=VALUE, got `{text}`")),
    }
}

fn non_empty(text: &str) -> Result<String, String> {
    if text.is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(text.to_string())
    }
}

pub fn parse_acks(text: &str) -> Result<Acks, String> {
    match text {
        "0" => Ok(Acks::None),
        "1" => Ok(Acks::Leader),
        "all" | "-1" => Ok(Acks::All),
        other => Err(format!("expected 0, 1 or all, got `{other}`")),
    }
}

pub fn parse_compression(text: &str) -> Result<Compression, String> {
    match text {
        "none" => Ok(Compression::None),
        "gzip" => Ok(Compression::Gzip),
        "snappy" => Ok(Compression::Snappy),
        "lz4" => Ok(Compression::Lz4),
        "zstd" => Ok(Compression::Zstd),
        other => Err(format!(
            "expected none, gzip, snappy, lz4 or zstd, got `{other}`"
        )),
    }
}

/// What the reader thread sends: full lines (without their `\n`), or the
/// reason it stopped early.
type Chunk = Result<Vec<Vec<u8>>, String>;

/// Reads lines on a thread of its own; the channel closes at the end.
fn spawn_reader(input: Box<dyn Read + Send>, source: String) -> mpsc::Receiver<Chunk> {
    let (sender, receiver) = mpsc::channel(CHUNKS_QUEUED_MAX);
    std::thread::spawn(move || {
        let mut reader = BufReader::with_capacity(256 * 1024, input);
        let mut chunk = Vec::new();
        let mut line_number = 0u64;
        loop {
            let mut line = Vec::new();
            let limit = (LINE_BYTES_MAX + 1) as u64;
            match reader.by_ref().take(limit).read_until(b'\n', &mut line) {
                Ok(0) => break,
                Ok(_) => {}
                Err(error) => {
                    let _ = sender.blocking_send(Err(format!("read {source}: {error}")));
                    return;
                }
            }
            line_number += 1;
            if line.last() == Some(&b'\n') {
                line.pop();
            }
            if line.len() > LINE_BYTES_MAX {
                let message =
                    format!("{source}: line {line_number} is longer than {LINE_BYTES_MAX} bytes");
                let _ = sender.blocking_send(Err(message));
                return;
            }
            chunk.push(line);
            // Nothing more buffered means the next read may block: hand
            // over what there is so interactive input is not held back.
            let hand_over = chunk.len() >= CHUNK_LINES_MAX || reader.buffer().is_empty();
            // The receiver is gone only when the command already stopped.
            if hand_over
                && sender
                    .blocking_send(Ok(std::mem::take(&mut chunk)))
                    .is_err()
            {
                return;
            }
        }
        if !chunk.is_empty() {
            let _ = sender.blocking_send(Ok(chunk));
        }
    });
    receiver
}

/// Splits a line into key and value; `None` when the separator is missing.
pub fn split_line(line: Vec<u8>, separator: Option<&[u8]>) -> Option<(Option<Bytes>, Bytes)> {
    let Some(separator) = separator else {
        return Some((None, Bytes::from(line)));
    };
    let at = line
        .windows(separator.len())
        .position(|window| window == separator)?;
    let line = Bytes::from(line);
    Some((Some(line.slice(..at)), line.slice(at + separator.len()..)))
}

/// The record a line becomes: its key (split off, or `-k`), value and
/// headers, with `-Z` turning empty keys and values into nulls.
pub fn line_record(args: &ProduceArgs, split_key: Option<Bytes>, value: Bytes) -> ProducerRecord {
    let key = match &args.key {
        Some(key) => Some(Bytes::from(key.clone().into_bytes())),
        None => split_key,
    };
    let (key, value) = if args.null_empty {
        (
            key.filter(|k| !k.is_empty()),
            Some(value).filter(|v| !v.is_empty()),
        )
    } else {
        (key, Some(value))
    };
    ProducerRecord {
        topic: args.topic.clone(),
        partition: args.partition,
        key,
        value,
        headers: args
            .headers
            .iter()
            .map(|(name, value)| Header::new(name.clone().into_bytes(), value.clone().into_bytes()))
            .collect(),
        timestamp_ms: None,
    }
}

/// Counts of one run.
#[derive(Debug, Default)]
struct Tally {
    sent: u64,
    delivered: u64,
    payload_bytes: u64,
    failed: u64,
    first_failure: Option<String>,
}

pub async fn run(args: ProduceArgs) -> Result<(), CliError> {
    let (input, source): (Box<dyn Read + Send>, String) = match &args.file {
        Some(path) => match File::open(path) {
            Ok(file) => (Box::new(file), path.display().to_string()),
            Err(error) => {
                return Err(CliError::Failed(format!(
                    "cannot read {}: {error}",
                    path.display()
                )))
            }
        },
        None => (Box::new(std::io::stdin()), "stdin".to_string()),
    };
    let connection = &args.connection;
    let client = connection.client(true)?;
    // Look the topic up before reading any input, so that a missing broker
    // or topic fails at once rather than after the first line.
    let topic = connection
        .bounded(
            &format!("look up topic {}", args.topic),
            client.topic(&args.topic),
        )
        .await?;
    if let Some(partition) = args.partition {
        if partition >= topic.partition_count() {
            return Err(CliError::Failed(format!(
                "topic {} has {} partitions; partition {partition} does not exist",
                args.topic,
                topic.partition_count()
            )));
        }
    }
    if let Some(transactional_id) = &args.transactional_id {
        if args.acks != Acks::All || args.compression != Compression::None {
            return Err(CliError::Usage(
                "--transactional-id writes with --acks all and no --compression".into(),
            ));
        }
        let started = Instant::now();
        let mut tally = Tally::default();
        let config = TransactionalConfig {
            max_block_ms: connection.request_timeout_ms,
            delivery_timeout_ms: connection.request_timeout_ms.saturating_mul(3),
            ..TransactionalConfig::new(transactional_id.clone())
        };
        let what = format!("start transactional producer {transactional_id}");
        let producer = connection
            .bounded_with(
                &what,
                TransactionalProducer::init(client, config, system_clock()),
                CliError::from_client,
            )
            .await?;
        let lines = spawn_reader(input, source);
        let partition_count = topic.partition_count();
        send_transaction(&args, producer, partition_count, lines, &mut tally).await?;
        return finish(&args, &tally, started.elapsed());
    }
    let config = ProducerConfig {
        acks: args.acks,
        compression: args.compression,
        linger_ms: args.linger_ms,
        max_block_ms: connection.request_timeout_ms,
        delivery_timeout_ms: connection.request_timeout_ms.saturating_mul(3),
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client, config.clone(), system_clock())
        .map_err(|error| CliError::Usage(error.to_string()))?;
    let started = Instant::now();
    let mut tally = Tally::default();
    let stopped = send_lines(
        &args,
        &producer,
        &config,
        spawn_reader(input, source),
        &mut tally,
    )
    .await;
    let elapsed = started.elapsed();
    // Every delivery has settled, so closing has nothing left to send; the
    // bound only keeps a wedged producer from holding the exit.
    let closing = Duration::from_millis(connection.request_timeout_ms);
    let _ = tokio::time::timeout(closing, producer.close()).await;
    if let Some(reason) = stopped {
        let failed = match tally.failed {
            0 => String::new(),
            failed => format!(", {} not", plural(failed, "record")),
        };
        return Err(CliError::Failed(format!(
            "{reason} ({} delivered before it{failed})",
            plural(tally.delivered, "record")
        )));
    }
    if tally.failed > 0 {
        return Err(CliError::Failed(format!(
            "{} of {} records were not delivered to {}, first because: {}",
            tally.failed,
            tally.sent,
            args.topic,
            tally.first_failure.unwrap_or_default()
        )));
    }
    finish(&args, &tally, elapsed)
}

/// Prints the summary of a successful run.
fn finish(args: &ProduceArgs, tally: &Tally, elapsed: Duration) -> Result<(), CliError> {
    if args.json {
        println!("{}", summary_json(args, tally, elapsed));
    } else if !args.quiet {
        eprintln!("{}", summary_text(args, tally, elapsed));
    }
    Ok(())
}

/// Sends every line in one transaction and commits it; on bad input or a
/// failed send, aborts it and says why.
async fn send_transaction(
    args: &ProduceArgs,
    mut producer: TransactionalProducer<TokioConnector>,
    partition_count: i32,
    lines: mpsc::Receiver<Chunk>,
    tally: &mut Tally,
) -> Result<(), CliError> {
    let transactional_id = producer.transactional_id().to_string();
    producer
        .begin()
        .map_err(|error| CliError::from_client("begin a transaction", &error))?;
    let sent = send_chunks(args, &mut producer, partition_count, lines, tally).await;
    let Err(reason) = sent else {
        let what = format!("commit transaction {transactional_id}");
        return args
            .connection
            .bounded(&what, producer.commit())
            .await
            .map_err(|error| {
                CliError::Failed(format!("{error} ({} sent)", plural(tally.sent, "record")))
            });
    };
    let what = format!("abort transaction {transactional_id}");
    args.connection.bounded(&what, producer.abort()).await?;
    Err(CliError::Failed(format!(
        "{reason} (transaction {transactional_id} aborted: none of its {} is committed)",
        plural(tally.sent, "record")
    )))
}

/// Sends the lines of each chunk, one batch per partition; the reason it
/// stopped early, if it did.
async fn send_chunks(
    args: &ProduceArgs,
    producer: &mut TransactionalProducer<TokioConnector>,
    partition_count: i32,
    mut lines: mpsc::Receiver<Chunk>,
    tally: &mut Tally,
) -> Result<(), String> {
    let separator = args.key_separator.as_deref().map(str::as_bytes);
    let mut chunk_number = 0i32;
    while let Some(chunk) = lines.recv().await {
        // Keyless records of one chunk share a partition, the next chunk
        // the next one, as a sticky partitioner would spread them.
        let sticky = chunk_number % partition_count;
        chunk_number = chunk_number.wrapping_add(1).max(0);
        let mut by_partition: BTreeMap<i32, Vec<ProducerRecord>> = BTreeMap::new();
        let mut stopped = None;
        for line in chunk? {
            let Some((key, value)) = split_line(line, separator) else {
                let parsed: usize = by_partition.values().map(Vec::len).sum();
                // The lines before it go out first, as without a
                // transaction; the abort then takes them back.
                stopped = Some(format!(
                    "line {} has no key separator {:?}",
                    tally.sent + parsed as u64 + 1,
                    args.key_separator.as_deref().unwrap_or_default()
                ));
                break;
            };
            let record = line_record(args, key, value);
            let partition = match (args.partition, &record.key) {
                (Some(partition), _) => partition,
                (None, Some(key)) => key_partition(key, partition_count),
                (None, None) => sticky,
            };
            by_partition.entry(partition).or_default().push(record);
        }
        for (partition, records) in by_partition {
            let tp = TopicPartition::new(args.topic.clone(), partition);
            producer
                .send(&tp, &records)
                .await
                .map_err(|error| format!("send to {tp}: {error}"))?;
            let count = records.len() as u64;
            tally.sent += count;
            tally.delivered += count;
            tally.payload_bytes += records
                .iter()
                .map(|record| {
                    (record.key.as_ref().map_or(0, Bytes::len)
                        + record.value.as_ref().map_or(0, Bytes::len)) as u64
                })
                .sum::<u64>();
        }
        if let Some(reason) = stopped {
            return Err(reason);
        }
    }
    Ok(())
}

/// Sends every line and waits for every delivery; returns why it stopped
/// early (bad input, a record the producer refused), if it did.
async fn send_lines(
    args: &ProduceArgs,
    producer: &Producer<sluice_client::TokioConnector>,
    config: &ProducerConfig,
    mut lines: mpsc::Receiver<Chunk>,
    tally: &mut Tally,
) -> Option<String> {
    let separator = args.key_separator.as_deref().map(str::as_bytes);
    // A delivery settles within the producer's delivery timeout; the extra
    // request timeout only guards against a producer that never answers.
    let settle_bound = Duration::from_millis(
        config
            .delivery_timeout_ms
            .saturating_add(args.connection.request_timeout_ms),
    );
    let mut pending: VecDeque<(DeliveryFuture, u64)> = VecDeque::new();
    let mut stopped = None;
    'input: while let Some(chunk) = lines.recv().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(reason) => {
                stopped = Some(reason);
                break;
            }
        };
        for line in chunk {
            let line_number = tally.sent + 1;
            let Some((key, value)) = split_line(line, separator) else {
                stopped = Some(format!(
                    "line {line_number} has no key separator {:?}",
                    args.key_separator.as_deref().unwrap_or_default()
                ));
                break 'input;
            };
            let record = line_record(args, key, value);
            let payload_bytes = (record.key.as_ref().map_or(0, Bytes::len)
                + record.value.as_ref().map_or(0, Bytes::len))
                as u64;
            match producer.send(record).await {
                Ok(delivery) => pending.push_back((delivery, payload_bytes)),
                Err(error) => {
                    stopped = Some(format!("line {line_number} was not sent: {error}"));
                    break 'input;
                }
            }
            tally.sent += 1;
            if pending.len() >= DELIVERIES_PENDING_MAX {
                let (delivery, bytes) = pending.pop_front().expect("the queue is full");
                settle(delivery, bytes, settle_bound, tally).await;
            }
        }
    }
    while let Some((delivery, bytes)) = pending.pop_front() {
        settle(delivery, bytes, settle_bound, tally).await;
    }
    stopped
}

async fn settle(delivery: DeliveryFuture, payload_bytes: u64, bound: Duration, tally: &mut Tally) {
    let outcome = match tokio::time::timeout(bound, delivery).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!("no outcome within {} ms", bound.as_millis())),
    };
    match outcome {
        Ok(()) => {
            tally.delivered += 1;
            tally.payload_bytes += payload_bytes;
        }
        Err(reason) => {
            tally.failed += 1;
            tally.first_failure.get_or_insert(reason);
        }
    }
}

fn rate(count: u64, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

fn summary_text(args: &ProduceArgs, tally: &Tally, elapsed: Duration) -> String {
    let unconfirmed = if args.acks == Acks::None {
        " (acks=0: sent, not confirmed)"
    } else {
        ""
    };
    format!(
        "Produced {} ({} bytes of keys and values) to {} in {:.3} s: {:.0} records/s, {:.2} MB/s{unconfirmed}",
        plural(tally.delivered, "record"),
        tally.payload_bytes,
        args.topic,
        elapsed.as_secs_f64(),
        rate(tally.delivered, elapsed),
        rate(tally.payload_bytes, elapsed) / 1e6,
    )
}

fn summary_json(args: &ProduceArgs, tally: &Tally, elapsed: Duration) -> serde_json::Value {
    json!({
        "topic": args.topic,
        "records": tally.delivered,
        "bytes": tally.payload_bytes,
        "elapsed_ms": elapsed.as_millis() as u64,
        "records_per_second": rate(tally.delivered, elapsed).round(),
        "confirmed": args.acks != Acks::None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Wrapper {
        #[command(flatten)]
        args: ProduceArgs,
    }

    fn parse(args: &[&str]) -> Result<ProduceArgs, clap::Error> {
        Wrapper::try_parse_from(std::iter::once("produce").chain(args.iter().copied()))
            .map(|w| w.args)
    }

    #[test]
    fn defaults_are_acks_all_without_compression() {
        let args = parse(&["--topic", "t"]).unwrap();
        assert_eq!(args.acks, Acks::All);
        assert_eq!(args.compression, Compression::None);
        assert_eq!(args.partition, None);
        assert_eq!(args.key_separator, None);
        assert_eq!(args.file, None);
        assert_eq!(args.linger_ms, 5);
        assert_eq!(
            (args.key, args.headers.len(), args.null_empty),
            (None, 0, false)
        );
    }

    #[test]
    fn kcat_short_flags_parse() {
        let args = parse(&[
            "-t", "t", "-p", "1", "-K", ":", "-H", "a=1", "-H", "b=", "-H", "c=x=y", "-Z", "-b",
            "h:1",
        ])
        .unwrap();
        assert_eq!(args.topic, "t");
        assert_eq!(args.partition, Some(1));
        assert_eq!(args.key_separator.as_deref(), Some(":"));
        assert_eq!(
            args.headers,
            vec![
                ("a".into(), "1".into()),
                ("b".into(), String::new()),
                ("c".into(), "x=y".into())
            ]
        );
        assert!(args.null_empty);
        assert_eq!(args.connection.bootstrap_server.as_deref(), Some("h:1"));
        assert_eq!(
            parse(&["-t", "t", "-k", "fixed"]).unwrap().key.as_deref(),
            Some("fixed")
        );
    }

    #[test]
    fn lines_become_records_with_nulls_only_under_z() {
        let plain = parse(&["-t", "t", "-K", ":", "-H", "h=v"]).unwrap();
        let record = line_record(&plain, Some(Bytes::from_static(b"k")), Bytes::new());
        assert_eq!(record.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(
            record.value.as_deref(),
            Some(&b""[..]),
            "empty, not null, without -Z"
        );
        assert_eq!(record.headers, vec![Header::new("h", "v")]);
        let nulls = parse(&["-t", "t", "-K", ":", "-Z"]).unwrap();
        let tombstone = line_record(&nulls, Some(Bytes::from_static(b"k")), Bytes::new());
        assert_eq!(
            (tombstone.key.as_deref(), tombstone.value),
            (Some(&b"k"[..]), None)
        );
        let keyless = line_record(&nulls, Some(Bytes::new()), Bytes::from_static(b"v"));
        assert_eq!(
            (keyless.key, keyless.value.as_deref()),
            (None, Some(&b"v"[..]))
        );
        let fixed = parse(&["-t", "t", "-k", "id-7", "-p", "2"]).unwrap();
        let record = line_record(&fixed, None, Bytes::from_static(b"v"));
        assert_eq!(record.key.as_deref(), Some(&b"id-7"[..]));
        assert_eq!(record.partition, Some(2));
    }

    #[test]
    fn every_flag_parses() {
        let args = parse(&[
            "--topic",
            "t",
            "--file",
            "in.txt",
            "--key-separator",
            "-:",
            "--partition",
            "2",
            "--acks",
            "1",
            "--compression",
            "zstd",
            "--json",
        ])
        .unwrap();
        assert_eq!(args.file, Some(PathBuf::from("in.txt")));
        assert_eq!(args.key_separator.as_deref(), Some("-:"));
        assert_eq!(args.partition, Some(2));
        assert_eq!(args.acks, Acks::Leader);
        assert_eq!(args.compression, Compression::Zstd);
        assert!(args.json);
        for (text, acks) in [("0", Acks::None), ("all", Acks::All), ("-1", Acks::All)] {
            assert_eq!(parse(&["--topic", "t", "--acks", text]).unwrap().acks, acks);
        }
        for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
            assert!(parse(&["--topic", "t", "--compression", codec]).is_ok());
        }
    }

    #[test]
    fn a_transactional_id_is_optional_and_not_empty() {
        assert_eq!(parse(&["--topic", "t"]).unwrap().transactional_id, None);
        let args = parse(&["--topic", "t", "--transactional-id", "import"]).unwrap();
        assert_eq!(args.transactional_id.as_deref(), Some("import"));
        assert!(parse(&["--topic", "t", "--transactional-id", ""]).is_err());
    }

    #[test]
    fn bad_flags_are_refused() {
        for bad in [
            &[][..],
            &["--topic", "t", "--acks", "2"],
            &["--topic", "t", "--compression", "brotli"],
            &["--topic", "t", "--partition", "-1"],
            &["--topic", "t", "--key-separator", ""],
            &["--topic", "t", "-k", "a", "-K", ":"],
            &["--topic", "t", "-H", "novalue"],
            &["--topic", "t", "-H", "=v"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn lines_split_at_the_first_separator() {
        let split = |line: &[u8], separator: Option<&[u8]>| split_line(line.to_vec(), separator);
        assert_eq!(
            split(b"k:v:w", Some(b":")),
            Some((Some(Bytes::from_static(b"k")), Bytes::from_static(b"v:w")))
        );
        assert_eq!(
            split(b":v", Some(b":")),
            Some((Some(Bytes::new()), Bytes::from_static(b"v")))
        );
        assert_eq!(
            split(b"key::value", Some(b"::")),
            Some((
                Some(Bytes::from_static(b"key")),
                Bytes::from_static(b"value")
            ))
        );
        assert_eq!(split(b"no separator", Some(b":")), None);
        assert_eq!(
            split(b"k:v\r", None),
            Some((None, Bytes::from_static(b"k:v\r")))
        );
    }

    #[tokio::test]
    async fn the_reader_splits_on_newlines_only_and_keeps_a_last_partial_line() {
        let input: &'static [u8] = b"a\r\n\nb\xff\nlast";
        let mut lines = spawn_reader(Box::new(input), "test".into());
        let mut all = Vec::new();
        while let Some(chunk) = lines.recv().await {
            all.extend(chunk.unwrap());
        }
        assert_eq!(
            all,
            vec![
                b"a\r".to_vec(),
                b"".to_vec(),
                b"b\xff".to_vec(),
                b"last".to_vec()
            ]
        );
    }

    #[tokio::test]
    async fn the_reader_refuses_an_overlong_line() {
        let mut input = vec![b'x'; LINE_BYTES_MAX + 1];
        input.push(b'\n');
        let mut lines = spawn_reader(Box::new(std::io::Cursor::new(input)), "big".into());
        let first = lines.recv().await.unwrap().unwrap_err();
        assert!(first.contains("line 1 is longer than"), "{first}");
    }

    #[test]
    fn the_summary_names_records_bytes_time_and_rate() {
        let args = parse(&["--topic", "t"]).unwrap();
        let tally = Tally {
            sent: 2000,
            delivered: 2000,
            payload_bytes: 1_000_000,
            ..Tally::default()
        };
        assert_eq!(
            summary_text(&args, &tally, Duration::from_millis(500)),
            "Produced 2000 records (1000000 bytes of keys and values) to t in 0.500 s: 4000 records/s, 2.00 MB/s"
        );
        let value = summary_json(&args, &tally, Duration::from_millis(500));
        assert_eq!(value["records"], 2000);
        assert_eq!(value["bytes"], 1_000_000);
        assert_eq!(value["elapsed_ms"], 500);
        assert_eq!(value["records_per_second"], 4000.0);
    }
}
