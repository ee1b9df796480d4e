//! The io_uring transport: each net thread runs a tokio-uring runtime and serves HTTP/2
//! (`http2`, on the h2 crate) over io_uring sockets (TCP, and the `--uds` Unix socket) handed to it by an acceptor per
//! listener, with the same tonic routes as the epoll path. `probe` decides at start-up whether
//! the kernel lets us use io_uring at all.
//!
//! Architecture invariant: nothing here touches core state or blocks a thread: calls reach the
//! core through the driver's queue, exactly as on the epoll path. A connection has at most one
//! read and one write in flight, so a slow client holds back only its own connection.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};
use std::thread;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, watch};
use tower_layer::Layer;

use super::connections::{Gate, Slot};

/// A connection on its way to its net thread, with its place under `--connections-max`.
type Handed = (Accepted, Slot);

/// An accepted connection, in blocking mode as tokio-uring takes it.
pub enum Accepted {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

/// What the acceptor listens on: the gRPC port, or the `--uds` socket.
pub enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

impl Listener {
    async fn accept(&self) -> io::Result<Accepted> {
        Ok(match self {
            Listener::Tcp(listener) => {
                let std = listener.accept().await?.0.into_std()?;
                std.set_nonblocking(false)?;
                Accepted::Tcp(std)
            }
            Listener::Unix(listener) => {
                let std = listener.accept().await?.0.into_std()?;
                std.set_nonblocking(false)?;
                Accepted::Unix(std)
            }
        })
    }
}

/// A connection's socket on its net thread.
enum Socket {
    Tcp(tokio_uring::net::TcpStream),
    Unix(tokio_uring::net::UnixStream),
}

impl Socket {
    fn from_std(accepted: Accepted) -> Socket {
        match accepted {
            Accepted::Tcp(stream) => {
                let stream = tokio_uring::net::TcpStream::from_std(stream);
                let _ = stream.set_nodelay(true);
                Socket::Tcp(stream)
            }
            Accepted::Unix(stream) => Socket::Unix(tokio_uring::net::UnixStream::from_std(stream)),
        }
    }

    async fn read(&self, buffer: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        match self {
            Socket::Tcp(stream) => stream.read(buffer).await,
            Socket::Unix(stream) => stream.read(buffer).await,
        }
    }

    async fn write_all(&self, buffer: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        match self {
            Socket::Tcp(stream) => stream.write_all(buffer).await,
            Socket::Unix(stream) => stream.write_all(buffer).await,
        }
    }

    fn shutdown(&self, how: std::net::Shutdown) -> io::Result<()> {
        match self {
            Socket::Tcp(stream) => stream.shutdown(how),
            Socket::Unix(stream) => stream.shutdown(how),
        }
    }
}

impl std::os::fd::AsRawFd for Socket {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        match self {
            Socket::Tcp(stream) => stream.as_raw_fd(),
            Socket::Unix(stream) => stream.as_raw_fd(),
        }
    }
}

/// Bytes one read may bring in: a whole small gRPC call and then some; large messages take
/// several reads.
const READ_BUFFER_BYTES: usize = 64 * 1024;
/// Submission queue entries per ring (each connection has at most two operations in flight).
const RING_ENTRIES: u32 = 1024;
/// Accepted connections waiting for their net thread at most.
const HANDOFF_QUEUE: usize = 128;
/// Set to `fail` to make the probe fail, as a kernel or seccomp profile that refuses io_uring
/// would (tests of the fallback use it).
pub const PROBE_ENV: &str = "AGENTKEEPER_IO_URING_PROBE";

/// Checks that io_uring works here: set up a ring, submit a no-op, reap its completion. Returns
/// why not, in one sentence, where it does not.
pub fn probe() -> Result<(), String> {
    if std::env::var(PROBE_ENV).is_ok_and(|v| v == "fail") {
        return Err(format!("{PROBE_ENV}=fail is set"));
    }
    let mut ring = io_uring::IoUring::new(8).map_err(|e| format!("io_uring_setup failed: {e}"))?;
    let nop = io_uring::opcode::Nop::new().build().user_data(7);
    // SAFETY: a no-op references no memory; the ring outlives the submission.
    unsafe { ring.submission().push(&nop) }.map_err(|e| format!("cannot queue a no-op: {e}"))?;
    ring.submit_and_wait(1)
        .map_err(|e| format!("io_uring_enter failed: {e}"))?;
    let completion = ring.completion().next().ok_or("no completion for the no-op")?;
    if completion.result() < 0 {
        return Err(format!(
            "the no-op failed: {}",
            io::Error::from_raw_os_error(-completion.result())
        ));
    }
    Ok(())
}

