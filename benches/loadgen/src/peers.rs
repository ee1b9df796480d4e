//! The peers, driven by the same closed/open-loop machinery and the same HDR recording as the
//! daemon: Redis through the `redis` crate (one multiplexed connection per `--connections`, the
//! workers of a connection pipelining on it) and etcd through `etcd-client` over the same tonic
//! channels the daemon is driven through (HTTP/2, TCP_NODELAY, one per `--connections`).
//!
//! Invariant: one `op` is the peer's counterpart of one operation of the daemon's scenario (see
//! `work` in main.rs for what each one is), on keys and values of the sizes the daemon's own
//! scenario uses; set-up (pre-loaded keys, keep-alive streams) happens before timing.

use std::time::Duration;

use etcd_client::{
    Compare, CompareOp, KvClient, LeaseClient, LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn, TxnOp,
};
use redis::aio::MultiplexedConnection;
use tonic::transport::Channel;

use crate::scenario::Scenario;

/// Bytes in each pre-loaded or written value: about an agent card or a policy on the wire.
const VALUE_BYTES: usize = 128;
/// Lease and lock time to live, as the daemon's lease scenarios ask for (600 s): nothing expires
/// during a run.
const TTL_SECONDS: i64 = 600;

pub fn value() -> Vec<u8> {
    (0..VALUE_BYTES).map(|i| b'a' + (i % 26) as u8).collect()
}

/// Which key of a space of `n` worker `id` touches at its `counter`-th operation: the same
/// spread as the daemon's scenarios.
fn slot(id: usize, counter: u64, n: usize) -> usize {
    ((id as u64 * 1_000_003 + counter * 7_919) % n.max(1) as u64) as usize
}

// ---------------------------------------------------------------- Redis

/// `n` multiplexed connections to the Redis at `target` (HOST:PORT), TCP_NODELAY as for the
/// daemon, no response timeout (a slow answer is a latency, not an error).
pub async fn redis_connect(target: &str, n: usize) -> Result<Vec<MultiplexedConnection>, String> {
    use redis::IntoConnectionInfo;
    let info = format!("redis://{target}/")
        .into_connection_info()
        .map_err(|e| format!("redis address {target}: {e}"))?
        .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
    let client = redis::Client::open(info).map_err(|e| format!("redis client: {e}"))?;
    let config = redis::AsyncConnectionConfig::new()
        .set_response_timeout(None)
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_pipeline_buffer_size(4096);
    let mut connections = Vec::with_capacity(n);
    for _ in 0..n {
        let connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| format!("connect to redis at {target}: {e}"))?;
        connections.push(connection);
    }
    Ok(connections)
}

/// Set-up: the `agents` keys GET reads (get-agent), in pipelines of 1,000 SETs.
pub async fn redis_set_up(connection: &MultiplexedConnection, scenario: Scenario, agents: usize) -> Result<(), String> {
    if scenario != Scenario::GetAgent {
        return Ok(());
    }
    let mut connection = connection.clone();
    let value = value();
    for chunk in (0..agents).collect::<Vec<_>>().chunks(1_000) {
        let mut pipe = redis::pipe();
        for i in chunk {
            pipe.cmd("SET").arg(format!("bench:agent:{i}")).arg(&value).ignore();
        }
        pipe.query_async::<()>(&mut connection)
            .await
            .map_err(|e| format!("set-up redis SET: {e}"))?;
    }
    Ok(())
}

/// One worker on a shared multiplexed connection.
pub struct RedisWorker {
    pub id: usize,
    connection: MultiplexedConnection,
    counter: u64,
    agents: usize,
    keys: usize,
    value: Vec<u8>,
}

impl RedisWorker {
    pub fn new(id: usize, connection: &MultiplexedConnection, agents: usize, keys: usize) -> Self {
        RedisWorker {
            id,
            connection: connection.clone(),
            counter: 0,
            agents: agents.max(1),
            keys: keys.max(1),
            value: value(),
        }
    }

    pub async fn op(&mut self, scenario: Scenario) -> Result<(), String> {
        self.counter += 1;
        match scenario {
            Scenario::AcquireRelease => self.lock().await,
            Scenario::GetAgent => self.get().await,
            Scenario::SetPolicy => self.set().await,
            other => Err(format!("{other:?} has no Redis counterpart")),
        }
    }

    /// SET key owner NX PX ttl, then DEL key: a lock taken and given back, on a key of its own
    /// (as the daemon's acquire-release takes a fresh task id each time).
    async fn lock(&mut self) -> Result<(), String> {
        let key = format!("bench:lock:w{}:{}", self.id, self.counter);
        let taken: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(format!("bench-agent-w{}", self.id))
            .arg("NX")
            .arg("PX")
            .arg(TTL_SECONDS * 1_000)
            .query_async(&mut self.connection)
            .await
            .map_err(|e| format!("SET NX PX: {e}"))?;
        if taken.is_none() {
            return Err(format!("SET NX PX: {key} already held"));
        }
        let deleted: i64 = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut self.connection)
            .await
            .map_err(|e| format!("DEL: {e}"))?;
        if deleted != 1 {
            return Err(format!("DEL {key}: {deleted} keys deleted"));
        }
        Ok(())
    }

    async fn get(&mut self) -> Result<(), String> {
        let key = format!("bench:agent:{}", slot(self.id, self.counter, self.agents));
        let found: Option<Vec<u8>> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut self.connection)
            .await
            .map_err(|e| format!("GET: {e}"))?;
        found.map(|_| ()).ok_or_else(|| format!("GET {key}: not found"))
    }

    async fn set(&mut self) -> Result<(), String> {
        let key = format!("bench:put:{}", slot(self.id, self.counter, self.keys));
        redis::cmd("SET")
            .arg(&key)
            .arg(&self.value)
            .query_async::<()>(&mut self.connection)
            .await
            .map_err(|e| format!("SET: {e}"))
    }
}

