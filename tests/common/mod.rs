//! The end-to-end harness: starts the real `agentkeeper` binary on free ports, connects the
//! generated gRPC clients, and stops the daemon when the test ends.

#![allow(dead_code)] // each test binary uses a different part of the harness
#![allow(clippy::disallowed_methods)] // the harness waits on real time; the clock ban is for the core

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use agentkeeper::proto as pb;
use pb::election_service_client::ElectionServiceClient;
use pb::entitlements_service_client::EntitlementsServiceClient;
use pb::lease_service_client::LeaseServiceClient;
use pb::registry_service_client::RegistryServiceClient;
use tonic::transport::Channel;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral port")
        .local_addr()
        .unwrap()
        .port()
}

pub struct Daemon {
    pub port: u16,
    pub metrics_port: u16,
    child: Child,
    stderr_path: PathBuf,
}

impl Daemon {
    /// Starts a daemon with its own gRPC and HTTP ports plus `extra` flags, and waits until it serves.
    pub fn start(extra: &[&str]) -> Daemon {
        let (port, metrics_port) = (free_port(), free_port());
        let mut args = vec![
            format!("--addr=127.0.0.1:{port}"),
            format!("--metrics-addr=127.0.0.1:{metrics_port}"),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let daemon = Daemon::spawn(&args, port, metrics_port);
        daemon.wait_serving();
        daemon
    }

    /// Starts the binary with exactly `args`, without waiting.
    pub fn spawn(args: &[String], port: u16, metrics_port: u16) -> Daemon {
        let stderr_path = std::env::temp_dir().join(format!("agentkeeper-e2e-{port}.stderr"));
        let stderr = std::fs::File::create(&stderr_path).expect("create the stderr file");
        let child = Command::new(env!("CARGO_BIN_EXE_agentkeeper"))
            .args(args)
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

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    fn wait_serving(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the daemon did not serve within 10 s; stderr:\n{}", self.stderr());
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url())
            .unwrap()
            .connect()
            .await
            .expect("connect to the daemon")
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

    pub async fn clients(&self) -> Clients {
        Clients::over(self.channel().await)
    }
}

impl Clients {
    fn over(channel: Channel) -> Clients {
        Clients {
            registry: RegistryServiceClient::new(channel.clone()),
            leases: LeaseServiceClient::new(channel.clone()),
            elections: ElectionServiceClient::new(channel.clone()),
            policies: EntitlementsServiceClient::new(channel.clone()),
            channel,
        }
    }
}

impl Daemon {
    /// Sends SIGTERM and waits (up to `timeout`) for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.wait_exit(timeout)
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("poll the daemon") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// GET an HTTP path on the metrics port; returns (status line, body).
    pub fn http_get(&self, path: &str) -> (String, String) {
        http_get(self.metrics_port, path)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.stderr_path);
    }
}

pub fn http_get(port: u16, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the HTTP port");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (head.lines().next().unwrap_or_default().to_string(), body.to_string())
}

pub struct Clients {
    pub channel: Channel,
    pub registry: RegistryServiceClient<Channel>,
    pub leases: LeaseServiceClient<Channel>,
    pub elections: ElectionServiceClient<Channel>,
    pub policies: EntitlementsServiceClient<Channel>,
}

pub fn card(name: &str, description: &str, tools: &[&str]) -> pb::AgentCard {
    pb::AgentCard {
        name: name.into(),
        description: description.into(),
        tools: tools.iter().map(|t| t.to_string()).collect(),
        ..Default::default()
    }
}

impl Clients {
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

    pub async fn acquire(&mut self, task_id: &str, agent_id: &str, ttl_seconds: u32) -> (pb::Lease, bool) {
        let request = pb::AcquireLeaseRequest {
            task_id: task_id.into(),
            agent_id: agent_id.into(),
            ttl_seconds,
        };
        let reply = self.leases.acquire_lease(request).await.expect("acquire").into_inner();
        (reply.lease.expect("lease set"), reply.acquired)
    }

    pub async fn campaign(&mut self, group: &str, agent_id: &str) -> pb::ElectionState {
        let request = pb::CampaignRequest {
            group: group.into(),
            agent_id: agent_id.into(),
        };
        self.elections
            .campaign(request)
            .await
            .expect("campaign")
            .into_inner()
            .state
            .expect("state set")
    }

    /// Opens a watch stream.
    pub async fn watch(&mut self, topics: &[&str], from_sequence: u64) -> tonic::Streaming<pb::Event> {
        let request = pb::WatchRequest {
            topics: topics.iter().map(|t| t.to_string()).collect(),
            from_sequence,
        };
        let stream = self.registry.watch(request).await.expect("watch").into_inner();
        // The subscription is attached before Watch answers; a round trip makes ordering plain.
        stream
    }
}

/// The next event of a stream within `timeout`, or None.
pub async fn next_event(stream: &mut tonic::Streaming<pb::Event>, timeout: Duration) -> Option<pb::Event> {
    match tokio::time::timeout(timeout, stream.message()).await {
        Ok(Ok(event)) => event,
        Ok(Err(status)) => panic!("stream ended with {status:?}"),
        Err(_) => None,
    }
}

/// The next `n` events' topics.
pub async fn topics(stream: &mut tonic::Streaming<pb::Event>, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        match next_event(stream, Duration::from_secs(5)).await {
            Some(event) => out.push(event.topic),
            None => panic!("only {} of {n} events arrived: {out:?}", out.len()),
        }
    }
    out
}

pub fn decode<M: prost::Message + Default>(event: &pb::Event) -> M {
    M::decode(event.payload.as_ref().expect("payload").value.as_slice()).expect("decode the payload")
}
