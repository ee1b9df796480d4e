//! The end-to-end harness: starts the real `agentkeeper` binary on free ports, waits until it
//! answers a gRPC call, connects the generated clients, and kills the daemon when the test ends.
//! The daemon's stderr goes to a temp file so that every failure can show it.

#![allow(dead_code)] // each test binary uses a different part of the harness
#![allow(clippy::disallowed_methods)] // the harness waits on real time; the clock ban is for the core

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agentkeeper::proto as pb;
use pb::election_service_client::ElectionServiceClient;
use pb::entitlements_service_client::EntitlementsServiceClient;
use pb::lease_service_client::LeaseServiceClient;
use pb::registry_service_client::RegistryServiceClient;
use pb::task_service_client::TaskServiceClient;
use tonic::transport::{Channel, Endpoint};

/// How long a daemon may take to start serving.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a test waits for an event that should come.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(5);

/// A port that was free a moment ago: bind 127.0.0.1:0 and drop the listener.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral port")
        .local_addr()
        .unwrap()
        .port()
}

/// Why a daemon is not serving.
#[derive(Debug)]
enum NotServing {
    Exited(ExitStatus),
    Timeout(String),
}
use NotServing::Exited;

impl std::fmt::Display for NotServing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exited(status) => write!(f, "the daemon exited with {status} before it served"),
            NotServing::Timeout(last) => write!(f, "the daemon did not serve within {START_TIMEOUT:?} ({last})"),
        }
    }
}

/// One running `agentkeeper` process; SIGKILLed on drop if it is still running.
pub struct Daemon {
    pub port: u16,
    pub metrics_port: u16,
    child: Child,
    stderr_path: PathBuf,
}

impl Daemon {
    /// Starts a daemon with its own gRPC and HTTP ports plus `extra` flags, and waits until it
    /// answers a gRPC call. A free port can be taken between our probe and the daemon's bind (by
    /// any socket of the parallel tests), so a start that fails to listen is retried on new ports.
    pub fn start(extra: &[&str]) -> Daemon {
        Self::start_env(extra, &[])
    }

    /// Like [`Daemon::start`], with extra environment variables for the daemon.
    pub fn start_env(extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        for _ in 0..3 {
            let (port, metrics_port) = (free_port(), free_port());
            let mut args = vec![
                format!("--addr=127.0.0.1:{port}"),
                format!("--metrics-addr=127.0.0.1:{metrics_port}"),
            ];
            args.extend(extra.iter().map(|s| s.to_string()));
            let mut daemon = Daemon::spawn_env(&args, port, metrics_port, env);
            match daemon.try_wait_serving() {
                Ok(()) => return daemon,
                Err(Exited(_)) if daemon.stderr().contains("cannot listen on") => continue,
                Err(error) => panic!("{error}; stderr:\n{}", daemon.stderr()),
            }
        }
        panic!("no free ports in three attempts");
    }

    /// Starts the binary with exactly `args`, without waiting. `port` is where the test will
    /// reach gRPC, `metrics_port` HTTP (0 if none).
    pub fn spawn(args: &[String], port: u16, metrics_port: u16) -> Daemon {
        Self::spawn_env(args, port, metrics_port, &[])
    }

