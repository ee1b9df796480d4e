//! The end-to-end harness: starts the real `agentkeeper` binary on port 0 (the OS picks free
//! ports, so no test can take another's), learns the bound ports from the daemon's
//! `--ready-file`, connects the generated clients, and kills the daemon when the test ends. The
//! daemon's stderr goes to a file so that every failure can show it. `wait_until` is the one way
//! a test waits for something to happen.

#![allow(dead_code)] // each test binary uses a different part of the harness
#![allow(clippy::disallowed_methods)] // the harness waits on real time; the clock ban is for the core

pub mod cluster;
pub mod proxy;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use agentkeeper::proto as pb;
use pb::clock_service_client::ClockServiceClient;
use pb::election_service_client::ElectionServiceClient;
use pb::entitlements_service_client::EntitlementsServiceClient;
use pb::lease_service_client::LeaseServiceClient;
use pb::registry_service_client::RegistryServiceClient;
use pb::task_service_client::TaskServiceClient;
use tonic::transport::Channel;

/// How long a test waits for something that should happen (a daemon serving, an event, a state,
/// an exit) before it calls it a hang. Only a guard: nothing asserts that anything is fast, so a
/// loaded machine makes a test slower, never red.
pub const HANG_GUARD: Duration = Duration::from_secs(60);

/// How often a wait looks at its condition again.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Polls `check` until it gives a value and returns it. `Err` says what is still missing; if
/// `HANG_GUARD` passes first, the panic names `what` and the last such reason.
pub async fn wait_until<T>(what: &str, mut check: impl AsyncFnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(why) if Instant::now() > deadline => panic!("{what}: not within {HANG_GUARD:?}: {why}"),
            // An async sleep, so the test's runtime (its clients' connections) goes on running.
            Err(_) => tokio::time::sleep(POLL_INTERVAL).await,
        }
    }
}

/// [`wait_until`] for code outside a runtime.
pub fn wait_until_blocking<T>(what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        match check() {
            Ok(value) => return value,
            Err(why) if Instant::now() > deadline => panic!("{what}: not within {HANG_GUARD:?}: {why}"),
            Err(_) => std::thread::sleep(POLL_INTERVAL),
        }
    }
}

/// A local port that nobody listens on while the returned socket lives: the socket is bound but
/// not listening, so connections to the port are refused, and no other socket (of this process
/// or another) can bind the port meanwhile, as one could a port merely found free a moment ago.
pub fn refusing_port() -> (socket2::Socket, u16) {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("create a socket");
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind an ephemeral port");
    let port = socket
        .local_addr()
        .ok()
        .and_then(|addr| addr.as_socket())
        .expect("a bound IPv4 address")
        .port();
    (socket, port)
}

/// What a daemon wrote to its `--ready-file` once it served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ready {
    pub grpc: SocketAddr,
    pub http: Option<SocketAddr>,
    pub pid: u32,
}

impl Ready {
    /// Parses the ready file's JSON; an error names what is wrong.
    pub fn parse(text: &str) -> Result<Ready, String> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|error| format!("not JSON ({error}): {text:?}"))?;
        let addr = |field: &str| -> Result<Option<SocketAddr>, String> {
            match &value[field] {
                serde_json::Value::Null => Ok(None),
                serde_json::Value::String(addr) => addr
                    .parse()
                    .map(Some)
                    .map_err(|_| format!("{field} is not an address: {text:?}")),
                _ => Err(format!("{field} is neither an address nor null: {text:?}")),
            }
        };
        let pid = value["pid"].as_u64().ok_or_else(|| format!("no pid: {text:?}"))?;
        Ok(Ready {
            grpc: addr("grpc")?.ok_or_else(|| format!("no gRPC address: {text:?}"))?,
            http: addr("http")?,
            pid: u32::try_from(pid).map_err(|_| format!("pid out of range: {text:?}"))?,
        })
    }
}

/// The addresses the daemon's `ports bound grpc=ADDR http=ADDR` log line names (text logs).
fn bound_in_log(stderr: &str) -> Option<(SocketAddr, Option<SocketAddr>)> {
    // Whole lines only: the daemon may be writing the last one as we read.
    let line = stderr
        .split_inclusive('\n')
        .find(|line| line.ends_with('\n') && line.contains(" ports bound "))?;
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|word| word.strip_prefix(name))
            .map(str::to_string)
    };
    let grpc = field("grpc=")?.parse().ok()?;
    let http = match field("http=")?.as_str() {
        "none" => None,
        addr => Some(addr.parse().ok()?),
    };
    Some((grpc, http))
}

