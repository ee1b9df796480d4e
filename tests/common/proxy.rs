//! A TCP proxy in the test process between a cluster's nodes, that can cut any directed link:
//! the nodes are told the proxy's addresses (one listener per node, ports from the OS), and it
//! forwards each connection to the real peer port of the node it stands for. A node's sender
//! opens its own connections to each peer and sends only on them, so the connections to one
//! listener from one node are exactly one directed link; which node opened a connection is read
//! from the kernel (the socket's inode in /proc/net/tcp, among the node processes' open files).
//! Cutting a link closes its live connections; a connection opened while it is cut is held
//! open and carries nothing, as a network that drops every packet would (closing it at once
//! would only have its sender dial again and again), until the link heals and it is closed.
//!
//! Architecture invariant: the proxy reads no byte of what it carries and never delays it; a
//! connection it cannot attribute to a node is closed (its sender reconnects), never forwarded.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy knows and decides, shared by its tasks and the test.
#[derive(Default)]
struct Links {
    /// Node id to its real peer address (None while it has not bound one yet).
    targets: BTreeMap<u64, SocketAddr>,
    /// Node process id to node id.
    pids: BTreeMap<u32, u64>,
    /// Cut directed links, (from, to).
    cut: BTreeSet<(u64, u64)>,
    /// Connections forwarded per directed link, and those closed or held back because it
    /// was cut.
    forwarded: BTreeMap<(u64, u64), u64>,
    refused: BTreeMap<(u64, u64), u64>,
    /// Connections open now per directed link.
    live: BTreeMap<(u64, u64), u64>,
}

pub struct PeerProxy {
    /// The address the nodes are told for node `i + 1`.
    pub addrs: Vec<SocketAddr>,
    links: Arc<Mutex<Links>>,
    /// Bumped on every cut: each connection looks whether its link is still up.
    cuts: watch::Sender<u64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PeerProxy {
    /// Listens for `size` nodes, on ports from the OS, on a thread of its own.
    pub fn start(size: u64) -> PeerProxy {
        let listeners: Vec<std::net::TcpListener> = (0..size)
            .map(|_| {
                let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a proxy port");
                listener.set_nonblocking(true).expect("a non-blocking listener");
                listener
            })
            .collect();
        let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().expect("bound")).collect();
        let links = Arc::new(Mutex::new(Links::default()));
        let (cuts, _) = watch::channel(0u64);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (shared, watcher) = (Arc::clone(&links), cuts.clone());
        let thread = std::thread::Builder::new()
            .name("peer-proxy".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("the proxy's runtime");
                runtime.block_on(async move {
                    for (i, listener) in listeners.into_iter().enumerate() {
                        let listener = TcpListener::from_std(listener).expect("a tokio listener");
                        tokio::spawn(accept(listener, i as u64 + 1, Arc::clone(&shared), watcher.clone()));
                    }
                    let _ = stopped.await;
                });
            })
            .expect("start the proxy's thread");
        PeerProxy {
            addrs,
            links,
            cuts,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn links(&self) -> std::sync::MutexGuard<'_, Links> {
        self.links.lock().expect("the proxy's state")
    }

    /// Node `id` runs as process `pid` (again, after a restart: its old pid is forgotten).
    pub fn node_started(&self, id: u64, pid: u32) {
        let mut links = self.links();
        links.pids.retain(|_, node| *node != id);
        links.pids.insert(pid, id);
    }

    /// Node `id`'s real peer port, where the proxy forwards what is sent to it.
    pub fn node_listens(&self, id: u64, addr: SocketAddr) {
        self.links().targets.insert(id, addr);
    }

    /// Cuts node `id` off from every other node, both ways; returns once every connection of
    /// those links is closed (what the proxy had carried is delivered, nothing more will be).
    pub fn isolate(&self, id: u64) {
        let others: Vec<u64> = (1..=self.addrs.len() as u64).filter(|n| *n != id).collect();
        let mut links = self.links();
        for other in others {
            links.cut.insert((id, other));
            links.cut.insert((other, id));
        }
        drop(links);
        self.cuts.send_modify(|generation| *generation += 1);
        super::wait_until_blocking("the cut links' connections close", || {
            let links = self.links();
            let open: u64 = (links.cut.iter())
                .map(|link| links.live.get(link).copied().unwrap_or(0))
                .sum();
            match open {
                0 => Ok(()),
                open => Err(format!("{open} still open")),
            }
        });
    }