    /// Like [`Daemon::spawn`], with extra environment variables for the daemon.
    pub fn spawn_env(args: &[String], port: u16, metrics_port: u16, env: &[(&str, &str)]) -> Daemon {
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let stderr_path =
            std::env::temp_dir().join(format!("agentkeeper-e2e-{}-{n}-{port}.stderr", std::process::id()));
        let stderr = std::fs::File::create(&stderr_path).expect("create the stderr file");
        // The whole suite runs once per transport: AGENTKEEPER_TEST_IO=epoll|uring picks it
        // (unless a test names one itself); unset, the daemon's own default (auto) applies.
        let mut args = args.to_vec();
        if let Ok(io) = std::env::var("AGENTKEEPER_TEST_IO")
            && !args.iter().any(|a| a.starts_with("--io"))
        {
            args.push(format!("--io={io}"));
        }
        let child = Command::new(env!("CARGO_BIN_EXE_agentkeeper"))
            .args(&args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start the daemon");
        Daemon {
            port,
            metrics_port,
            child,
            stderr_path,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the daemon wrote on stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Waits until the gRPC port accepts and a cheap call (ListPolicies) succeeds; panics with the
    /// daemon's stderr after `START_TIMEOUT` or as soon as the process exits.
    pub fn wait_serving(&mut self) {
        if let Err(error) = self.try_wait_serving() {
            panic!("{error}; stderr:\n{}", self.stderr());
        }
    }

    fn try_wait_serving(&mut self) -> Result<(), NotServing> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last_error = String::from("the port never accepted");
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("poll the daemon") {
                return Err(Exited(status));
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                match probe(self.port) {
                    Ok(()) => return Ok(()),
                    Err(error) => last_error = error,
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(NotServing::Timeout(last_error))
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url())
            .unwrap()
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connect to the daemon: {e}; stderr:\n{}", self.stderr()))
    }

    /// A connection with a 16 KiB HTTP/2 window: a stream nobody polls makes the daemon feel
    /// back-pressure after a few dozen events, as a slow client would.
    pub async fn narrow_clients(&self) -> Clients {
        let endpoint = Channel::from_shared(self.url()).unwrap();
        let channel = endpoint
            .initial_stream_window_size(16 * 1024)
            .initial_connection_window_size(16 * 1024)
            .connect()
            .await
            .expect("connect to the daemon");
        Clients::over(channel)
    }

    /// The clients of every service over one fresh connection.
    pub async fn clients(&self) -> Clients {
        Clients::over(self.channel().await)
    }

    /// Sends SIGTERM without waiting.
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {} failed", self.child.id());
    }

    /// Sends SIGTERM and waits (up to `timeout`) for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.wait_exit(timeout)
    }

    /// The exit status, once the process has exited, within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the daemon") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `wait_exit` for async tests: it keeps the test's runtime (and so its client connections,
    /// which must see the daemon's GOAWAY) running while it waits.
    pub async fn exited(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the daemon") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("poll the daemon").is_none()
    }

    /// GET an HTTP path on the metrics port; returns (status line, body).
    pub fn http_get(&self, path: &str) -> (String, String) {
        http_get(self.metrics_port, path)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill(); // SIGKILL
        }
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- daemon stderr ---\n{}", self.stderr());
        }
        let _ = std::fs::remove_file(&self.stderr_path);
    }
}

/// One ListPolicies call on a runtime of its own (the caller may be inside a runtime already).
fn probe(port: u16) -> Result<(), String> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async move {
            let channel = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
                .unwrap()
                .connect_timeout(Duration::from_secs(1))
                .timeout(Duration::from_secs(2))
                .connect()
                .await
                .map_err(|e| format!("connect: {e}"))?;
            match EntitlementsServiceClient::new(channel)
                .list_policies(pb::ListPoliciesRequest::default())
                .await
            {
                Ok(_) => Ok(()),
                // With --auth-tokens the probe has no token: refused, but served.
                Err(e) if e.code() == tonic::Code::Unauthenticated => Ok(()),
                Err(e) => Err(format!("ListPolicies: {e}")),
            }
        })
    })
    .join()
    .unwrap_or_else(|_| Err("the probe panicked".into()))
}

/// A raw HTTP/1.1 GET; returns (status line, body). Panics if the port does not answer.
pub fn http_get(port: u16, path: &str) -> (String, String) {
    let (status, _, body) = http_get_full(port, path);
    (status, body)
}

/// A raw HTTP/1.1 GET; returns (status line, header lines, body).
pub fn http_get_full(port: u16, path: &str) -> (String, Vec<String>, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the HTTP port");
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read the HTTP response");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let mut lines = head.lines().map(str::to_string);
    let status = lines.next().unwrap_or_default();
    (status, lines.collect(), body.to_string())
}

/// The clients of every service, sharing one connection.
pub struct Clients {
    pub channel: Channel,
    pub registry: RegistryServiceClient<Channel>,
    pub leases: LeaseServiceClient<Channel>,
    pub elections: ElectionServiceClient<Channel>,
    pub policies: EntitlementsServiceClient<Channel>,
    pub tasks: TaskServiceClient<Channel>,
}

pub fn card(name: &str, description: &str, tools: &[&str]) -> pb::AgentCard {
    pb::AgentCard {
        name: name.into(),
        description: description.into(),
        tools: tools.iter().map(|t| t.to_string()).collect(),
        ..Default::default()
    }
}

