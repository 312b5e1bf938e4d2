//! The tokio driver of Sluice: the real disk, sockets, clock and syncer
//! around the sans-IO core, plus the configuration file and the tools of the
//! `sluice` binary (`dump-log`, and the client commands in `cli`).

pub mod cli;
pub mod config_file;
pub mod disk;
pub mod driver;
pub mod dump_log;
pub mod perf;
