//! The errors `serve`, `serve_until` and `bind` return: why a broker could
//! not start. Once it serves, trouble (a failed sync, a bad frame) is the
//! node's to answer with Kafka error codes, not the driver's to return.
//!
//! Each message names its IO error itself, rather than as a `source`, so
//! that one `Display` is the whole story for the log lines that print it
//! (`sluice serve`, the simulator's restart loop).

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The listening socket could not be bound.
    #[error("cannot listen on {address}: {error}")]
    Bind { address: String, error: io::Error },
    /// The node could not open its data directory (reading the metadata
    /// log, recovering the partitions).
    #[error("cannot open the data directory {data_dir}: {error}")]
    Open { data_dir: String, error: io::Error },
    /// The start-up sync, which makes recovered data durable before
    /// anything is served, failed.
    #[error("the start-up sync of {data_dir} failed")]
    StartupSync { data_dir: String },
    /// `Environment.peers` names this node itself.
    #[error("node {node_id} is listed among its own peers")]
    PeerIsSelf { node_id: i32 },
}
