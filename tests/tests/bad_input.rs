//! Bad input against a real broker process: each gets the answer Kafka would
//! give (an error code or a closed connection), the process stays up, other
//! connections keep working, and nothing acknowledged is lost.

use std::io::Write;

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::ResponseError;
use sluice_tests::wire::{batch_of, still_serves, Wire};
use sluice_tests::{proc_status_kib, Broker, BrokerOptions};

fn raw(broker: &Broker, bytes: &[u8]) -> Wire {
    let mut wire = Wire::connect(&broker.bootstrap()).expect("connect");
    wire.stream.write_all(bytes).expect("write");
    wire
}

#[test]
fn broken_frames_close_only_their_connection() {
    let broker = Broker::start(BrokerOptions::default());
    let mut bystander = Wire::connect(&broker.bootstrap()).expect("connect");
    let oversized = (104_857_600i32 + 1).to_be_bytes();
    let negative = (-5i32).to_be_bytes();
    let mut generator = 0x2545_f491_4f6c_dd1du64;
    let mut noise = vec![0u8; 4096];
    for byte in noise.iter_mut() {
        generator ^= generator << 13;
        generator ^= generator >> 7;
        generator ^= generator << 17;
        *byte = generator as u8;
    }
    // A plausible length, then garbage where the header should be.
    let mut garbage_header = 12i32.to_be_bytes().to_vec();
    garbage_header.extend_from_slice(&[0x7f; 12]);
    for (name, bytes) in [
        ("oversized", &oversized[..]),
        ("negative", &negative[..]),
        ("noise", &noise[..]),
        ("unknown key", &garbage_header[..]),
    ] {
        let mut wire = raw(&broker, bytes);
        assert!(
            wire.is_closed_by_peer(),
            "{name}: the connection stays open"
        );
        still_serves(&broker.bootstrap());
    }
    let response: MetadataResponse = bystander
        .call(
            ApiKey::Metadata,
            12,
            &MetadataRequest::default().with_topics(None),
        )
        .expect("bystander");
    assert_eq!(response.brokers.len(), 1);
    assert!(
        broker.log().contains("closing connection"),
        "closes are logged"
    );
}

/// A length prefix is only a claim: the broker's memory follows the bytes
/// that arrive, so connections announcing large frames (within
/// socket.request.max.bytes) and sending little cannot make it allocate
/// what they announce.
#[test]
fn announced_frame_sizes_cost_only_the_bytes_that_arrive() {
    const CONNECTIONS: usize = 16;
    const ANNOUNCED: i32 = 64 << 20;
    let broker = Broker::start(BrokerOptions::default());
    let pid = broker.pid().expect("a broker process");
    still_serves(&broker.bootstrap());
    let before = proc_status_kib(pid, "VmRSS");
    let mut claimed = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut bytes = ANNOUNCED.to_be_bytes().to_vec();
        bytes.extend_from_slice(&[0u8; 1024]);
        claimed.push(raw(&broker, &bytes));
    }
    // Requests on a later connection are read after those prefixes; then
    // watch the broker's memory for a while (16 x 64 MiB would be 1 GiB).
    still_serves(&broker.bootstrap());
    let mut highest = before;
    for _ in 0..10 {
        highest = highest.max(proc_status_kib(pid, "VmRSS"));
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        highest < before + 32 * 1024,
        "RSS went from {before} KiB to {highest} KiB for {CONNECTIONS} announced frames"
    );
    drop(claimed);
    still_serves(&broker.bootstrap());
}

#[test]
fn unsupported_versions_get_kafkas_answers() {
    let broker = Broker::start(BrokerOptions::default());
    let mut wire = Wire::connect(&broker.bootstrap()).expect("connect");
    // ApiVersions newer than served: error 35 encoded as v0, then the connection stays usable.
    let mut frame = Vec::new();
    frame.extend_from_slice(&10i32.to_be_bytes());
    frame.extend_from_slice(&(ApiKey::ApiVersions as i16).to_be_bytes());
    frame.extend_from_slice(&42i16.to_be_bytes());
    frame.extend_from_slice(&77i32.to_be_bytes());
    frame.extend_from_slice(&(-1i16).to_be_bytes());
    wire.stream.write_all(&frame).expect("write");
    let response: ApiVersionsResponse =
        wire.receive(ApiKey::ApiVersions, 0, 77).expect("v0 answer");
    assert_eq!(
        response.error_code,
        ResponseError::UnsupportedVersion.code()
    );
    assert!(!response.api_keys.is_empty());
    still_serves(&broker.bootstrap());
    // Any other API at an unsupported version: Kafka closes the connection.
    let mut wire = Wire::connect(&broker.bootstrap()).expect("connect");
    wire.send(ApiKey::Metadata, 13, &MetadataRequest::default())
        .expect("send v13 is fine");
    let _: MetadataResponse = wire.receive(ApiKey::Metadata, 13, 1).expect("served");
    let mut frame = Vec::new();
    frame.extend_from_slice(&10i32.to_be_bytes());
    frame.extend_from_slice(&(ApiKey::Produce as i16).to_be_bytes());
    frame.extend_from_slice(&1i16.to_be_bytes());
    frame.extend_from_slice(&1i32.to_be_bytes());
    frame.extend_from_slice(&(-1i16).to_be_bytes());
    wire.stream.write_all(&frame).expect("write");
    assert!(wire.is_closed_by_peer());
}