/// Starts `threads` net threads, each a tokio-uring runtime serving the connections handed to
/// it, and returns the senders to hand connections to them and a receiver that closes once every
/// thread has ended. Each thread serves until `shutdown` turns true, then lets its connections
/// finish (GOAWAY, calls in flight complete) and ends. The threads are detached, never joined,
/// so a connection that outlives the shutdown grace cannot hold up the exit.
pub fn spawn(
    threads: usize,
    grpc: super::Grpc,
    streams_per_connection_max: u32,
    shutdown: watch::Receiver<bool>,
) -> io::Result<(Vec<mpsc::Sender<Handed>>, mpsc::Receiver<()>)> {
    let (done, finished) = mpsc::channel(1);
    let mut senders = Vec::with_capacity(threads);
    for i in 0..threads {
        let (sender, connections) = mpsc::channel(HANDOFF_QUEUE);
        let grpc = grpc.clone();
        let shutdown = shutdown.clone();
        let done = done.clone();
        // Each thread sets up its ring before any connection is accepted, and says whether it
        // could (it cannot when out of descriptors or locked memory): an error, not a panic.
        let (ring_tx, ring) = std::sync::mpsc::sync_channel::<io::Result<()>>(1);
        thread::Builder::new()
            .name(format!("agentkeeper-uring-{i}"))
            .spawn(move || {
                let runtime = match tokio_uring::Runtime::new(tokio_uring::builder().entries(RING_ENTRIES)) {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = ring_tx.send(Err(error));
                        return;
                    }
                };
                let _ = ring_tx.send(Ok(()));
                runtime.block_on(serve(connections, grpc, streams_per_connection_max, shutdown));
                drop(done);
            })?;
        ring.recv()
            .unwrap_or_else(|_| Err(io::Error::other("a net thread ended before setting up its ring")))
            .map_err(|error| io::Error::new(error.kind(), format!("net thread {i}: io_uring setup: {error}")))?;
        senders.push(sender);
    }
    Ok((senders, finished))
}

/// Accepts gRPC connections (on the caller's runtime) and hands them to the net threads in turn,
/// until `shutdown` turns true. One listener without SO_REUSEPORT, rather than one per thread
/// with it: a second daemon started on the same port must fail to bind, as the contract says,
/// not silently share the port; and accepting is far off the hot path. Past `gate`'s bound a
/// connection is closed at once, unread.
pub async fn accept(
    listener: Listener,
    threads: Vec<mpsc::Sender<Handed>>,
    gate: Gate,
    mut shutdown: watch::Receiver<bool>,
) {
    let stop = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    tokio::pin!(stop);
    let mut next = 0;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(stream) => {
                    let Some(slot) = gate.enter() else { continue };
                    if threads[next].send((stream, slot)).await.is_err() {
                        return;
                    }
                    next = (next + 1) % threads.len();
                }
                Err(error) => gate.accept_failed(&error).await,
            },
            () = &mut stop => return,
        }
    }
}

async fn serve(
    mut connections: mpsc::Receiver<Handed>,
    grpc: super::Grpc,
    streams_per_connection_max: u32,
    mut shutdown: watch::Receiver<bool>,
) {
    // Unary answers come back through this thread's mailbox: see `driver::mailbox`.
    tokio_uring::spawn(crate::driver::mailbox::install());
    let service = grpc.layer.layer(grpc.routes);
    // Every connection holds a clone of `open`: `all_closed` ends when the last one has ended.
    let (open, mut all_closed) = mpsc::channel::<()>(1);
    let stop = shutdown.clone();
    loop {
        tokio::select! {
            handed = connections.recv() => {
                let Some((stream, slot)) = handed else { break };
                let io = UringIo::new(Socket::from_std(stream));
                let connection = super::http2::serve(io, service.clone(), streams_per_connection_max, stop.clone());
                let open = open.clone();
                tokio_uring::spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::debug!(%error, "connection ended with an error");
                    }
                    drop((slot, open));
                });
            }
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
    }
    drop((connections, open));
    let _ = all_closed.recv().await;
}

type ReadOp = Pin<Box<dyn Future<Output = (io::Result<usize>, Vec<u8>)>>>;
type WriteOp = Pin<Box<dyn Future<Output = (io::Result<()>, Vec<u8>)>>>;

