//! The bound on open gRPC connections (`--connections-max`), shared by both transports: a slot
//! per accepted connection, given back when the connection ends.
//!
//! Architecture invariant: counts only; a connection past the bound is closed before a byte of
//! it is read, so an idle or slow client can hold at most its own slots.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

use crate::metrics::Metrics;

/// Open connections against their bound.
#[derive(Clone)]
pub struct Gate {
    open: Arc<AtomicUsize>,
    max: usize,
    metrics: Arc<Metrics>,
}

impl Gate {
    pub fn new(max: usize, metrics: Arc<Metrics>) -> Self {
        assert!(max > 0, "at least one connection may be open");
        Gate {
            open: Arc::new(AtomicUsize::new(0)),
            max,
            metrics,
        }
    }

    /// A slot for one more connection, or None (counted as refused) when `max` are open.
    pub fn enter(&self) -> Option<Slot> {
        let entered = self.open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
            (open < self.max).then_some(open + 1)
        });
        match entered {
            Ok(open) => {
                self.metrics
                    .connections_open
                    .set(i64::try_from(open + 1).unwrap_or(i64::MAX));
                Some(Slot { gate: self.clone() })
            }
            Err(_) => {
                self.metrics.connections_refused.inc();
                None
            }
        }
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// What an acceptor does after `accept` failed. An error of the one connection (it went
    /// before it was taken) is skipped. Any other is the listener's (out of file descriptors,
    /// out of memory): logged, and waited out for `ACCEPT_BACKOFF`, or the acceptor would spin
    /// on it at full CPU until a descriptor frees up (tonic's own loop retries at once).
    pub async fn accept_failed(&self, error: &io::Error) {
        if is_per_connection(error) {
            tracing::debug!(%error, "a connection went before it was accepted");
            return;
        }
        tracing::warn!(%error, "accept failed; trying again in {} ms", ACCEPT_BACKOFF.as_millis());
        tokio::time::sleep(ACCEPT_BACKOFF).await;
    }
}

/// The connections a listener's stream accepts, each with its slot, for tonic's server (the
/// epoll path): one past the bound is closed before a byte of it is read, a failed accept is
/// waited out (`Gate::accept_failed`), and `prepare` sees each admitted stream first.
pub fn admitted<S, IO>(
    accepted: S,
    gate: Gate,
    prepare: fn(&IO),
) -> impl futures_core::Stream<Item = io::Result<Counted<IO>>>
where
    S: futures_core::Stream<Item = io::Result<IO>>,
{
    futures_util::StreamExt::filter_map(accepted, move |accepted| {
        let gate = gate.clone();
        async move {
            match accepted {
                Ok(stream) => {
                    let slot = gate.enter()?;
                    prepare(&stream);
                    Some(Ok(Counted::new(stream, slot)))
                }
                Err(error) => {
                    gate.accept_failed(&error).await;
                    None
                }
            }
        }
    })
}

/// How long an acceptor waits after its listener failed before it accepts again.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(50);

/// An error of one connection (it went before it was accepted), not of the listener.
fn is_per_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::NotConnected
    )
}

/// One open connection's place; dropping it frees the place.
pub struct Slot {
    gate: Gate,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let before = self.gate.open.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(before > 0, "a slot was freed twice");
        self.gate.metrics.connections_open.dec();
    }
}

/// A connection (TCP, or the Unix socket's) holding its slot (the epoll path), for tonic's server.
pub struct Counted<S> {
    stream: S,
    _slot: Slot,
}

impl<S> Counted<S> {
    pub fn new(stream: S, slot: Slot) -> Self {
        Counted { stream, _slot: slot }
    }
}

impl<S: Connected> Connected for Counted<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gate_refuses_past_its_bound_and_reopens_when_a_slot_is_freed() {
        let metrics = Arc::new(Metrics::new());
        let gate = Gate::new(2, Arc::clone(&metrics));
        let first = gate.enter().expect("first");
        let _second = gate.enter().expect("second");
        assert!(gate.enter().is_none(), "a third is refused");
        assert_eq!(metrics.connections_refused.get(), 1);
        assert_eq!((gate.open(), metrics.connections_open.get()), (2, 2));
        drop(first);
        assert_eq!((gate.open(), metrics.connections_open.get()), (1, 1));
        assert!(gate.enter().is_some(), "a freed slot can be had again");
    }
}
