//! Deterministic simulation of Sluice: the real driver (`sluice-driver`)
//! and core run as turmoil hosts on a simulated network and a simulated
//! disk (`SimDisk`), client processes run a workload with `sluice-client`,
//! a nemesis injects faults drawn from the seed, and checkers read the
//! history and the final logs. Every random choice derives from one seed,
//! so a failing run replays exactly.

pub mod check;
pub mod cluster;
pub mod disk;
pub mod eos;
pub mod history;
pub mod nemesis;
pub mod quorum;
pub mod replication;
pub mod report;
pub mod run;
pub mod tap;
pub mod timeline;
pub mod trace;
pub mod workload;

pub use cluster::{AfterSyncGate, ClientId, Cluster, ClusterConfig, CrashLoss};
pub use kafka_protocol::messages::ApiKey;
pub use nemesis::{Fault, Scheduled};
pub use run::{run, Report, Spec};
