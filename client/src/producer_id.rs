//! Producer ids and epochs: the InitProducerId request both producers
//! send, and the check of its answer.
//!
//! The idempotent [`Producer`](crate::Producer) asks any broker, without a
//! transactional id, before its first batch (and again if its epoch runs
//! out); the [`TransactionalProducer`](crate::TransactionalProducer) asks
//! its transaction coordinator, with its transactional id, and may name its
//! current id and epoch to have the epoch bumped (KIP-360).

use kafka_protocol::messages::{
    InitProducerIdRequest, InitProducerIdResponse, ProducerId, TransactionalId,
};
use kafka_protocol::ResponseError;

use crate::error::{Error, Result};

/// A producer id and one of its epochs: what a batch's sequence numbers
/// belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ProducerEpoch {
    pub producer_id: i64,
    pub epoch: i16,
}

/// The transaction timeout an idempotent producer sends, as Java's does:
/// without a transactional id the broker ignores it.
pub const IDEMPOTENT_TRANSACTION_TIMEOUT_MS: i32 = i32::MAX;

/// InitProducerId for `transactional_id` (`None`: an idempotent producer).
/// `current` names the id and epoch to bump; below version 3 the request
/// cannot carry them, and one that does fails to encode.
pub fn init_producer_id_request(
    transactional_id: Option<TransactionalId>,
    transaction_timeout_ms: i32,
    current: Option<ProducerEpoch>,
) -> InitProducerIdRequest {
    let (producer_id, epoch) = current.map_or((-1, -1), |c| (c.producer_id, c.epoch));
    InitProducerIdRequest::default()
        .with_transactional_id(transactional_id)
        .with_transaction_timeout_ms(transaction_timeout_ms)
        .with_producer_id(ProducerId(producer_id))
        .with_producer_epoch(epoch)
}

/// The id and epoch an InitProducerId answer grants, or its error; an
/// answer without an error must carry a real id and epoch.
pub fn granted(response: &InitProducerIdResponse, address: &str) -> Result<ProducerEpoch> {
    if let Some(error) = ResponseError::try_from_code(response.error_code) {
        return Err(Error::broker(error, "initialize the producer id"));
    }
    if response.producer_id.0 < 0 || response.producer_epoch < 0 {
        return Err(Error::Protocol {
            address: address.to_string(),
            detail: format!(
                "InitProducerId answered producer id {} epoch {}",
                response.producer_id.0, response.producer_epoch
            ),
        });
    }
    Ok(ProducerEpoch {
        producer_id: response.producer_id.0,
        epoch: response.producer_epoch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_grants_an_id_only_without_an_error_and_with_real_values() {
        let answer = |code: i16, id: i64, epoch: i16| {
            InitProducerIdResponse::default()
                .with_error_code(code)
                .with_producer_id(ProducerId(id))
                .with_producer_epoch(epoch)
        };
        let granted_id = granted(&answer(0, 7, 2), "b").unwrap();
        assert_eq!(
            granted_id,
            ProducerEpoch {
                producer_id: 7,
                epoch: 2
            }
        );
        let refused = granted(&answer(ResponseError::NotCoordinator.code(), 7, 2), "b");
        assert_eq!(
            refused.unwrap_err().response_error(),
            Some(ResponseError::NotCoordinator)
        );
        assert!(matches!(
            granted(&answer(0, -1, -1), "b"),
            Err(Error::Protocol { .. })
        ));
    }

    #[test]
    fn a_request_names_the_current_id_only_for_a_bump() {
        let fresh = init_producer_id_request(None, IDEMPOTENT_TRANSACTION_TIMEOUT_MS, None);
        assert_eq!((fresh.producer_id.0, fresh.producer_epoch), (-1, -1));
        assert!(fresh.transactional_id.is_none());
        let current = ProducerEpoch {
            producer_id: 9,
            epoch: 4,
        };
        let bump = init_producer_id_request(None, 1_000, Some(current));
        assert_eq!((bump.producer_id.0, bump.producer_epoch), (9, 4));
        assert_eq!(bump.transaction_timeout_ms, 1_000);
    }
}
