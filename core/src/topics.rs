//! The topics this broker holds: names, ids, configs and partition logs,
//! the naming rules, and a topic's file lifecycle (open, grow, remove).
//!
//! Every log opened gets an incarnation number never used before in this
//! process: a topic deleted and created again under the same name has new
//! numbers, so work issued for the old logs (a sync's log ends) can never
//! be applied to the new ones.

use std::collections::BTreeMap;
use std::io;

use crate::config::{BrokerConfig, TopicConfig};
use crate::log::PartitionLog;
use crate::metadata::TopicRecord;
use crate::replication::Role;
use crate::storage::Storage;
use crate::types::TopicPartition;

/// One partition of a topic hosted here.
#[derive(Debug)]
pub struct Partition {
    pub log: PartitionLog,
    pub incarnation: u64,
    /// What this broker is for the partition: alone, leader or follower.
    pub role: Role,
    /// The log end found on disk when the log was opened.
    pub opened_end: i64,
}

/// A topic and its partitions.
#[derive(Debug)]
pub struct Topic {
    pub id: [u8; 16],
    pub config: TopicConfig,
    /// By index; None for a partition of a cluster this broker holds no
    /// replica of (it keeps no log for it).
    pub partitions: Vec<Option<Partition>>,
}

/// What opening a partition found on disk.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    /// A partition directory was created: the log dir's entries changed.
    pub created_dirs: bool,
}

#[derive(Debug, Default)]
pub struct Topics {
    by_name: BTreeMap<String, Topic>,
    next_incarnation: u64,
    /// What opening the partition logs found, summed since the start.
    pub opened: OpenedSummary,
}

/// The partition logs opened since the start, and what recovering them
/// did: the start-up log line's numbers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OpenedSummary {
    pub partitions: u64,
    pub segments: u64,
    pub bytes: u64,
    /// Segments read whole to rebuild their indexes (after an unclean stop).
    pub segments_scanned: u64,
    /// Bytes of torn or corrupt tails cut off.
    pub truncated_bytes: u64,
    /// Segments removed after a cut.
    pub segments_removed: u64,
    /// Partitions of recorded topics whose directory was gone at start:
    /// they start again empty.
    pub dirs_gone: u64,
}

