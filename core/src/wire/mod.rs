//! The wire layer: what a Kafka frame looks like around a message body
//! (request and response headers), the versions served, and the reply
//! bodies with their encoding. Nothing here knows about logs or groups.

pub mod header;
pub mod reply;
pub mod versions;

pub use header::{parse_request, Parsed, Request};
pub use reply::{decode, encode_reply, encode_reply_body, encode_request, Reply, ReplyHeader};
