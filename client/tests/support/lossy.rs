//! A TCP connector that loses answers, for the producers' tests: it
//! watches the requests a connection writes and, for the Produce requests
//! it is told to, cuts the connection when their answer arrives, after the
//! broker has handled them and before the client reads the answer.

use std::collections::BTreeSet;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::ApiKey;
use sluice_client::{Client, ClientConfig, Connector};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// What the lossy connections are told to do, and what they saw.
#[derive(Debug, Default)]
struct LossPlan {
    /// Produce requests to let through before losing answers.
    produce_to_pass: usize,
    /// Produce answers to lose after those.
    produce_answers_to_lose: usize,
    /// Produce answers lost so far.
    lost: usize,
    /// Produce requests written and not yet answered, now and at most.
    produce_outstanding: usize,
    produce_outstanding_max: usize,
}

#[derive(Clone, Default)]
pub struct LossyConnector {
    plan: Arc<Mutex<LossPlan>>,
}

impl LossyConnector {
    /// A client over a new lossy connector, and the connector.
    pub fn client(config: ClientConfig) -> (Client<LossyConnector>, LossyConnector) {
        let connector = LossyConnector::default();
        let client = Client::new(connector.clone(), config).expect("valid config");
        (client, connector)
    }

    /// Lets `pass` Produce requests through, then loses the answers of
    /// the next `lose`.
    pub fn lose_produce_answers(&self, pass: usize, lose: usize) {
        let mut plan = self.plan.lock().unwrap();
        plan.produce_to_pass = pass;
        plan.produce_answers_to_lose = lose;
    }

    /// Produce answers lost so far.
    pub fn lost(&self) -> usize {
        self.plan.lock().unwrap().lost
    }

    /// Most Produce requests that were in flight at once.
    pub fn produce_outstanding_max(&self) -> usize {
        self.plan.lock().unwrap().produce_outstanding_max
    }
}

impl Connector for LossyConnector {
    type Stream = LossyStream;

    fn connect(
        &self,
        address: &str,
    ) -> impl std::future::Future<Output = io::Result<LossyStream>> + Send {
        let address = address.to_string();
        let plan = self.plan.clone();
        async move {
            let inner = TcpStream::connect(address).await?;
            inner.set_nodelay(true)?;
            Ok(LossyStream {
                inner,
                plan,
                written: BytesMut::new(),
                read: BytesMut::new(),
                readable: BytesMut::new(),
                produce: BTreeSet::new(),
                doomed: BTreeSet::new(),
                cut: false,
            })
        }
    }
}

/// A TCP stream that reads the frames going both ways: Kafka frames are a
/// 4-byte length, then (requests) api key, version and correlation id, or
/// (answers) the correlation id.
pub struct LossyStream {
    inner: TcpStream,
    plan: Arc<Mutex<LossPlan>>,
    /// Bytes written, not yet a whole request frame.
    written: BytesMut,
    /// Bytes read from the socket, not yet a whole answer frame.
    read: BytesMut,
    /// Whole answer frames the client may read.
    readable: BytesMut,
    /// Correlation ids of the Produce requests sent and not yet answered.
    produce: BTreeSet<i32>,
    /// Correlation ids whose answer cuts the connection.
    doomed: BTreeSet<i32>,
    cut: bool,
}

/// The first whole frame of `buffer`, taken out of it.
fn whole_frame(buffer: &mut BytesMut) -> Option<Bytes> {
    if buffer.len() < 4 {
        return None;
    }
    let length = i32::from_be_bytes(buffer[..4].try_into().unwrap()) as usize;
    if buffer.len() < 4 + length {
        return None;
    }
    Some(buffer.split_to(4 + length).freeze())
}

impl LossyStream {
    fn requests_written(&mut self, bytes: &[u8]) {
        self.written.extend_from_slice(bytes);
        while let Some(frame) = whole_frame(&mut self.written) {
            let mut header = &frame[4..];
            let api_key = header.get_i16();
            let _version = header.get_i16();
            let correlation_id = header.get_i32();
            if api_key != ApiKey::Produce as i16 {
                continue;
            }
            let mut plan = self.plan.lock().unwrap();
            self.produce.insert(correlation_id);
            plan.produce_outstanding += 1;
            plan.produce_outstanding_max =
                plan.produce_outstanding_max.max(plan.produce_outstanding);
            if plan.produce_to_pass > 0 {
                plan.produce_to_pass -= 1;
            } else if plan.produce_answers_to_lose > 0 {
                plan.produce_answers_to_lose -= 1;
                self.doomed.insert(correlation_id);
            }
        }
    }

    /// Moves whole answers to `readable`; false once a doomed one came.
    fn answers_read(&mut self) -> bool {
        while let Some(frame) = whole_frame(&mut self.read) {
            let correlation_id = i32::from_be_bytes(frame[4..8].try_into().unwrap());
            if self.produce.remove(&correlation_id) {
                self.plan.lock().unwrap().produce_outstanding -= 1;
            }
            if self.doomed.remove(&correlation_id) {
                let mut plan = self.plan.lock().unwrap();
                plan.lost += 1;
                plan.produce_outstanding -= self.produce.len();
                return false;
            }
            self.readable.extend_from_slice(&frame);
        }
        true
    }
}

impl AsyncRead for LossyStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.cut {
                return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
            }
            if !this.readable.is_empty() {
                let n = this.readable.len().min(buf.remaining());
                buf.put_slice(&this.readable.split_to(n));
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut chunk_buf = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut chunk_buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Ready(Ok(())) if chunk_buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => {
                    this.read.extend_from_slice(chunk_buf.filled());
                    this.cut = !this.answers_read();
                }
            }
        }
    }
}

impl AsyncWrite for LossyStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.cut {
            return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
        }
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written {
            this.requests_written(&buf[..n]);
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