/// tokio's poll-based `AsyncRead`/`AsyncWrite` (what h2 reads and writes through) over
/// tokio-uring's owned-buffer operations.
///
/// Each direction owns one buffer that goes to the kernel and comes back: reads land in it and
/// are copied into h2's buffer. A write first goes straight to the socket (`send` with
/// MSG_DONTWAIT): with room in the socket buffer, as almost always, that is one syscall and no
/// completion to wake the thread for (a ring write's completion cost a wake per response and
/// 0.9x the throughput at 256 streams, see BENCHMARKS.md). Only when the socket is full are the
/// bytes copied into the buffer and submitted whole (`write_all`), and `poll_write` reports them
/// written at once. Back-pressure: a second `poll_write` (or a flush) waits until the write in
/// flight completes, so h2 never queues more than one buffer per connection and a slow
/// reader stalls only its own connection. Cancellation: if the connection is dropped with an
/// operation in flight, tokio-uring keeps the buffer alive until the kernel is done with it;
/// nothing here needs to wait.
struct UringIo {
    stream: Rc<Socket>,
    /// The read buffer while idle, with unread bytes at `read_pos..`.
    read_buffer: Option<Vec<u8>>,
    read_pos: usize,
    read_op: Option<ReadOp>,
    /// The write buffer while idle; its contents are already written.
    write_buffer: Option<Vec<u8>>,
    write_op: Option<WriteOp>,
}

impl UringIo {
    fn new(stream: Socket) -> Self {
        UringIo {
            stream: Rc::new(stream),
            read_buffer: Some(Vec::with_capacity(READ_BUFFER_BYTES)),
            read_pos: 0,
            read_op: None,
            write_buffer: Some(Vec::new()),
            write_op: None,
        }
    }

    /// Polls the write in flight to its end, returning its buffer for reuse.
    fn poll_write_op(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(op) = self.write_op.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let (result, buffer) = ready!(op.as_mut().poll(cx));
        self.write_op = None;
        self.write_buffer = Some(buffer);
        Poll::Ready(result)
    }
}

impl AsyncRead for UringIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, cursor: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if let Some(buffer) = &this.read_buffer
                && this.read_pos < buffer.len()
            {
                let n = cursor.remaining().min(buffer.len() - this.read_pos);
                cursor.put_slice(&buffer[this.read_pos..this.read_pos + n]);
                this.read_pos += n;
                return Poll::Ready(Ok(()));
            }
            let op = match this.read_op.as_mut() {
                Some(op) => op,
                None => {
                    let mut buffer = this.read_buffer.take().expect("an idle read owns its buffer");
                    buffer.clear();
                    let stream = Rc::clone(&this.stream);
                    this.read_op.insert(Box::pin(async move { stream.read(buffer).await }))
                }
            };
            let (result, buffer) = ready!(op.as_mut().poll(cx));
            this.read_op = None;
            this.read_pos = 0;
            let read = buffer.len();
            this.read_buffer = Some(buffer);
            match result {
                // End of stream: report it by filling nothing.
                Ok(0) => return Poll::Ready(Ok(())),
                Ok(n) => debug_assert_eq!(n, read),
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
    }
}

impl AsyncWrite for UringIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_write_op(cx))?;
        // A socket with room takes the bytes at once: one send(2) and no completion to wake
        // for. Only a full socket buffer goes through the ring, which waits for room.
        match send_now(&this.stream, data) {
            Ok(0) => {}
            Ok(sent) => return Poll::Ready(Ok(sent)),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Poll::Ready(Err(error)),
        }
        let mut buffer = this.write_buffer.take().expect("an idle write owns its buffer");
        buffer.clear();
        buffer.extend_from_slice(data);
        let stream = Rc::clone(&this.stream);
        let mut op: WriteOp = Box::pin(async move { stream.write_all(buffer).await });
        // Submit now; a write that completes at once frees the buffer at once.
        match op.as_mut().poll(cx) {
            Poll::Ready((result, buffer)) => {
                this.write_buffer = Some(buffer);
                result?;
            }
            Poll::Pending => this.write_op = Some(op),
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_write_op(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_op(cx))?;
        match this.stream.shutdown(std::net::Shutdown::Write) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(error) if error.kind() == io::ErrorKind::NotConnected => Poll::Ready(Ok(())),
            Err(error) => Poll::Ready(Err(error)),
        }
    }
}

/// Sends what the socket takes without waiting (MSG_DONTWAIT, whatever the socket's mode);
/// MSG_NOSIGNAL: a peer gone is an error here, not a SIGPIPE.
fn send_now(stream: &Socket, data: &[u8]) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    if data.is_empty() {
        return Ok(0);
    }
    // SAFETY: the pointer and length describe `data`, borrowed for the call; the descriptor is
    // the stream's own, open while `stream` lives.
    let sent = unsafe {
        libc::send(
            stream.as_raw_fd(),
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sent as usize)
}