#[test]
fn bad_batches_get_error_codes_and_append_nothing() {
    let broker = Broker::start(BrokerOptions::default().config("message.max.bytes", 2000));
    let mut wire = Wire::connect(&broker.bootstrap()).expect("connect");
    assert_eq!(wire.create_topic("t", 1).expect("create"), 0);
    let good = batch_of(&[b"first"], 1_700_000_000_000);
    assert_eq!(
        wire.produce("t", 0, -1, good.clone()).expect("produce"),
        (0, 0)
    );
    let mut bad_crc = good.to_vec();
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 0x01;
    let mut old_magic = good.to_vec();
    old_magic[16] = 1;
    let too_large = batch_of(&[&[0u8; 3000]], 0);
    // Attribute bits a producer may not set, the CRC made right again: a
    // transactional batch without a producer id, the cleaner's
    // delete-horizon bit, a control batch.
    let with_attribute = |bit: i16| {
        let mut batch = good.to_vec();
        let at = sluice_core::batch::ATTRIBUTES_OFFSET;
        let attributes = i16::from_be_bytes([batch[at], batch[at + 1]]) | bit;
        batch[at..at + 2].copy_from_slice(&attributes.to_be_bytes());
        sluice_core::batch::write_crc(&mut batch);
        Bytes::from(batch)
    };
    let cases = [
        (
            "bad crc",
            Bytes::from(bad_crc),
            ResponseError::CorruptMessage,
        ),
        (
            "magic 1",
            Bytes::from(old_magic),
            ResponseError::InvalidRecord,
        ),
        ("too large", too_large, ResponseError::MessageTooLarge),
        (
            "transactional without a producer id",
            with_attribute(sluice_core::batch::ATTRIBUTE_TRANSACTIONAL),
            ResponseError::InvalidRecord,
        ),
        (
            "delete horizon",
            with_attribute(sluice_core::batch::ATTRIBUTE_DELETE_HORIZON),
            ResponseError::InvalidRecord,
        ),
        (
            "control",
            with_attribute(sluice_core::batch::ATTRIBUTE_CONTROL),
            ResponseError::InvalidRecord,
        ),
    ];
    for (name, records, expected) in cases {
        let (error, _) = wire.produce("t", 0, -1, records).expect(name);
        assert_eq!(error, expected.code(), "{name}");
    }
    let (error, _) = wire
        .produce("bad name!", 0, -1, good.clone())
        .expect("bad name");
    assert_eq!(error, ResponseError::InvalidTopicException.code());
    assert_eq!(
        wire.produce("t", 0, -1, batch_of(&[b"second"], 0))
            .expect("produce"),
        (0, 1),
        "no offset consumed"
    );
    let values: Vec<Vec<u8>> = wire
        .read_all("t", 0, 0)
        .expect("read")
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert_eq!(values, vec![b"first".to_vec(), b"second".to_vec()]);
    assert!(
        broker.log().contains("refused a produced batch"),
        "refusals are logged"
    );
}

#[test]
fn unknown_topics_without_auto_creation() {
    let broker = Broker::start(BrokerOptions::default().config("auto.create.topics.enable", false));
    let mut wire = Wire::connect(&broker.bootstrap()).expect("connect");
    let (error, _) = wire
        .produce("nowhere", 0, -1, batch_of(&[b"x"], 0))
        .expect("produce");
    assert_eq!(error, ResponseError::UnknownTopicOrPartition.code());
    let topic = metadata_request::MetadataRequestTopic::default().with_name(Some(TopicName(
        kafka_protocol::protocol::StrBytes::from_static_str("nowhere"),
    )));
    let request = MetadataRequest::default()
        .with_topics(Some(vec![topic]))
        .with_allow_auto_topic_creation(true);
    let response: MetadataResponse = wire.call(ApiKey::Metadata, 12, &request).expect("metadata");
    assert_eq!(
        response.topics[0].error_code,
        ResponseError::UnknownTopicOrPartition.code()
    );
}

/// A full disk: the produce gets KAFKA_STORAGE_ERROR, the broker stays up,
/// what was acknowledged before is still there. Needs root to mount a
/// small tmpfs over the data directory.
#[test]
fn a_full_disk_is_a_storage_error_not_a_crash() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc_geteuid() } != 0 {
        eprintln!("skipping: mounting a small tmpfs needs root");
        return;
    }
    let mut broker = Broker::start(BrokerOptions::default());
    broker.stop();
    let data = broker.data_dir();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=512k", "tmpfs"])
        .arg(&data)
        .status()
        .expect("run mount");
    assert!(status.success(), "mount a tmpfs over the data directory");
    let _unmount = Unmount(data.clone());
    broker.restart();
    let mut wire = Wire::connect(&broker.bootstrap()).expect("connect");
    assert_eq!(wire.create_topic("full", 1).expect("create"), 0);
    let chunk = vec![b'x'; 60_000];
    let mut acked = Vec::new();
    let mut storage_errors = 0;
    for n in 0..40 {
        let value = [format!("{n}-").into_bytes(), chunk.clone()].concat();
        match wire
            .produce("full", 0, -1, batch_of(&[&value], 0))
            .expect("the broker answers")
        {
            (0, offset) => acked.push((offset, value)),
            (error, _) => {
                assert_eq!(error, ResponseError::KafkaStorageError.code());
                storage_errors += 1;
            }
        }
    }
    assert!(storage_errors > 0, "the disk never filled");
    assert!(!acked.is_empty());
    still_serves(&broker.bootstrap());
    let records = wire.read_all("full", 0, 0).expect("read");
    assert_eq!(
        records, acked,
        "acknowledged records intact, failed ones absent"
    );
    broker.kill9();
}

struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}
