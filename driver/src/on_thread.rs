//! A node served on a thread of its own until killed: how tests, and any
//! tool that wants a real broker in-process, run one. The thread has its
//! own current-thread runtime, since the node task does blocking disk IO.

use std::thread::JoinHandle;

use tokio::sync::oneshot;

use crate::peers::Connector;
use crate::serve::{serve_until, Disk, Environment};
use crate::DriverError;

/// A node serving on its own thread; `kill` stops it.
pub struct ServedOnThread {
    kill: oneshot::Sender<()>,
    thread: JoinHandle<Result<(), DriverError>>,
}

impl ServedOnThread {
    /// Kills the node, as a crash of its process would, and waits until its
    /// thread ended: every socket it held is closed when this returns. Err
    /// when the thread panicked; else how serving ended.
    pub fn kill(self) -> std::thread::Result<Result<(), DriverError>> {
        let _ = self.kill.send(());
        self.thread.join()
    }
}

/// Serves on a new thread named `name` the environment `build` makes
/// there around `listener` (made non-blocking here). `prepare` runs first
/// on that thread, and what it returns is held until the thread ends (a
/// thread-local log subscriber, say).
pub fn serve_on_thread<D, C, G>(
    name: String,
    listener: std::net::TcpListener,
    prepare: impl FnOnce() -> G + Send + 'static,
    build: impl FnOnce(tokio::net::TcpListener) -> Environment<tokio::net::TcpListener, D, C>
        + Send
        + 'static,
) -> std::io::Result<ServedOnThread>
where
    D: Disk,
    C: Connector,
{
    listener.set_nonblocking(true)?;
    let address = listener.local_addr()?.to_string();
    let (kill, killed) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new().name(name).spawn(move || {
        let _prepared = prepare();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| DriverError::Bind {
                address: address.clone(),
                error,
            })?;
        let outcome = runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener)
                .map_err(|error| DriverError::Bind { address, error })?;
            let kill = async {
                let _ = killed.await;
            };
            serve_until(build(listener), std::future::pending(), kill).await
        });
        if let Err(error) = &outcome {
            tracing::error!(%error, "the node stopped");
        }
        // Dropping the runtime closes every socket the node held, before
        // `kill` returns.
        drop(runtime);
        outcome
    })?;
    Ok(ServedOnThread { kill, thread })
}
