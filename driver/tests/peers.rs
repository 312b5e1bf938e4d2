//! Two real nodes on loopback TCP, each listing the other as a peer: the
//! links come up and learn each other's API versions, a killed peer's link
//! goes down, and it comes back up when the peer restarts on its port.
//! Everything is awaited on the drivers' `peer_status` channels, each wait
//! bounded; nothing sleeps to let things settle.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::time::Duration;

use sluice_core::config::BrokerConfig;
use sluice_core::NodeId;
use sluice_driver::{
    serve_on_thread, DriverError, Environment, FileDisk, PeerStatus, PeerStatuses, ServedOnThread,
    TokioConnector, PEER_RECONNECT_BACKOFF_MAX_MS,
};
use tokio::sync::watch;

/// How long any one state may take to show: generous against a loaded
/// machine, and still far above a reconnect backoff.
const WAIT_MS_MAX: u64 = 20_000;

const DOWN: PeerStatus = PeerStatus {
    up: false,
    api_versions_known: false,
};
const KNOWN: PeerStatus = PeerStatus {
    up: true,
    api_versions_known: true,
};

/// Kills a node and waits until its sockets are closed.
fn kill(node: ServedOnThread) {
    let outcome = node.kill().expect("the node's thread ran");
    outcome.expect("the node ran until killed");
}

fn config(node_id: i32, dir: &Path, port: u16) -> BrokerConfig {
    let pairs: BTreeMap<String, String> = [
        ("node.id", node_id.to_string()),
        ("log.dirs", dir.join("data").display().to_string()),
        ("listeners", format!("PLAINTEXT://127.0.0.1:{port}")),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_string(), value))
    .collect();
    BrokerConfig::from_pairs(&pairs).expect("valid broker config")
}

fn listen(port: u16) -> TcpListener {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port))
        .unwrap_or_else(|error| panic!("cannot listen on 127.0.0.1:{port}: {error}"))
}

/// Starts node `node_id` on `listener` with data in `dir`, linked to
/// `peers`, publishing its links' state on `status`.
fn start(
    node_id: i32,
    dir: &Path,
    listener: TcpListener,
    peers: BTreeMap<NodeId, (String, u16)>,
    status: watch::Sender<PeerStatuses>,
) -> ServedOnThread {
    let port = listener.local_addr().expect("local address").port();
    let config = config(node_id, dir, port);
    let disk = FileDisk::open(&dir.join("data")).expect("open the data directory");
    let build = move |listener| Environment {
        config,
        listener,
        disk,
        advertised: ("127.0.0.1".to_string(), port),
        clock: sluice_driver::system_clock(),
        seed: node_id as u64,
        peers,
        connector: TokioConnector,
        peer_status: Some(status),
        metrics_listener: None,
    };
    serve_on_thread(format!("node-{node_id}"), listener, || (), build).expect("node thread")
}

/// Waits, at most `WAIT_MS_MAX`, until `peer`'s status on `statuses` is
/// `expected`.
fn wait_for(
    statuses: &mut watch::Receiver<PeerStatuses>,
    peer: i32,
    expected: PeerStatus,
    what: &str,
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("test runtime");
    let waited = runtime.block_on(async {
        let seen = statuses.wait_for(|statuses| statuses.get(&NodeId(peer)) == Some(&expected));
        // Whether it was seen (or the sender went away), not the borrow.
        tokio::time::timeout(Duration::from_millis(WAIT_MS_MAX), seen)
            .await
            .map(|seen| seen.is_ok())
    });
    match waited {
        Ok(true) => {}
        Ok(false) => panic!(
            "{what}: the node stopped; last seen {:?}",
            *statuses.borrow()
        ),
        Err(_) => panic!(
            "{what}: not within {WAIT_MS_MAX} ms; last seen {:?}",
            *statuses.borrow()
        ),
    }
}

fn peer_map(peer: i32, port: u16) -> BTreeMap<NodeId, (String, u16)> {
    BTreeMap::from([(NodeId(peer), ("127.0.0.1".to_string(), port))])
}

#[test]
fn two_nodes_link_learn_versions_and_relink_after_a_restart() {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let (listener_1, listener_2) = (listen(0), listen(0));
    let port_1 = listener_1.local_addr().unwrap().port();
    let port_2 = listener_2.local_addr().unwrap().port();
    let (status_1_tx, mut status_1) = watch::channel(PeerStatuses::new());
    let (status_2_tx, mut status_2) = watch::channel(PeerStatuses::new());
    let node_1 = start(
        1,
        dirs[0].path(),
        listener_1,
        peer_map(2, port_2),
        status_1_tx,
    );
    let node_2 = start(
        2,
        dirs[1].path(),
        listener_2,
        peer_map(1, port_1),
        status_2_tx,
    );

    wait_for(&mut status_1, 2, KNOWN, "node 1 learns node 2's versions");
    wait_for(&mut status_2, 1, KNOWN, "node 2 learns node 1's versions");
    assert_eq!(
        status_1.borrow().len(),
        1,
        "node 1 reports its one peer only"
    );

    kill(node_2);
    // A stopped driver publishes its links down before it lets go.
    assert_eq!(status_2.borrow().get(&NodeId(1)), Some(&DOWN));
    wait_for(
        &mut status_1,
        2,
        DOWN,
        "node 1 sees its link to node 2 go down",
    );
    // What the node knew of the peer went with the link.
    assert!(!status_1.borrow()[&NodeId(2)].api_versions_known);

    // Node 2 again, on its port and data, with a fresh status channel.
    let (status_2_tx, mut status_2) = watch::channel(PeerStatuses::new());
    let node_2 = start(
        2,
        dirs[1].path(),
        listen(port_2),
        peer_map(1, port_1),
        status_2_tx,
    );
    let restarted = std::time::Instant::now();
    wait_for(
        &mut status_1,
        2,
        KNOWN,
        "node 1 relinks to the restarted node 2",
    );
    // Reconnects back off at most PEER_RECONNECT_BACKOFF_MAX_MS; allow for
    // node 2's start-up and a loaded machine.
    let relinked_ms = restarted.elapsed().as_millis() as u64;
    assert!(
        relinked_ms < PEER_RECONNECT_BACKOFF_MAX_MS + 5_000,
        "relinked after {relinked_ms} ms"
    );
    wait_for(
        &mut status_2,
        1,
        KNOWN,
        "the restarted node 2 learns node 1's versions",
    );

    kill(node_2);
    kill(node_1);
}

#[test]
fn a_node_listed_among_its_own_peers_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let listener = listen(0);
    let port = listener.local_addr().unwrap().port();
    let (status_tx, _status) = watch::channel(PeerStatuses::new());
    let running = start(1, dir.path(), listener, peer_map(1, port), status_tx);
    // It stopped on its own: the kill finds it ended.
    let outcome = running.kill().expect("the node's thread ran");
    assert!(
        matches!(outcome, Err(DriverError::PeerIsSelf { node_id: 1 })),
        "{outcome:?}"
    );
}
