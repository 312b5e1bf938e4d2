//! Transaction markers on the partitions this broker leads (placeholder
//! until the partition side lands).

use kafka_protocol::ResponseError;

use super::{Broker, GroupWrite};
use crate::storage::Storage;
use crate::types::Now;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnMarker {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub coordinator_epoch: i32,
    pub commit: bool,
}

impl<S: Storage> Broker<S> {
    pub fn write_txn_marker(
        &mut self,
        _now: Now,
        _topic: &str,
        _partition: i32,
        _marker: TxnMarker,
    ) -> Result<GroupWrite, ResponseError> {
        Err(ResponseError::NotLeaderOrFollower)
    }
}
