//! Sans-IO, deterministic core of Sluice.
//!
//! Nothing here touches a socket, a file, a clock or a global random number
//! generator: storage comes in through the `Storage` trait, time as `now`
//! arguments, randomness from the node's seeded generator, and everything the
//! node wants done comes out as values that the driver (`sluice-server`, or
//! the simulator) carries out.

pub mod api;
pub mod api_group;
pub mod batch;
pub mod config;
pub mod group;
pub mod log;
pub mod metadata;
pub mod node;
pub mod producers;
pub mod rng;
pub mod storage;

pub use node::{ConnectionId, FrameOutcome, Node, Output};
pub use storage::{FileId, MemStorage, Storage, SyncTarget};