/// The peer address a cluster node's `ports bound ... peer=ADDR` log line names.
fn peer_bound_in_log(stderr: &str) -> Option<SocketAddr> {
    let line = stderr
        .split_inclusive('\n')
        .find(|line| line.ends_with('\n') && line.contains(" ports bound "))?;
    line.split_whitespace()
        .find_map(|word| word.strip_prefix("peer="))?
        .parse()
        .ok()
}

/// The line the daemon logs when calls were still open at the end of its shutdown grace.
const GRACE_RAN_OUT: &str = "calls still in flight after";

/// One running `agentkeeper` process; SIGKILLed on drop if it is still running.
pub struct Daemon {
    /// The gRPC port, once the daemon has served (0 before).
    pub port: u16,
    /// The HTTP port, once the daemon has served (0 before, and for a daemon without HTTP).
    pub metrics_port: u16,
    child: Child,
    /// Where the daemon writes its ready file.
    ready_path: PathBuf,
    /// Holds the stderr file and (unless the test named one) the ready file; removed with the daemon.
    files: tempfile::TempDir,
}

impl Daemon {
    /// Starts a daemon on port 0 for gRPC and HTTP plus `extra` flags, and waits until it serves.
    pub fn start(extra: &[&str]) -> Daemon {
        Self::start_env(extra, &[])
    }

