//! The modules of the `sluice` binary: the configuration file of `serve`,
//! the client commands (`cli`), `dump-log` and `perf`. The driver they
//! start a broker with is the `sluice-driver` crate.

pub mod cli;
pub mod config_file;
pub mod dump_log;
pub mod perf;