// ---------------------------------------------------------------- etcd

/// An etcd client over one of the channels `connect` opened (the daemon's own channel set-up).
pub async fn etcd_client(channel: &Channel) -> Result<etcd_client::Client, String> {
    etcd_client::Client::from_channel(etcd_client::Channel::Tonic(channel.clone()), None)
        .await
        .map_err(|e| format!("etcd client: {e}"))
}

/// Set-up: the `agents` keys Range reads (get-agent), in transactions of 100 puts (etcd's
/// default --max-txn-ops is 128).
pub async fn etcd_set_up(client: &etcd_client::Client, scenario: Scenario, agents: usize) -> Result<(), String> {
    if scenario != Scenario::GetAgent {
        return Ok(());
    }
    let mut kv = client.kv_client();
    let value = value();
    for chunk in (0..agents).collect::<Vec<_>>().chunks(100) {
        let puts: Vec<TxnOp> = chunk
            .iter()
            .map(|i| TxnOp::put(format!("bench/agent/{i}"), value.clone(), None))
            .collect();
        kv.txn(Txn::new().and_then(puts))
            .await
            .map_err(|e| format!("set-up etcd put: {e}"))?;
    }
    Ok(())
}

/// One worker on a shared etcd client (one HTTP/2 connection); for heartbeat it owns a lease
/// and a keep-alive stream of its own, opened here, before timing.
pub struct EtcdWorker {
    pub id: usize,
    kv: KvClient,
    lease: LeaseClient,
    keep_alive: Option<(LeaseKeeper, LeaseKeepAliveStream)>,
    counter: u64,
    agents: usize,
    keys: usize,
    value: Vec<u8>,
}

impl EtcdWorker {
    pub async fn new(
        id: usize,
        client: &etcd_client::Client,
        scenario: Scenario,
        agents: usize,
        keys: usize,
    ) -> Result<Self, String> {
        let mut lease = client.lease_client();
        let keep_alive = if matches!(scenario, Scenario::Heartbeat | Scenario::Renew | Scenario::StreamRenew) {
            let granted = lease
                .grant(TTL_SECONDS, None)
                .await
                .map_err(|e| format!("set-up etcd LeaseGrant: {e}"))?;
            Some(
                lease
                    .keep_alive(granted.id())
                    .await
                    .map_err(|e| format!("set-up etcd LeaseKeepAlive: {e}"))?,
            )
        } else {
            None
        };
        Ok(EtcdWorker {
            id,
            kv: client.kv_client(),
            lease,
            keep_alive,
            counter: 0,
            agents: agents.max(1),
            keys: keys.max(1),
            value: value(),
        })
    }

    pub async fn op(&mut self, scenario: Scenario) -> Result<(), String> {
        self.counter += 1;
        match scenario {
            Scenario::AcquireRelease => self.lock().await,
            Scenario::GetAgent => self.range().await,
            Scenario::SetPolicy => self.put().await,
            Scenario::Heartbeat | Scenario::Renew | Scenario::StreamRenew => self.keep_alive().await,
            other => Err(format!("{other:?} has no etcd counterpart")),
        }
    }

    /// A lock with a time to live of its own, as AcquireLease and SET NX PX have: LeaseGrant,
    /// Txn (put the key with the lease if it has never been created), then LeaseRevoke, which
    /// deletes the key. Three calls, each a Raft write.
    async fn lock(&mut self) -> Result<(), String> {
        let key = format!("bench/lock/w{}/{}", self.id, self.counter);
        let lease = self
            .lease
            .grant(TTL_SECONDS, None)
            .await
            .map_err(|e| format!("LeaseGrant: {e}"))?
            .id();
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                format!("bench-agent-w{}", self.id),
                Some(PutOptions::new().with_lease(lease)),
            )]);
        let taken = self.kv.txn(txn).await.map_err(|e| format!("Txn: {e}"))?;
        if !taken.succeeded() {
            return Err(format!("Txn: {key} already held"));
        }
        self.lease
            .revoke(lease)
            .await
            .map_err(|e| format!("LeaseRevoke: {e}"))?;
        Ok(())
    }

    /// Range of one key (etcd's default: a linearizable read).
    async fn range(&mut self) -> Result<(), String> {
        let key = format!("bench/agent/{}", slot(self.id, self.counter, self.agents));
        let found = self
            .kv
            .get(key.as_str(), None)
            .await
            .map_err(|e| format!("Range: {e}"))?;
        if found.kvs().len() == 1 {
            Ok(())
        } else {
            Err(format!("Range {key}: not found"))
        }
    }

    async fn put(&mut self) -> Result<(), String> {
        let key = format!("bench/put/{}", slot(self.id, self.counter, self.keys));
        self.kv
            .put(key, self.value.clone(), None)
            .await
            .map(|_| ())
            .map_err(|e| format!("Put: {e}"))
    }

    /// One LeaseKeepAlive request on the worker's stream and its answer.
    async fn keep_alive(&mut self) -> Result<(), String> {
        let (keeper, stream) = self.keep_alive.as_mut().expect("opened in set-up");
        keeper
            .keep_alive()
            .await
            .map_err(|e| format!("LeaseKeepAlive send: {e}"))?;
        match stream.message().await {
            Ok(Some(answer)) if answer.ttl() > 0 => Ok(()),
            Ok(Some(_)) => Err("LeaseKeepAlive: lease not found".into()),
            Ok(None) => Err("LeaseKeepAlive: stream closed".into()),
            Err(e) => Err(format!("LeaseKeepAlive: {e}")),
        }
    }
}