    /// Like [`Daemon::start`], with extra environment variables for the daemon.
    pub fn start_env(extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut args = vec![
            "--addr=127.0.0.1:0".to_string(),
            "--metrics-addr=127.0.0.1:0".to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut daemon = Daemon::spawn_env(&args, env);
        daemon.wait_serving();
        daemon
    }

    /// Starts the binary with `args` and, unless they name one (`--ready-file=PATH`), a
    /// `--ready-file` of its own, without waiting.
    pub fn spawn(args: &[String]) -> Daemon {
        Self::spawn_env(args, &[])
    }

    /// Like [`Daemon::spawn`], with extra environment variables for the daemon.
    pub fn spawn_env(args: &[String], env: &[(&str, &str)]) -> Daemon {
        Daemon::spawn_with(args, env, None)
    }

    /// Starts the daemon with at most `files_max` open file descriptors (its hard limit: the
    /// daemon raises its soft limit only that far).
    pub fn spawn_with_files_max(args: &[String], files_max: u64) -> Daemon {
        Daemon::spawn_with(args, &[], Some(files_max))
    }

    fn spawn_with(args: &[String], env: &[(&str, &str)], files_max: Option<u64>) -> Daemon {
        let files = tempfile::Builder::new()
            .prefix("agentkeeper-e2e-")
            .tempdir()
            .expect("create the daemon's temp dir");
        let stderr = std::fs::File::create(files.path().join("stderr")).expect("create the stderr file");
        let mut args = args.to_vec();
        let named = args
            .iter()
            .find_map(|a| a.strip_prefix("--ready-file="))
            .map(PathBuf::from);
        let ready_path = named.unwrap_or_else(|| {
            let path = files.path().join("ready.json");
            args.push(format!("--ready-file={}", path.display()));
            path
        });
        // The whole suite runs once per transport: AGENTKEEPER_TEST_IO=epoll|uring picks it
        // (unless a test names one itself); unset, the daemon's own default (auto) applies.
        if let Ok(io) = std::env::var("AGENTKEEPER_TEST_IO")
            && !args.iter().any(|a| a.starts_with("--io"))
        {
            args.push(format!("--io={io}"));
        }
        // Find ranks lexically unless a test names a model: the sentence encoder's ranking (and
        // its vectors arriving after Register) is e2e_search's subject, not every test's.
        if !args.iter().any(|a| a.starts_with("--search-model")) {
            args.push("--search-model=off".into());
        }
        let mut command = Command::new(env!("CARGO_BIN_EXE_agentkeeper"));
        command
            .args(&args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        if let Some(files_max) = files_max {
            use std::os::unix::process::CommandExt;
            let limit = libc::rlimit {
                rlim_cur: files_max,
                rlim_max: files_max,
            };
            // SAFETY: between fork and exec the closure calls only setrlimit, which is
            // async-signal-safe, on a struct it owns.
            unsafe {
                command.pre_exec(move || match libc::setrlimit(libc::RLIMIT_NOFILE, &limit) {
                    0 => Ok(()),
                    _ => Err(std::io::Error::last_os_error()),
                });
            }
        }
        let child = command.spawn().expect("start the daemon");
        Daemon {
            port: 0,
            metrics_port: 0,
            child,
            ready_path,
            files,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the daemon wrote on stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.files.path().join("stderr")).unwrap_or_default()
    }

    /// Where the daemon writes its ready file.
    pub fn ready_path(&self) -> &std::path::Path {
        &self.ready_path
    }

    /// Waits until the daemon serves, i.e. its ready file appears, and takes its ports from it;
    /// panics with the daemon's stderr if it exits first.
    pub fn wait_serving(&mut self) -> Ready {
        let path = self.ready_path.clone();
        let ready = wait_until_blocking("the daemon's ready file", || {
            if let Some(status) = self.child.try_wait().expect("poll the daemon") {
                return Ok(Err(status));
            }
            match std::fs::read_to_string(&path) {
                // Written as a whole (a temp file renamed into place): what is there is complete.
                Ok(text) => Ok(Ok(Ready::parse(&text).expect("a valid ready file"))),
                Err(error) => Err(format!("{}: {error}", path.display())),
            }
        });
        let ready = ready.unwrap_or_else(|status| {
            panic!(
                "the daemon exited with {status} before it served; stderr:\n{}",
                self.stderr()
            )
        });
        assert_eq!(ready.pid, self.pid(), "the ready file is this daemon's");
        self.port = ready.grpc.port();
        self.metrics_port = ready.http.map_or(0, |addr| addr.port());
        ready
    }

    /// Waits until the daemon logs the ports it bound (before any recovery, while it does not
    /// serve yet) and takes them; panics with its stderr if it exits first.
    pub fn wait_bound(&mut self) -> (SocketAddr, Option<SocketAddr>) {
        let (grpc, http) = wait_until_blocking("the daemon's `ports bound` line", || {
            if let Some(bound) = bound_in_log(&self.stderr()) {
                return Ok(bound);
            }
            match self.child.try_wait().expect("poll the daemon") {
                Some(status) => panic!("the daemon exited with {status}; stderr:\n{}", self.stderr()),
                None => Err("not logged yet".to_string()),
            }
        });
        self.port = grpc.port();
        self.metrics_port = http.map_or(0, |addr| addr.port());
        (grpc, http)
    }

    /// Waits until a cluster node logs the ports it bound and returns its peer address (with
    /// `--peer-addr=HOST:0`, the port the OS gave it); panics with its stderr if it exits first.
    pub fn wait_peer_bound(&mut self) -> SocketAddr {
        wait_until_blocking("the node's `ports bound ... peer=` line", || {
            if let Some(peer) = peer_bound_in_log(&self.stderr()) {
                return Ok(peer);
            }
            match self.child.try_wait().expect("poll the daemon") {
                Some(status) => panic!("the daemon exited with {status}; stderr:\n{}", self.stderr()),
                None => Err("not logged yet".to_string()),
            }
        })
    }

    pub fn url(&self) -> String {
        assert_ne!(self.port, 0, "the daemon has not served yet (wait_serving)");
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

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.sigterm();
        self.wait_exit()
    }

    /// SIGKILL (a crash), and the exit status.
    pub fn kill_9(&mut self) -> ExitStatus {
        self.child.kill().expect("SIGKILL the daemon");
        self.wait_exit()
    }

    /// The exit status, once the process has exited.
    pub fn wait_exit(&mut self) -> ExitStatus {
        wait_until_blocking("the daemon's exit", || {
            self.child
                .try_wait()
                .expect("poll the daemon")
                .ok_or_else(|| "still running".to_string())
        })
    }

    /// `wait_exit` for async tests: it keeps the test's runtime (and so its client connections,
    /// which must see the daemon's GOAWAY) running while it waits.
    pub async fn exited(&mut self) -> ExitStatus {
        wait_until("the daemon's exit", async || {
            self.child
                .try_wait()
                .expect("poll the daemon")
                .ok_or_else(|| "still running".to_string())
        })
        .await
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("poll the daemon").is_none()
    }

    /// Whether the shutdown had to cut calls off at the end of its grace, rather than seeing
    /// them all finish: what a shutdown held up by a call, a stream or a connection looks like.
    pub fn shutdown_ran_out_of_grace(&self) -> bool {
        self.stderr().contains(GRACE_RAN_OUT)
    }

    /// GET an HTTP path on the metrics port; returns (status line, body).
    pub fn http_get(&self, path: &str) -> (String, String) {
        assert_ne!(
            self.metrics_port, 0,
            "this daemon serves no HTTP (or has not served yet)"
        );
        http_get(self.metrics_port, path)
    }

    /// The value of one sample on /metrics, named as the text format writes it: `name` or
    /// `name{label="value",...}` with the labels in the order they are written; None if absent.
    pub fn metric(&self, sample: &str) -> Option<f64> {
        let (status, metrics) = self.http_get("/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK", "{metrics}");
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
    }

    /// Waits until /metrics shows `sample` (as [`Daemon::metric`] names it) at `want`; gauges
    /// are published after each batch, so they may trail a reply briefly.
    pub async fn wait_metric(&self, sample: &str, want: f64) {
        wait_until(&format!("{sample} = {want}"), async || match self.metric(sample) {
            Some(value) if value == want => Ok(()),
            value => Err(format!("{sample} is {value:?}")),
        })
        .await
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
    }
}

/// A raw HTTP/1.1 GET; returns (status line, body). Panics if the port does not answer.
pub fn http_get(port: u16, path: &str) -> (String, String) {
    let (status, _, body) = http_get_full(port, path);
    (status, body)
}

/// A raw HTTP/1.1 GET; returns (status line, header lines, body).
pub fn http_get_full(port: u16, path: &str) -> (String, Vec<String>, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the HTTP port");
    stream.set_read_timeout(Some(HANG_GUARD)).unwrap();
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
    pub clock: ClockServiceClient<Channel>,
}

/// A SetPolicy request for an ALLOW policy `id` (`agent:*` may `call` `tool:*`): the write the
/// durability tests count.
pub fn allow_policy(id: &str) -> pb::SetPolicyRequest {
    let policy = pb::Policy {
        id: id.into(),
        subject: "agent:*".into(),
        action: "call".into(),
        resource: "tool:*".into(),
        effect: pb::PolicyEffect::Allow as i32,
    };
    pb::SetPolicyRequest { policy: Some(policy) }
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

/// A timestamp in milliseconds since the Unix epoch (the daemon's clock); panics if unset.
pub fn ms(timestamp: &Option<prost_types::Timestamp>) -> i64 {
    let t = timestamp.as_ref().expect("timestamp set");
    t.seconds * 1000 + i64::from(t.nanos) / 1_000_000
}

pub fn token_of(lease: &pb::Lease) -> u64 {
    lease.token.as_ref().expect("token set").value
}

impl Clients {
    pub fn over(channel: Channel) -> Clients {
        Clients {
            registry: RegistryServiceClient::new(channel.clone()),
            leases: LeaseServiceClient::new(channel.clone()),
            elections: ElectionServiceClient::new(channel.clone()),
            policies: EntitlementsServiceClient::new(channel.clone()),
            tasks: TaskServiceClient::new(channel.clone()),
            clock: ClockServiceClient::new(channel.clone()),
            channel,
        }
    }

    /// ClockService.Advance on a `--clock manual` daemon; returns the new time in ms.
    pub async fn advance(&mut self, by: Duration) -> i64 {
        let request = pb::AdvanceRequest {
            duration: Some(prost_types::Duration {
                seconds: i64::try_from(by.as_secs()).expect("a short advance"),
                nanos: i32::try_from(by.subsec_nanos()).expect("below a second"),
            }),
        };
        let now = self.clock.advance(request).await.expect("advance").into_inner().now;
        ms(&now)
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

/// The next `n` events (each awaited up to `HANG_GUARD`).
pub async fn events(stream: &mut tonic::Streaming<pb::Event>, n: usize) -> Vec<pb::Event> {
    let mut out: Vec<pb::Event> = Vec::new();
    for _ in 0..n {
        match next_event(stream, HANG_GUARD).await {
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

/// Asserts that no event arrives within `quiet`. Real time has to pass to show that nothing
/// happens; a loaded machine can only make this miss a stray event, never fail a correct daemon.
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

/// The sentence encoder `make models` installs under `models/` (None: the test skips, saying
/// so; scripts/test.sh installs it, so CI never skips).
pub fn installed_model() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models");
    if dir.join("all-minilm-l6-v2/model.safetensors").is_file() {
        return Some(dir);
    }
    eprintln!(
        "SKIPPED: no model in {} (run `make models`; scripts/test.sh does)",
        dir.display()
    );
    None
}
