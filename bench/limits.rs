//! The machine's limits that `bench/run` compares Sluice against: disk
//! (sequential write + fdatasync throughput, 4 KiB append + fdatasync
//! latency), loopback TCP throughput, and memcpy throughput.
//!
//! Standard library only, so `bench/run` builds it with a bare `rustc -O`
//! and it stays out of the cargo workspace. Each measurement is bounded by
//! both a byte or iteration count and a time limit. Results are printed as
//! `name value` lines (units in the names) for the script to read.
//!
//! Usage: `limits disk DIR` | `limits fsync DIR BYTES` | `limits tcp` |
//! `limits memcpy`. `fsync` is the append + fdatasync latency test of
//! `disk` alone, with appends of BYTES: run right beside a latency case,
//! with the size of the batches the broker writes in it, it is that case's
//! floor. (Appends that stay inside an allocated block need no journal
//! commit on ext4, and so are much cheaper than 4 KiB ones on a busy disk.)

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

/// Bytes written by the sequential test, at most.
const SEQUENTIAL_BYTES_MAX: u64 = 512 * 1024 * 1024;
/// Chunk of one sequential write.
const SEQUENTIAL_CHUNK_BYTES: usize = 1024 * 1024;
/// Bytes written between two fdatasyncs in the group-commit-sized test.
const GROUP_SYNC_BYTES: usize = 1024 * 1024;
/// Appends timed by the small-sync latency test, at most.
const SMALL_SYNCS_MAX: u32 = 2_000;
/// Size of one append in the latency test of `disk`.
const SMALL_WRITE_BYTES: usize = 4096;
/// Largest append of `fsync`.
const FSYNC_WRITE_BYTES_MAX: usize = 1024 * 1024;
/// Time limit of each disk measurement.
const DISK_TIME_MAX: Duration = Duration::from_secs(4);
/// Time limit of the TCP measurement, and bytes sent at most.
const TCP_TIME_MAX: Duration = Duration::from_secs(2);
const TCP_BYTES_MAX: u64 = 64 * 1024 * 1024 * 1024;
/// Chunk of one TCP write and read.
const TCP_CHUNK_BYTES: usize = 1024 * 1024;
/// Size of one memcpy, larger than any cache here, and the time limit.
const MEMCPY_BYTES: usize = 64 * 1024 * 1024;
const MEMCPY_TIME_MAX: Duration = Duration::from_secs(1);
const MEMCPY_ROUNDS_MAX: u32 = 10_000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let outcome = match args.get(1).map(String::as_str) {
        Some("disk") if args.len() == 3 => disk(Path::new(&args[2])),
        Some("fsync") if args.len() == 4 => match args[3].parse::<usize>() {
            Ok(bytes) if (1..=FSYNC_WRITE_BYTES_MAX).contains(&bytes) => {
                small_syncs(Path::new(&args[2]), bytes)
            }
            _ => Err(std::io::Error::other("BYTES must be 1..=1048576")),
        },
        Some("tcp") if args.len() == 2 => tcp(),
        Some("memcpy") if args.len() == 2 => {
            memcpy();
            Ok(())
        }
        _ => {
            eprintln!(
                "usage: limits disk DIR | limits fsync DIR BYTES | limits tcp | limits memcpy"
            );
            std::process::exit(2);
        }
    };
    if let Err(error) = outcome {
        eprintln!("limits: {error}");
        std::process::exit(1);
    }
}

fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64().max(1e-9)
}

/// A fresh file in `dir`, removed again when the test is done.
fn scratch_file(dir: &Path, name: &str) -> std::io::Result<(File, std::path::PathBuf)> {
    let path = dir.join(name);
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)?;
    Ok((file, path))
}

fn disk(dir: &Path) -> std::io::Result<()> {
    sequential(dir)?;
    group_sized_syncs(dir)?;
    small_syncs(dir, SMALL_WRITE_BYTES)?;
    Ok(())
}

/// Writes up to `SEQUENTIAL_BYTES_MAX` in 1 MiB chunks, then one
/// fdatasync: the bandwidth a log can reach with syncs far apart.
fn sequential(dir: &Path) -> std::io::Result<()> {
    let (mut file, path) = scratch_file(dir, "limits-sequential")?;
    let chunk = vec![0x5au8; SEQUENTIAL_CHUNK_BYTES];
    let started = Instant::now();
    let mut written = 0u64;
    while written < SEQUENTIAL_BYTES_MAX && started.elapsed() < DISK_TIME_MAX {
        file.write_all(&chunk)?;
        written += chunk.len() as u64;
    }
    file.sync_data()?;
    let elapsed = started.elapsed();
    std::fs::remove_file(path)?;
    println!(
        "disk_sequential_write_fdatasync_mb_per_s {:.1}",
        mb_per_s(written, elapsed)
    );
    Ok(())
}

