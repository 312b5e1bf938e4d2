//! The driver of Sluice: everything the sans-IO core leaves out. It owns the
//! sockets, the files, the clock and the syncer, feeds the node its inputs
//! and carries out its outputs (`serve`). It also keeps the node's outbound
//! links to the other nodes of a cluster (`Environment.peers`, through a
//! `Connector`), holds peer frames until the sync they wait for completed,
//! and publishes each link's state (`PeerStatus`) for whoever watches.
//!
//! The `sluice` binary runs it on tokio with `FileDisk`; the simulator
//! (`sluice-sim`) runs the same code on turmoil's network with a simulated
//! disk and clock; the client's integration tests run it in-process. It
//! depends on the core alone, so none of them pulls in the CLI's crates.

mod admission;
pub mod disk;
mod error;
pub mod limits;
mod metrics;
mod on_thread;
mod peers;
mod pressure;
mod serve;

pub use disk::FileDisk;
pub use error::DriverError;
pub use on_thread::{serve_on_thread, ServedOnThread};
pub use peers::{
    Connector, PeerStatus, PeerStatuses, TokioConnector, PEER_CONNECT_TIMEOUT_MS,
    PEER_RECONNECT_BACKOFF_MAX_MS, PEER_RECONNECT_BACKOFF_MIN_MS,
};
pub use serve::{
    bind, serve, serve_until, system_clock, Clock, Disk, Environment, Listener, SyncFuture,
    SyncResult,
};
