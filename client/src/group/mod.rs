//! Consumer groups on the client side: the consumer protocol's bytes
//! ([`protocol`]), the leader's assignors ([`assignor`]), membership as a
//! sans-IO state machine ([`membership`]) and the conversation with the
//! group coordinator that drives it ([`member`]).
//!
//! The consumer (`crate::consumer`) owns one [`member::GroupMember`] when
//! `ConsumerConfig::group_id` is set: subscribed, it joins the group and
//! heartbeats; with manual assignment it only commits and fetches offsets.
//! Rebalancing is eager, as with Kafka's `range` and `roundrobin`
//! assignors: before joining again a member commits (with auto-commit on)
//! and gives up every partition it owns.

pub mod assignor;
pub mod member;
pub mod membership;
pub mod protocol;
#[cfg(test)]
mod scripted;

pub use assignor::Assignor;
pub use member::CommitHandle;