/// ClaimTask with the call's own deadline `timeout` (sent as grpc-timeout) and wait_ms unset, as
/// a v1 client sends it: the daemon waits for a task until just before the deadline.
pub async fn claim_within(
    tasks: &mut TaskServiceClient<Channel>,
    agent_id: &str,
    timeout: Duration,
) -> Result<pb::ClaimTaskResponse, tonic::Status> {
    let mut request = tonic::Request::new(pb::ClaimTaskRequest {
        agent_id: agent_id.into(),
        wait_ms: None,
    });
    request.set_timeout(timeout);
    tasks.claim_task(request).await.map(tonic::Response::into_inner)
}

pub fn token_of(lease: &pb::Lease) -> u64 {
    lease.token.as_ref().expect("token set").value
}

impl Clients {
    fn over(channel: Channel) -> Clients {
        Clients {
            registry: RegistryServiceClient::new(channel.clone()),
            leases: LeaseServiceClient::new(channel.clone()),
            elections: ElectionServiceClient::new(channel.clone()),
            policies: EntitlementsServiceClient::new(channel.clone()),
            tasks: TaskServiceClient::new(channel.clone()),
            channel,
        }
    }

    /// Registers an agent named `name` (description "`name` agent") and returns its id.
    pub async fn register(&mut self, name: &str, tools: &[&str], ttl_seconds: u32) -> String {
        let request = pb::RegisterRequest {
            card: Some(card(name, &format!("{name} agent"), tools)),
            ttl_seconds,
        };
        self.registry
            .register(request)
            .await
            .expect("register")
            .into_inner()
            .agent_id
    }

    pub async fn agent(&mut self, agent_id: &str) -> Result<pb::AgentInfo, tonic::Status> {
        let request = pb::GetAgentRequest {
            agent_id: agent_id.into(),
        };
        Ok(self
            .registry
            .get_agent(request)
            .await?
            .into_inner()
            .agent
            .expect("agent set"))
    }

    pub async fn status(&mut self, agent_id: &str) -> pb::AgentStatus {
        pb::AgentStatus::try_from(self.agent(agent_id).await.expect("get_agent").status).unwrap()
    }

    pub async fn heartbeat(&mut self, agent_id: &str) -> Result<(), tonic::Status> {
        self.registry
            .heartbeat(pb::HeartbeatRequest {
                agent_id: agent_id.into(),
            })
            .await
            .map(|_| ())
    }

    pub async fn deregister(&mut self, agent_id: &str) -> Result<(), tonic::Status> {
        self.registry
            .deregister(pb::DeregisterRequest {
                agent_id: agent_id.into(),
            })
            .await
            .map(|_| ())
    }

    /// Find; returns the names of the agents found, in order.
    pub async fn find(&mut self, query: &str, tools: &[&str], limit: u32) -> Vec<String> {
        let request = pb::FindRequest {
            query: query.into(),
            tools: tools.iter().map(|t| t.to_string()).collect(),
            limit,
        };
        let agents = self.registry.find(request).await.expect("find").into_inner().agents;
        agents.into_iter().map(|a| a.card.expect("card set").name).collect()
    }

    pub async fn try_acquire(
        &mut self,
        task_id: &str,
        agent_id: &str,
        ttl_seconds: u32,
    ) -> Result<(pb::Lease, bool), tonic::Status> {
        let request = pb::AcquireLeaseRequest {
            task_id: task_id.into(),
            agent_id: agent_id.into(),
            ttl_seconds,
        };
        let reply = self.leases.acquire_lease(request).await?.into_inner();
        Ok((reply.lease.expect("lease set"), reply.acquired))
    }

    pub async fn acquire(&mut self, task_id: &str, agent_id: &str, ttl_seconds: u32) -> (pb::Lease, bool) {
        self.try_acquire(task_id, agent_id, ttl_seconds).await.expect("acquire")
    }

    pub async fn renew(
        &mut self,
        task_id: &str,
        agent_id: &str,
        token: u64,
        ttl_seconds: u32,
    ) -> Result<pb::Lease, tonic::Status> {
        let request = pb::RenewLeaseRequest {
            task_id: task_id.into(),
            agent_id: agent_id.into(),
            token: Some(pb::FencingToken { value: token }),
            ttl_seconds,
        };
        Ok(self
            .leases
            .renew_lease(request)
            .await?
            .into_inner()
            .lease
            .expect("lease set"))
    }

    pub async fn release(&mut self, task_id: &str, agent_id: &str, token: u64) -> Result<(), tonic::Status> {
        let request = pb::ReleaseLeaseRequest {
            task_id: task_id.into(),
            agent_id: agent_id.into(),
            token: Some(pb::FencingToken { value: token }),
        };
        self.leases.release_lease(request).await.map(|_| ())
    }