    /// Every link carries traffic again (on new connections: those held back are closed).
    pub fn heal(&self) {
        self.links().cut.clear();
        self.cuts.send_modify(|generation| *generation += 1);
    }

    /// Connections forwarded from node `from` to node `to` so far.
    pub fn forwarded(&self, from: u64, to: u64) -> u64 {
        self.links().forwarded.get(&(from, to)).copied().unwrap_or(0)
    }

    /// Connections from `from` to `to` closed or held back because the link was cut.
    pub fn refused(&self, from: u64, to: u64) -> u64 {
        self.links().refused.get(&(from, to)).copied().unwrap_or(0)
    }
}

impl Drop for PeerProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept(listener: TcpListener, to: u64, links: Arc<Mutex<Links>>, cuts: watch::Sender<u64>) {
    let listening = listener.local_addr().expect("bound");
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        // Subscribed before the link is looked at: a cut from now on is seen.
        let watching = cuts.subscribe();
        tokio::spawn(forward(Arc::clone(&links), watching, to, listening, stream, peer));
    }
}

/// Carries one connection to node `to`, until either side closes it or its link is cut.
async fn forward(
    links: Arc<Mutex<Links>>,
    mut cuts: watch::Receiver<u64>,
    to: u64,
    listening: SocketAddr,
    mut stream: TcpStream,
    peer: SocketAddr,
) {
    let pids = links.lock().expect("the proxy's state").pids.clone();
    let Some(from) = sender_of(peer, listening, &pids) else {
        return;
    };
    let is_cut = |links: &Mutex<Links>| {
        let mut links = links.lock().expect("the proxy's state");
        let cut = links.cut.contains(&(from, to));
        if cut {
            *links.refused.entry((from, to)).or_default() += 1;
        }
        cut
    };
    if is_cut(&links) {
        // Held, unread, until the link heals; then closed, and its sender dials again.
        while cuts.changed().await.is_ok() && links.lock().expect("the proxy's state").cut.contains(&(from, to)) {}
        return;
    }
    let Some(target) = links.lock().expect("the proxy's state").targets.get(&to).copied() else {
        return;
    };
    let Ok(mut upstream) = TcpStream::connect(target).await else {
        return;
    };
    let _ = (stream.set_nodelay(true), upstream.set_nodelay(true));
    let _open = Open::new(&links, (from, to));
    let cut = async {
        loop {
            if cuts.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
            if is_cut(&links) {
                return;
            }
        }
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut stream, &mut upstream) => {}
        _ = cut => {}
    }
    // Closed before the connection stops counting as open.
    drop((stream, upstream));
}

/// Counts a connection as forwarded and open while it lives.
struct Open<'l> {
    links: &'l Mutex<Links>,
    link: (u64, u64),
}

impl<'l> Open<'l> {
    fn new(links: &'l Mutex<Links>, link: (u64, u64)) -> Open<'l> {
        let mut state = links.lock().expect("the proxy's state");
        *state.forwarded.entry(link).or_default() += 1;
        *state.live.entry(link).or_default() += 1;
        Open { links, link }
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        let mut state = self.links.lock().expect("the proxy's state");
        *state.live.entry(self.link).or_default() -= 1;
    }
}

/// The node whose process opened the connection that comes from `peer` to `listening`.
fn sender_of(peer: SocketAddr, listening: SocketAddr, pids: &BTreeMap<u32, u64>) -> Option<u64> {
    let sockets = procfs::net::tcp().ok()?;
    let inode = sockets
        .iter()
        .find(|socket| socket.local_address == peer && socket.remote_address == listening)?
        .inode;
    let owns = |pid: u32| {
        let Ok(process) = procfs::process::Process::new(pid as i32) else {
            return false;
        };
        let Ok(fds) = process.fd() else {
            return false;
        };
        fds.flatten()
            .any(|fd| matches!(fd.target, procfs::process::FDTarget::Socket(socket) if socket == inode))
    };
    pids.iter().find(|(pid, _)| owns(**pid)).map(|(_, node)| *node)
}
