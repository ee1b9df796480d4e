//! Background readers that run beside the measured workers, to see what big reads cost everyone
//! else: a client paging through every lease with ListLeases, over and over, and a dashboard
//! polling `/api/overview` on the HTTP port. Each records its own latencies; neither counts
//! toward the measured operations.
//!
//! Invariant: a reader stops when told and reports what it saw; it never retries a failure in a
//! tight loop (a failed call is counted and the reader goes on at its own pace).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use agentkeeper::proto as pb;
use hdrhistogram::Histogram;
use pb::lease_service_client::LeaseServiceClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// What one background reader saw.
pub struct Seen {
    pub name: &'static str,
    pub latency: Histogram<u64>,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Full passes through the list (the lease pager), or answers' bytes in all (the poller).
    pub passes: u64,
    pub bytes: u64,
}

impl Seen {
    fn new(name: &'static str) -> Seen {
        Seen {
            name,
            latency: super::histogram(),
            errors: 0,
            first_error: None,
            passes: 0,
            bytes: 0,
        }
    }

    fn failed(&mut self, error: String) {
        self.errors += 1;
        self.first_error.get_or_insert(error);
    }
}

/// The readers of one run; `stop` ends them and collects what they saw.
pub struct Readers {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<Seen>>,
}

impl Readers {
    pub fn new() -> Readers {
        Readers {
            stop: Arc::new(AtomicBool::new(false)),
            tasks: Vec::new(),
        }
    }

    /// Pages through every lease (`page_size` a page) with ListLeases, again and again: a page
    /// as soon as the last one is in, or one every `every`.
    pub fn page_leases(&mut self, channel: Channel, page_size: u32, every: Option<Duration>) {
        let stop = Arc::clone(&self.stop);
        self.tasks.push(tokio::spawn(async move {
            let mut seen = Seen::new("ListLeases pager");
            let mut client = LeaseServiceClient::new(channel);
            let mut page_token = String::new();
            let mut tick = every.map(|every| {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick
            });
            while !stop.load(Ordering::Relaxed) {
                if let Some(tick) = &mut tick {
                    tick.tick().await;
                }
                let request = pb::ListLeasesRequest {
                    prefix: String::new(),
                    page_size,
                    page_token: std::mem::take(&mut page_token),
                };
                let sent = Instant::now();
                match client.list_leases(request).await {
                    Ok(page) => {
                        seen.latency.saturating_record(sent.elapsed().as_micros() as u64);
                        page_token = page.into_inner().next_page_token;
                        if page_token.is_empty() {
                            seen.passes += 1;
                        }
                    }
                    Err(status) => {
                        seen.failed(format!("{:?}: {}", status.code(), status.message()));
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            seen
        }));
    }

    /// GETs `http://<address>/api/overview` every `every`, as the dashboard's page does on a
    /// (re)connect.
    pub fn poll_overview(&mut self, address: String, every: Duration) {
        let stop = Arc::clone(&self.stop);
        self.tasks.push(tokio::spawn(async move {
            let mut seen = Seen::new("dashboard /api/overview");
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let sent = Instant::now();
                match http_get(&address, "/api/overview").await {
                    Ok(body) => {
                        seen.latency.saturating_record(sent.elapsed().as_micros() as u64);
                        seen.bytes += body.len() as u64;
                        seen.passes += 1;
                    }
                    Err(error) => seen.failed(error),
                }
            }
            seen
        }));
    }

    pub async fn stop(self) -> Vec<Seen> {
        self.stop.store(true, Ordering::Relaxed);
        let mut seen = Vec::with_capacity(self.tasks.len());
        for task in self.tasks {
            seen.push(task.await.expect("a background reader"));
        }
        seen
    }
}

/// One HTTP/1.0 GET (so the answer is never chunked and the server closes the connection when
/// it is done); the body when the answer is 200 OK.
pub async fn http_get(address: &str, path: &str) -> Result<Vec<u8>, String> {
    let mut stream = TcpStream::connect(address)
        .await
        .map_err(|e| format!("connect {address}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("GET {path}: {e}"))?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .await
        .map_err(|e| format!("GET {path}: {e}"))?;
    let head_end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("GET {path}: no HTTP head in {} bytes", answer.len()))?;
    let status = String::from_utf8_lossy(&answer[..answer.len().min(12)]).to_string();
    if !(status.starts_with("HTTP/1.") && status.get(8..).is_some_and(|s| s.starts_with(" 200"))) {
        return Err(format!("GET {path}: {status}"));
    }
    Ok(answer.split_off(head_end + 4))
}
