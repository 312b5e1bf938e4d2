//! How the client opens a byte stream to a broker.
//!
//! Everything above this trait is written against `AsyncRead + AsyncWrite`,
//! so the same client runs over tokio TCP ([`TokioConnector`]) and, in the
//! simulator, over turmoil's TCP with a connector of the same shape.

use std::future::Future;

use tokio::io::{AsyncRead, AsyncWrite};

/// Opens connections to `host:port` addresses.
pub trait Connector: Clone + Send + Sync + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    fn connect(&self, address: &str) -> impl Future<Output = std::io::Result<Self::Stream>> + Send;
}

/// Real TCP through tokio, with Nagle's algorithm off (requests are small
/// and latency matters more than packet count).
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioConnector;

impl Connector for TokioConnector {
    type Stream = tokio::net::TcpStream;

    fn connect(&self, address: &str) -> impl Future<Output = std::io::Result<Self::Stream>> + Send {
        let address = address.to_string();
        async move {
            let stream = tokio::net::TcpStream::connect(address).await?;
            stream.set_nodelay(true)?;
            Ok(stream)
        }
    }
}
