//! Sans-IO, deterministic core of Sluice.
//!
//! Nothing here touches a socket, a file, a clock or a global random number
//! generator: storage comes in through the `Storage` trait, time as `now`
//! arguments, randomness from the node's seeded generator, and everything the
//! node wants done comes out as values that the driver (`sluice-driver`, or
//! the simulator) carries out. `core/clippy.toml` turns the parts clippy
//! can see into errors: no `HashMap`/`HashSet` (per-process iteration
//! order) and no `Instant`/`SystemTime` readings.

// The layers, bottom up; a module imports only from the layers below it.
// wire: frames, headers, versions, reply bodies.
pub mod wire;
// domain: values, record batches, producer state, storage, logs, metadata.
pub mod batch;
pub mod config;
pub mod image;
pub mod log;
pub mod metadata;
pub mod metadata_records;
pub mod metrics;
pub mod offset_checkpoint;
pub mod producers;
pub mod rng;
pub mod storage;
pub mod types;
// state machines: group commit, topics, the group coordinator, the
// broker's state that holds them, and the controller quorum's Raft replica.
pub mod broker;
pub mod durability;
pub mod group;
pub mod group_records;
pub mod quorum;
pub mod raft;
pub mod replication;
pub mod topics;
pub mod txn;
// handlers: one module per API family, over the broker's state.
pub mod handlers;
// node: connections and reply order, timers, peers, composition.
pub mod node;
pub mod session;
pub mod timer;

pub use node::{ConnectionId, FrameOutcome, Node, Output};
pub use storage::{FileId, MemStorage, Storage, SyncTarget};
pub use types::{Channel, NodeId, Now, TopicPartition};

/// The layering above, checked: a module may use its own layer and the
/// ones below, never one above (tests excepted).
#[cfg(test)]
mod layers {
    const WIRE: u8 = 0;
    const DOMAIN: u8 = 1;
    const MACHINES: u8 = 2;
    const HANDLERS: u8 = 3;
    const NODE: u8 = 4;

    /// Every module: its name, its layer, and the source of its files.
    const MODULES: &[(&str, u8, &[&str])] = &[
        (
            "wire",
            WIRE,
            &[
                include_str!("wire/mod.rs"),
                include_str!("wire/header.rs"),
                include_str!("wire/reply.rs"),
                include_str!("wire/versions.rs"),
            ],
        ),
        (
            "batch",
            DOMAIN,
            &[include_str!("batch.rs"), include_str!("batch/builder.rs")],
        ),
        ("config", DOMAIN, &[include_str!("config.rs")]),
        ("image", DOMAIN, &[include_str!("image.rs")]),
        (
            "log",
            DOMAIN,
            &[
                include_str!("log.rs"),
                include_str!("log/epochs.rs"),
                include_str!("log/format.rs"),
            ],
        ),
        ("metadata", DOMAIN, &[include_str!("metadata.rs")]),
        (
            "metadata_records",
            DOMAIN,
            &[include_str!("metadata_records.rs")],
        ),
        (
            "offset_checkpoint",
            DOMAIN,
            &[include_str!("offset_checkpoint.rs")],
        ),
        ("metrics", DOMAIN, &[include_str!("metrics.rs")]),
        ("producers", DOMAIN, &[include_str!("producers.rs")]),
        ("rng", DOMAIN, &[include_str!("rng.rs")]),
        ("storage", DOMAIN, &[include_str!("storage.rs")]),
        ("types", DOMAIN, &[include_str!("types.rs")]),
        (
            "broker",
            MACHINES,
            &[
                include_str!("broker/mod.rs"),
                include_str!("broker/cluster.rs"),
                include_str!("broker/groups.rs"),
            ],
        ),
        ("durability", MACHINES, &[include_str!("durability.rs")]),
        ("replication", MACHINES, &[include_str!("replication.rs")]),
        ("group", MACHINES, &[include_str!("group.rs")]),
        (
            "group_records",
            MACHINES,
            &[include_str!("group_records.rs")],
        ),
        (
            "raft",
            MACHINES,
            &[
                include_str!("raft/mod.rs"),
                include_str!("raft/election.rs"),
                include_str!("raft/log.rs"),
                include_str!("raft/message.rs"),
                include_str!("raft/quorum_file.rs"),
                include_str!("raft/replication.rs"),
                include_str!("raft/wire.rs"),
            ],
        ),
        ("quorum", MACHINES, &[include_str!("quorum.rs")]),
        ("topics", MACHINES, &[include_str!("topics.rs")]),
        (
            "handlers",
            HANDLERS,
            &[
                include_str!("handlers/mod.rs"),
                include_str!("handlers/cluster.rs"),
                include_str!("handlers/fetch.rs"),
                include_str!("handlers/group.rs"),
                include_str!("handlers/offsets.rs"),
                include_str!("handlers/produce.rs"),
                include_str!("handlers/topics.rs"),
            ],
        ),
        (
            "node",
            NODE,
            &[
                include_str!("node.rs"),
                include_str!("node/cluster.rs"),
                include_str!("node/describe_quorum.rs"),
                include_str!("node/gauges.rs"),
                include_str!("node/quorum.rs"),
            ],
        ),
        ("session", NODE, &[include_str!("session.rs")]),
        ("timer", NODE, &[include_str!("timer.rs")]),
    ];

    fn layer_of(name: &str) -> Option<u8> {
        MODULES
            .iter()
            .find(|(module, _, _)| *module == name)
            .map(|&(_, layer, _)| layer)
    }

    /// The modules a source names as `crate::<module>`, outside its tests.
    fn used(source: &str) -> Vec<String> {
        let code = source.split("#[cfg(test)]").next().unwrap_or_default();
        code.match_indices("crate::")
            .map(|(at, _)| {
                code[at + "crate::".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect()
            })
            .collect()
    }

    #[test]
    fn no_module_uses_one_above_it() {
        let mut upward = Vec::new();
        for &(module, layer, sources) in MODULES {
            for source in sources {
                for name in used(source) {
                    let used_layer = layer_of(&name)
                        .unwrap_or_else(|| panic!("{module} uses crate::{name}, not in the table"));
                    if used_layer > layer {
                        upward.push(format!(
                            "{module} (layer {layer}) uses {name} (layer {used_layer})"
                        ));
                    }
                }
            }
        }
        assert!(upward.is_empty(), "uses against the layering: {upward:#?}");
    }

    #[test]
    fn the_check_sees_a_use_from_above() {
        assert_eq!(
            used("use crate::node::Output;\nlet x = crate::wire::decode;"),
            ["node", "wire"]
        );
        assert!(layer_of("node") > layer_of("log"));
    }
}