/// Appends 1 MiB and fdatasyncs, over and over: the bandwidth when every
/// megabyte must be durable before the next (a busy group commit).
fn group_sized_syncs(dir: &Path) -> std::io::Result<()> {
    let (mut file, path) = scratch_file(dir, "limits-group")?;
    let chunk = vec![0xa5u8; GROUP_SYNC_BYTES];
    let started = Instant::now();
    let mut written = 0u64;
    while written < SEQUENTIAL_BYTES_MAX && started.elapsed() < DISK_TIME_MAX {
        file.write_all(&chunk)?;
        file.sync_data()?;
        written += chunk.len() as u64;
    }
    let elapsed = started.elapsed();
    std::fs::remove_file(path)?;
    println!(
        "disk_1mib_append_fdatasync_mb_per_s {:.1}",
        mb_per_s(written, elapsed)
    );
    Ok(())
}

/// Appends `bytes` and fdatasyncs, one at a time, timing each pair: the
/// least a durably acknowledged single write of that size can cost.
fn small_syncs(dir: &Path, bytes: usize) -> std::io::Result<()> {
    let (mut file, path) = scratch_file(dir, "limits-small")?;
    let block = vec![0x3cu8; bytes];
    let started = Instant::now();
    let mut latencies_us = Vec::with_capacity(SMALL_SYNCS_MAX as usize);
    for _ in 0..SMALL_SYNCS_MAX {
        if started.elapsed() >= DISK_TIME_MAX {
            break;
        }
        let began = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        latencies_us.push(began.elapsed().as_secs_f64() * 1e6);
    }
    std::fs::remove_file(path)?;
    latencies_us.sort_by(f64::total_cmp);
    let quantile = |q: f64| latencies_us[((latencies_us.len() - 1) as f64 * q) as usize];
    let name = match bytes {
        SMALL_WRITE_BYTES => "4kib".to_string(),
        other => format!("{other}b"),
    };
    println!("disk_{name}_append_fdatasync_count {}", latencies_us.len());
    println!("disk_{name}_append_fdatasync_p50_us {:.1}", quantile(0.5));
    println!("disk_{name}_append_fdatasync_p99_us {:.1}", quantile(0.99));
    Ok(())
}

/// One TCP stream over 127.0.0.1: a thread reads into a 1 MiB buffer and
/// discards, the main thread writes 1 MiB chunks for `TCP_TIME_MAX`.
fn tcp() -> std::io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?;
    let receiver = std::thread::spawn(move || -> std::io::Result<(u64, Duration)> {
        let (mut stream, _) = listener.accept()?;
        let mut buffer = vec![0u8; TCP_CHUNK_BYTES];
        let mut received = 0u64;
        let mut first_at = None;
        loop {
            let count = stream.read(&mut buffer)?;
            if count == 0 {
                break;
            }
            first_at.get_or_insert_with(Instant::now);
            received += count as u64;
        }
        Ok((received, first_at.map_or(Duration::ZERO, |at| at.elapsed())))
    });
    let mut stream = TcpStream::connect(address)?;
    let chunk = vec![0x77u8; TCP_CHUNK_BYTES];
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < TCP_BYTES_MAX && started.elapsed() < TCP_TIME_MAX {
        stream.write_all(&chunk)?;
        sent += chunk.len() as u64;
    }
    drop(stream);
    let (received, elapsed) = receiver.join().expect("the receiver thread panicked")?;
    assert_eq!(received, sent, "the receiver got every byte sent");
    println!("tcp_loopback_mb_per_s {:.1}", mb_per_s(received, elapsed));
    Ok(())
}

/// Copies a 64 MiB buffer into another, over and over, for about a second.
fn memcpy() {
    let source = vec![0x11u8; MEMCPY_BYTES];
    let mut target = vec![0u8; MEMCPY_BYTES];
    target.copy_from_slice(&source); // fault the pages in before timing
    let started = Instant::now();
    let mut copied = 0u64;
    for round in 0..MEMCPY_ROUNDS_MAX {
        if started.elapsed() >= MEMCPY_TIME_MAX {
            break;
        }
        let source = std::hint::black_box(&source);
        target.copy_from_slice(source);
        target[round as usize % MEMCPY_BYTES] ^= 1;
        std::hint::black_box(&target);
        copied += MEMCPY_BYTES as u64;
    }
    println!("memcpy_mb_per_s {:.1}", mb_per_s(copied, started.elapsed()));
}
