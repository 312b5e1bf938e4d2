//! A cluster of real `sluice serve` processes: three voters of one
//! controller quorum on loopback, each voter's address in
//! `controller.quorum.voters` being that process's own listener. They
//! elect a leader and catch up; then the leader is killed (SIGKILL) and
//! the two others must elect a new one in a later epoch.
//!
//! Progress is read as an operator reads it, with `sluice cluster quorum
//! --json` (DescribeQuorum, asked of every voter until the leader
//! answers), polled against a deadline: nothing waits a fixed time for the
//! quorum to get somewhere.

use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_tests::{free_ports, poll_quorum, Broker, BrokerOptions};

const VOTERS: usize = 3;
/// The first election and the followers' catching up, from the start of
/// the last process.
const FORMED_WITHIN: Duration = Duration::from_secs(15);
/// The election after the leader's death: a follower stands once it has
/// had no answer for `controller.quorum.fetch.timeout.ms` (2000), then
/// waits `controller.quorum.election.timeout.ms` (1000) plus up to as
/// much again at random before it stands again after a split vote.
const REELECTED_WITHIN: Duration = Duration::from_secs(12);
/// The pause between two polls (each poll is a short-lived `sluice`).
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// One poll's bound; the command gives up on its own well within it.
const POLL_TIMEOUT: Duration = Duration::from_secs(10);

/// `sluice cluster quorum --json` against these addresses: the leader's
/// answer, or why there was none (no leader yet, nobody reachable).
fn describe(bootstrap: &str) -> Result<Value, String> {
    poll_quorum(bootstrap, POLL_TIMEOUT)
}

/// Polls until an answer satisfies `done`; that answer, and the time from
/// `since` to the poll that got it. Panics past `within`, with the last
/// answer or failure.
fn wait_for(
    bootstrap: &str,
    since: Instant,
    within: Duration,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> (Value, Duration) {
    loop {
        let last = match describe(bootstrap) {
            Ok(answer) if done(&answer) => return (answer, since.elapsed()),
            Ok(answer) => answer.to_string(),
            Err(why) => why,
        };
        assert!(
            since.elapsed() < within,
            "{what}: not within {within:?}; last poll: {last}"
        );
        std::thread::sleep(POLL_INTERVAL);
    }
}

fn voters_of(answer: &Value) -> &[Value] {
    answer["voters"].as_array().map_or(&[], Vec::as_slice)
}

fn voter(answer: &Value, id: i64) -> Option<&Value> {
    voters_of(answer).iter().find(|v| v["node_id"] == id)
}

/// Every voter of `ids` has caught up with the leader, which committed
/// its whole log, and the leader saw each follower catch up.
fn caught_up(answer: &Value, ids: &[i64]) -> bool {
    let leader = answer["leader_id"].as_i64().unwrap_or(-1);
    let Some(leader_end) = voter(answer, leader).and_then(|l| l["log_end_offset"].as_i64()) else {
        return false;
    };
    leader_end >= 1
        && answer["high_watermark"] == leader_end
        && ids.iter().all(|&id| {
            voter(answer, id)
                .is_some_and(|v| v["lag"] == 0 && v["last_caught_up_timestamp"].as_i64().is_some())
        })
}

#[test]
fn three_processes_elect_a_leader_and_elect_another_when_it_is_killed() {
    let ports = free_ports(VOTERS);
    let voters_value = (0..VOTERS)
        .map(|i| format!("{}@127.0.0.1:{}", i + 1, ports[i]))
        .collect::<Vec<_>>()
        .join(",");
    let mut brokers: Vec<Broker> = (0..VOTERS)
        .map(|i| {
            let options = BrokerOptions::default()
                .config("node.id", (i + 1) as i64)
                .config("controller.quorum.voters", voters_value.as_str());
            Broker::start_on(ports[i], options)
        })
        .collect();
    // Formation counts from the last start (a first start may build the
    // binary, and each waits for its node to be ready).
    let started = Instant::now();
    for (i, broker) in brokers.iter().enumerate() {
        let log = broker.log();
        assert!(
            log.contains("joining the controller quorum")
                && log.contains(&format!("node_id={}", i + 1)),
            "node {} does not say which quorum it joins:\n{}",
            i + 1,
            broker.log_tail(20)
        );
    }
    let everyone = brokers
        .iter()
        .map(Broker::bootstrap)
        .collect::<Vec<_>>()
        .join(",");
    let all_ids: Vec<i64> = (1..=VOTERS as i64).collect();

    let (formed, formed_after) = wait_for(
        &everyone,
        started,
        FORMED_WITHIN,
        "one leader with all three voters caught up",
        |answer| voters_of(answer).len() == VOTERS && caught_up(answer, &all_ids),
    );
    let leader = formed["leader_id"].as_i64().expect("a leader id");
    let epoch = formed["leader_epoch"].as_i64().expect("an epoch");
    assert!((1..=VOTERS as i64).contains(&leader), "{formed}");
    assert!(epoch >= 1, "{formed}");
    assert_eq!(voter(&formed, leader).expect("leader")["status"], "Leader");
    eprintln!(
        "quorum formed {formed_after:?} after the last start: leader {leader}, epoch {epoch}"
    );

    // SIGKILL the leader; the two others must notice and elect a new one.
    brokers[(leader - 1) as usize].kill9();
    let killed = Instant::now();
    let survivors: Vec<i64> = all_ids.iter().copied().filter(|&id| id != leader).collect();
    let survivors_bootstrap = survivors
        .iter()
        .map(|&id| brokers[(id - 1) as usize].bootstrap())
        .collect::<Vec<_>>()
        .join(",");
    let (elected, election) = wait_for(
        &survivors_bootstrap,
        killed,
        REELECTED_WITHIN,
        "a new leader after the old one was killed",
        |answer| answer["leader_id"] != leader && answer["leader_epoch"].as_i64() > Some(epoch),
    );
    let new_leader = elected["leader_id"].as_i64().expect("a leader id");
    let new_epoch = elected["leader_epoch"].as_i64().expect("an epoch");
    assert!(survivors.contains(&new_leader), "{elected}");
    // Measured (13 runs, a 2-core machine shared with a build): 2.1 to
    // 4.0 s from the kill to the first poll that saw the new leader, most
    // near 3.2 s; a poll takes its 500 ms bound while no node leads, so
    // that is to within about 0.6 s. The followers stand once the 2 s fetch
    // timeout passed since their last answer (1.5-2 s after the kill, as
    // caught-up followers are answered every 500 ms). Both were answered
    // together, so both stand together in epoch + 1 and split the vote;
    // the one whose election timeout (1 s + up to 1 s at random) ends
    // first wins epoch + 2. One run in thirteen won epoch + 1 (2.1 s).
    eprintln!(
        "new leader {new_leader} in epoch {new_epoch} (was {leader} in {epoch}), \
         seen {election:?} after the kill"
    );

    // The new leader lists the dead voter as unheard of in its epoch, and
    // the other survivor catches up with it.
    let (settled, _) = wait_for(
        &survivors_bootstrap,
        killed,
        REELECTED_WITHIN,
        "the surviving follower caught up with the new leader",
        |answer| answer["leader_epoch"] == new_epoch && caught_up(answer, &survivors),
    );
    let dead = voter(&settled, leader).expect("the killed node is still a voter");
    assert_eq!(dead["log_end_offset"], -1, "{settled}");
    assert_eq!(dead["last_fetch_timestamp"], Value::Null, "{settled}");
    assert_eq!(dead["status"], "Follower", "{settled}");
}