    pub async fn try_campaign(&mut self, group: &str, agent_id: &str) -> Result<pb::ElectionState, tonic::Status> {
        let request = pb::CampaignRequest {
            group: group.into(),
            agent_id: agent_id.into(),
        };
        Ok(self
            .elections
            .campaign(request)
            .await?
            .into_inner()
            .state
            .expect("state set"))
    }

    pub async fn campaign(&mut self, group: &str, agent_id: &str) -> pb::ElectionState {
        self.try_campaign(group, agent_id).await.expect("campaign")
    }

    pub async fn resign(&mut self, group: &str, agent_id: &str) -> Result<(), tonic::Status> {
        let request = pb::ResignRequest {
            group: group.into(),
            agent_id: agent_id.into(),
        };
        self.elections.resign(request).await.map(|_| ())
    }

    pub async fn watch_election(&mut self, group: &str) -> tonic::Streaming<pb::Event> {
        let request = pb::WatchElectionRequest { group: group.into() };
        self.elections
            .watch_election(request)
            .await
            .expect("watch_election")
            .into_inner()
    }

    /// Opens a watch stream. The daemon attaches the subscription before it answers, so every
    /// event of a call made after this returns reaches the stream.
    pub async fn watch(&mut self, topics: &[&str], from_sequence: u64) -> tonic::Streaming<pb::Event> {
        let request = pb::WatchRequest {
            topics: topics.iter().map(|t| t.to_string()).collect(),
            from_sequence,
        };
        self.registry.watch(request).await.expect("watch").into_inner()
    }
}

/// The next event of a stream within `timeout`, or None if none came. Panics if the stream ends.
pub async fn next_event(stream: &mut tonic::Streaming<pb::Event>, timeout: Duration) -> Option<pb::Event> {
    match tokio::time::timeout(timeout, stream.message()).await {
        Ok(Ok(Some(event))) => Some(event),
        Ok(Ok(None)) => panic!("the stream ended without an error"),
        Ok(Err(status)) => panic!("the stream ended with {status:?}"),
        Err(_) => None,
    }
}

/// The next `n` events, each within `EVENT_TIMEOUT`.
pub async fn events(stream: &mut tonic::Streaming<pb::Event>, n: usize) -> Vec<pb::Event> {
    let mut out: Vec<pb::Event> = Vec::new();
    for _ in 0..n {
        match next_event(stream, EVENT_TIMEOUT).await {
            Some(event) => out.push(event),
            None => panic!(
                "only {} of {n} events arrived: {:?}",
                out.len(),
                out.iter().map(|e| &e.topic).collect::<Vec<_>>()
            ),
        }
    }
    out
}

/// The next `n` events' topics.
pub async fn topics(stream: &mut tonic::Streaming<pb::Event>, n: usize) -> Vec<String> {
    events(stream, n).await.into_iter().map(|e| e.topic).collect()
}

/// Asserts that no event arrives within `quiet`.
pub async fn assert_quiet(stream: &mut tonic::Streaming<pb::Event>, quiet: Duration) {
    if let Some(event) = next_event(stream, quiet).await {
        panic!("unexpected event {} (sequence {})", event.topic, event.sequence_number);
    }
}

/// How a stream ends: the error status it ends with (panics if it ends cleanly or not in time).
pub async fn stream_end(
    stream: &mut tonic::Streaming<pb::Event>,
    timeout: Duration,
) -> (Vec<pb::Event>, tonic::Status) {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut delivered = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Err(_) => panic!("the stream did not end within {timeout:?}"),
            Ok(Ok(Some(event))) => delivered.push(event),
            Ok(Ok(None)) => panic!("the stream ended without an error after {} events", delivered.len()),
            Ok(Err(status)) => return (delivered, status),
        }
    }
}

pub fn decode<M: prost::Message + Default>(event: &pb::Event) -> M {
    M::decode(event.payload.as_ref().expect("payload").value.as_slice()).expect("decode the payload")
}

/// The payload's type_url.
pub fn type_url(event: &pb::Event) -> &str {
    &event.payload.as_ref().expect("payload").type_url
}

/// Whether `id` is 32 lowercase hex characters.
pub fn is_agent_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub const UNKNOWN_ID: &str = "0123456789abcdef0123456789abcdef";