/// Kafka's topic name rule: 1 to 249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn topic_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("Topic name is illegal, it can't be empty".into());
    }
    if name == "." || name == ".." {
        return Some("Topic name cannot be \".\" or \"..\"".into());
    }
    if name.len() > 249 {
        return Some(format!(
            "Topic name is illegal, it can't be longer than 249 characters, topic name: {name}"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return Some(format!("Topic name \"{name}\" is illegal, it contains a character other than ASCII alphanumerics, '.', '_' and '-'"));
    }
    None
}

/// The directory of a partition's log.
pub fn partition_dir(topic: &str, partition: i32) -> String {
    format!("{topic}-{partition}")
}

impl Topics {
    pub fn get(&self, name: &str) -> Option<&Topic> {
        self.by_name.get(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.by_name.keys()
    }

    /// Every partition, by topic name and index.
    pub fn partitions_mut(&mut self) -> impl Iterator<Item = (TopicPartition, &mut Partition)> {
        self.by_name.iter_mut().flat_map(|(name, topic)| {
            topic
                .partitions
                .iter_mut()
                .enumerate()
                .filter_map(move |(index, p)| {
                    Some((TopicPartition::new(name.clone(), index as i32), p.as_mut()?))
                })
        })
    }

    pub fn partition(&self, topic: &str, index: i32) -> Option<&Partition> {
        let index = usize::try_from(index).ok()?;
        self.by_name.get(topic)?.partitions.get(index)?.as_ref()
    }

    pub fn partition_mut(&mut self, topic: &str, index: i32) -> Option<&mut Partition> {
        let index = usize::try_from(index).ok()?;
        self.by_name
            .get_mut(topic)?
            .partitions
            .get_mut(index)?
            .as_mut()
    }

    /// The number of partitions of a topic, held here or not; 0 when it
    /// does not exist.
    pub fn partition_count(&self, topic: &str) -> i32 {
        self.by_name
            .get(topic)
            .map_or(0, |t| t.partitions.len() as i32)
    }

    pub fn name_by_id(&self, id: &uuid::Uuid) -> Option<String> {
        self.by_name
            .iter()
            .find(|(_, t)| t.id == *id.as_bytes())
            .map(|(name, _)| name.clone())
    }

    /// Kafka refuses a name that differs from an existing one only by `.`
    /// against `_` (their metric names would collide).
    pub fn collision(&self, name: &str) -> Option<String> {
        let folded = name.replace('.', "_");
        self.by_name
            .keys()
            .find(|existing| existing.replace('.', "_") == folded && existing.as_str() != name)
            .map(|existing| format!("Topic '{name}' collides with existing topic: {existing}"))
    }

    /// Opens (or creates) the logs of a recorded topic.
    pub fn open<S: Storage>(
        &mut self,
        storage: &mut S,
        broker: &BrokerConfig,
        record: &TopicRecord,
        clean: bool,
    ) -> io::Result<Opened> {
        let config = TopicConfig::new(broker, &record.configs).unwrap_or_else(|error| {
            tracing::error!(topic = %record.name, %error, "stored topic config is invalid; using defaults");
            TopicConfig::new(broker, &BTreeMap::new()).expect("defaults are valid")
        });
        let topic = Topic {
            id: record.id,
            config,
            partitions: Vec::new(),
        };
        assert!(
            !self.by_name.contains_key(&record.name),
            "a topic is opened once"
        );
        self.by_name.insert(record.name.clone(), topic);
        let mut opened = Opened::default();
        for _ in 0..record.partitions {
            let grown = self.grow(storage, &record.name, clean, true)?;
            opened.created_dirs |= grown.created_dirs;
        }
        Ok(opened)
    }

    /// Opens the next partition of a topic (a new one, or one found at
    /// start); with `hosted` false it only counts it: this broker holds no
    /// replica of it, and no log.
    pub fn grow<S: Storage>(
        &mut self,
        storage: &mut S,
        name: &str,
        clean: bool,
        hosted: bool,
    ) -> io::Result<Opened> {
        let topic = self.by_name.get(name).expect("grown topics are registered");
        let index = topic.partitions.len() as i32;
        if !hosted {
            self.topic_mut(name).partitions.push(None);
            return Ok(Opened::default());
        }
        let config = topic.config.clone();
        let (partition, opened) = self.open_partition(storage, name, index, config, clean)?;
        self.topic_mut(name).partitions.push(Some(partition));
        Ok(opened)
    }

    fn topic_mut(&mut self, name: &str) -> &mut Topic {
        self.by_name
            .get_mut(name)
            .expect("grown topics are registered")
    }

    /// Opens (or creates) the log of partition `index` of a topic, under a
    /// new incarnation, without adding it to the topic: a creation spread
    /// over steps holds its logs apart until the topic is whole
    /// (`install`, `extend`).
    pub fn open_partition<S: Storage>(
        &mut self,
        storage: &mut S,
        name: &str,
        index: i32,
        config: TopicConfig,
        clean: bool,
    ) -> io::Result<(Partition, Opened)> {
        let incarnation = self.next_incarnation;
        let dir = partition_dir(name, index);
        let created_dirs = !storage.exists(&dir);
        let (log, recovery) = PartitionLog::open(storage, &dir, config, clean)?;
        if recovery.truncated_bytes > 0
            || recovery.segments_removed > 0
            || recovery.orphan_indexes_removed > 0
            || recovery.log_files_gone
        {
            tracing::warn!(%dir, ?recovery, "recovered partition log");
        }
        let opened = &mut self.opened;
        opened.partitions += 1;
        opened.segments += log.segment_count() as u64;
        opened.bytes += log.size_bytes();
        opened.segments_scanned += recovery.indexes_rebuilt as u64;
        opened.truncated_bytes += recovery.truncated_bytes;
        opened.segments_removed += recovery.segments_removed as u64;
        self.next_incarnation += 1;
        let partition = Partition {
            opened_end: log.log_end_offset(),
            log,
            incarnation,
            role: Role::Alone,
        };
        Ok((partition, Opened { created_dirs }))
    }

    /// Adds a topic whose partition logs were opened apart
    /// (`open_partition`), whole: it becomes visible at once.
    pub fn install(
        &mut self,
        name: &str,
        id: [u8; 16],
        config: TopicConfig,
        partitions: Vec<Partition>,
    ) {
        assert!(!self.by_name.contains_key(name), "a topic is opened once");
        for (index, partition) in partitions.iter().enumerate() {
            assert_eq!(partition.log.dir(), partition_dir(name, index as i32));
        }
        let partitions = partitions.into_iter().map(Some).collect();
        self.by_name.insert(
            name.to_string(),
            Topic {
                id,
                config,
                partitions,
            },
        );
    }

    /// Adds partitions opened apart (`open_partition`) to a topic, all at
    /// once, after the ones it has.
    pub fn extend(&mut self, name: &str, partitions: Vec<Partition>) {
        let topic = self.topic_mut(name);
        for partition in partitions {
            let index = topic.partitions.len() as i32;
            assert_eq!(partition.log.dir(), partition_dir(name, index));
            topic.partitions.push(Some(partition));
        }
    }

    /// Gives a partition's log a new incarnation: after a truncation, so
    /// that a sync issued before it (whose end may be past the cut, or
    /// cover records since replaced) says nothing of the log after.
    pub fn renew_incarnation(&mut self, topic: &str, index: i32) {
        let incarnation = self.next_incarnation;
        if let Some(held) = self.partition_mut(topic, index) {
            held.incarnation = incarnation;
            self.next_incarnation += 1;
        }
    }

    /// Forgets a topic and removes its files (after its deletion was recorded).
    pub fn remove<S: Storage>(&mut self, storage: &mut S, name: &str) -> io::Result<()> {
        let Some(mut topic) = self.by_name.remove(name) else {
            return Ok(());
        };
        for partition in topic.partitions.iter_mut().flatten() {
            partition.log.close(storage);
            let dir = partition.log.dir().to_string();
            remove_dir_all(storage, &dir)?;
        }
        Ok(())
    }

    /// Undoes a topic's creation that failed part way (a storage error, a
    /// lack of descriptors): closes the logs it opened and removes the
    /// directories of its first `partitions` partitions, whichever exist,
    /// so the failed creation leaves nothing behind. Only for a topic not
    /// recorded: a recorded one is removed by its deletion.
    pub fn discard<S: Storage>(&mut self, storage: &mut S, name: &str, partitions: i32) {
        let opened = match self.by_name.remove(name) {
            Some(topic) => topic.partitions.into_iter().flatten().collect(),
            None => Vec::new(),
        };
        discard_partitions(storage, name, opened, 0..partitions);
    }

    pub fn invariants(&self) {
        for (name, topic) in &self.by_name {
            assert!(
                topic_name_problem(name).is_none(),
                "a held topic has a legal name"
            );
            for (index, partition) in topic.partitions.iter().enumerate() {
                let Some(partition) = partition else {
                    continue;
                };
                assert!(partition.incarnation < self.next_incarnation);
                assert_eq!(partition.log.dir(), partition_dir(name, index as i32));
                partition.log.invariants();
            }
        }
    }
}

/// Undoes the opening of partition logs never recorded: closes `opened`
/// and removes the directories of the partitions `indexes` of `name`,
/// whichever exist.
pub fn discard_partitions<S: Storage>(
    storage: &mut S,
    name: &str,
    opened: Vec<Partition>,
    indexes: std::ops::Range<i32>,
) {
    for mut partition in opened {
        partition.log.close(storage);
    }
    for index in indexes {
        let dir = partition_dir(name, index);
        if !storage.exists(&dir) {
            continue;
        }
        if let Err(error) = remove_dir_all(storage, &dir) {
            tracing::error!(%dir, %error, "cannot remove the directory of a creation that failed; the next start removes it");
        }
    }
}

/// Removes a directory and the files in it.
pub fn remove_dir_all<S: Storage + ?Sized>(storage: &mut S, dir: &str) -> io::Result<()> {
    for name in storage.list_dir(dir)? {
        storage.remove_file(&format!("{dir}/{name}"))?;
    }
    storage.remove_dir(dir)
}
