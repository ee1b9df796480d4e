//! Who may call what (`--auth-tokens FILE`): bearer tokens, each with a role, checked on every
//! call before it reaches a service (`admit`, called by `calls::CallLayer`); the services then
//! bind agents to the agent token that registered them. Without the flag nothing here runs and
//! the daemon behaves as v1.
//!
//! Architecture invariant: a token's value never leaves this module, not in a log, a metric or
//! an error message (a caller is known by its token's line number); tokens are compared in
//! constant time.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use tonic::Status;

use crate::core::types::TokenId;

/// What a token may do. Admin may do everything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Policies, the manual clock, and everything else.
    Admin,
    /// Find, leases, elections, tasks, watch, and what an agent and a reader may do.
    Orchestrator,
    /// Its own registration, heartbeats and leases, and what a reader may do.
    Agent,
    /// Reads: GetAgent, ListPolicies, CheckPolicy, GetTask, ListTasks, Now, reflection.
    Reader,
}

impl Role {
    fn parse(text: &str) -> Option<Role> {
        match text {
            "admin" => Some(Role::Admin),
            "orchestrator" => Some(Role::Orchestrator),
            "agent" => Some(Role::Agent),
            "reader" => Some(Role::Reader),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Orchestrator => "orchestrator",
            Role::Agent => "agent",
            Role::Reader => "reader",
        }
    }
}

/// The caller of one call, as the auth layer found it (in the request's extensions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The token's line in the file: how logs know it, never by its value.
    pub token_line: usize,
    pub role: Role,
    /// How the core knows the token (a digest, never the value): agents registered with an
    /// agent token are bound to it, across edits of the file and restarts.
    pub token_id: TokenId,
}

/// The tokens of `--auth-tokens`.
pub struct Tokens {
    entries: Vec<Entry>,
}

struct Entry {
    token: Vec<u8>,
    role: Role,
    line: usize,
    id: TokenId,
}

/// The core's name for a token: the first 16 bytes of its SHA-256. A token is at least
/// `TOKEN_BYTES_MIN` bytes of the operator's secret, so the digest stands for it without
/// revealing it, in memory, in the log and in snapshots.
fn token_id(token: &[u8]) -> TokenId {
    let digest = ring::digest::digest(&ring::digest::SHA256, token);
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest.as_ref()[..16]);
    TokenId(id)
}

/// Tokens shorter than this are refused: a guessable token is no authentication.
const TOKEN_BYTES_MIN: usize = 16;

impl Tokens {
    pub fn load(path: &std::path::Path) -> Result<Tokens, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("--auth-tokens {}: {e}", path.display()))?;
        Tokens::parse(&text).map_err(|e| format!("--auth-tokens {}: {e}", path.display()))
    }

    /// One token per line, `ROLE TOKEN`; blank lines and `#` comments are skipped.
    pub fn parse(text: &str) -> Result<Tokens, String> {
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_whitespace();
            let (Some(role), Some(token), None) = (words.next(), words.next(), words.next()) else {
                return Err(format!("line {}: expected \"ROLE TOKEN\"", i + 1));
            };
            let role = Role::parse(role).ok_or_else(|| {
                format!(
                    "line {}: unknown role {role:?} (admin, orchestrator, agent or reader)",
                    i + 1
                )
            })?;
            if token.len() < TOKEN_BYTES_MIN {
                return Err(format!(
                    "line {}: a token must be at least {TOKEN_BYTES_MIN} bytes",
                    i + 1
                ));
            }
            entries.push(Entry {
                token: token.as_bytes().to_vec(),
                role,
                line: i + 1,
                id: token_id(token.as_bytes()),
            });
        }
        if entries.is_empty() {
            return Err("no tokens".into());
        }
        Ok(Tokens { entries })
    }

    /// The caller holding `presented`. Every token is compared, each in constant time, so the
    /// time taken tells nothing of which one matched or how much of one did.
    fn lookup(&self, presented: &[u8]) -> Option<Caller> {
        let mut found = None;
        for entry in &self.entries {
            if constant_time_eq(&entry.token, presented) {
                found = Some(Caller {
                    token_line: entry.line,
                    role: entry.role,
                    token_id: entry.id,
                });
            }
        }
        found
    }
}

/// Equal bytes, in time that depends only on the lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

/// The roles a method needs besides admin; None: open to anyone (health checks).
fn allowed(path: &str) -> Option<&'static [Role]> {
    use Role::{Agent, Orchestrator, Reader};
    if path.starts_with("/grpc.health.v1.Health/") {
        return None;
    }
    let method = path.rsplit('/').next().unwrap_or("");
    Some(match method {
        "SetPolicy" | "DeletePolicy" | "Advance" | "AddMember" | "RemoveMember" => &[],
        "Register" | "Heartbeat" | "Deregister" | "AcquireLease" | "RenewLease" | "ReleaseLease" | "KeepAlive" => {
            &[Orchestrator, Agent]
        }
        "GetAgent" | "ListPolicies" | "CheckPolicy" | "GetTask" | "ListTasks" | "ListLeases" | "ListElections"
        | "Now" => &[Orchestrator, Agent, Reader],
        _ if path.starts_with("/grpc.reflection.") || path == "/agentkeeper.v1.ClusterService/Status" => {
            &[Orchestrator, Agent, Reader]
        }
        _ => &[Orchestrator],
    })
}

/// An HTTP router (the dashboard's data) that answers only callers with a known bearer token,
/// whatever its role: the dashboard shows what a reader may read.
pub fn http_checked(router: axum::Router, tokens: Arc<Tokens>) -> axum::Router {
    router.layer(axum::middleware::from_fn_with_state(tokens, check_http))
}

async fn check_http(State(tokens): State<Arc<Tokens>>, request: Request, next: Next) -> Response {
    use axum::response::IntoResponse;
    let known = bearer(&request).and_then(|token| tokens.lookup(token));
    if known.is_none() {
        tracing::debug!(path = %request.uri().path(), "unauthenticated dashboard request refused");
        return (
            axum::http::StatusCode::UNAUTHORIZED,
            [(axum::http::header::WWW_AUTHENTICATE, "Bearer")],
            "this daemon needs a bearer token (authorization: Bearer TOKEN), any role",
        )
            .into_response();
    }
    next.run(request).await
}

/// The token of an `authorization: Bearer TOKEN` header, if the request has one.
fn bearer<B>(request: &http::Request<B>) -> Option<&[u8]> {
    request
        .headers()
        .get("authorization")
        .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "))
}

/// Admits a gRPC call whose bearer token's role allows its method, leaving the `Caller` in the
/// request's extensions; otherwise the refusal (UNAUTHENTICATED or PERMISSION_DENIED).
pub fn admit<B>(tokens: &Tokens, request: &mut http::Request<B>) -> Result<(), Status> {
    let path = request.uri().path();
    let Some(allowed) = allowed(path) else {
        return Ok(());
    };
    let presented = bearer(request);
    let Some(caller) = presented.and_then(|token| tokens.lookup(token)) else {
        let why = if presented.is_some() {
            "the bearer token is not known"
        } else {
            "this daemon needs a bearer token (authorization: Bearer TOKEN)"
        };
        tracing::debug!(%path, "unauthenticated call refused");
        return Err(Status::unauthenticated(why));
    };
    if caller.role != Role::Admin && !allowed.contains(&caller.role) {
        let method = path.rsplit('/').next().unwrap_or("");
        let needed: Vec<&str> = allowed.iter().chain([&Role::Admin]).map(|r| r.as_str()).collect();
        let message = format!(
            "{method} needs the {} role; this token is {}",
            needed.join(" or "),
            caller.role.as_str()
        );
        tracing::debug!(%path, token_line = caller.token_line, "call refused for its role");
        return Err(Status::permission_denied(message));
    }
    request.extensions_mut().insert(caller);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const T1: &str = "0123456789abcdef-admin";
    const T2: &str = "0123456789abcdef-agent";

    #[test]
    fn tokens_parse_with_roles_and_comments_and_refuse_short_or_unknown_ones() {
        let tokens = Tokens::parse(&format!("# ops\nadmin {T1}\n\nagent {T2}\n")).expect("parses");
        assert_eq!(
            tokens.lookup(T1.as_bytes()),
            Some(Caller {
                token_line: 2,
                role: Role::Admin,
                token_id: token_id(T1.as_bytes()),
            })
        );
        assert_eq!(tokens.lookup(T2.as_bytes()).map(|c| c.role), Some(Role::Agent));
        assert_eq!(tokens.lookup(b"0123456789abcdef-nobody"), None);
        assert!(Tokens::parse("admin short").is_err());
        assert!(Tokens::parse(&format!("root {T1}")).is_err());
        assert!(Tokens::parse(&format!("admin {T1} extra")).is_err());
        assert!(Tokens::parse("# nothing\n").is_err());
        // The error names the line, never the token.
        let error = Tokens::parse(&format!("superuser {T1}")).err().unwrap();
        assert!(!error.contains(T1), "{error}");
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn each_method_needs_the_roles_of_the_contract() {
        let roles = |path: &str| allowed(path).map(<[Role]>::to_vec);
        assert_eq!(roles("/grpc.health.v1.Health/Check"), None);
        assert_eq!(roles("/agentkeeper.v1.EntitlementsService/SetPolicy"), Some(vec![]));
        assert_eq!(
            roles("/agentkeeper.v1.RegistryService/Heartbeat"),
            Some(vec![Role::Orchestrator, Role::Agent])
        );
        for keep_alive in [
            "/agentkeeper.v1.RegistryService/KeepAlive",
            "/agentkeeper.v1.LeaseService/KeepAlive",
        ] {
            assert_eq!(
                roles(keep_alive),
                Some(vec![Role::Orchestrator, Role::Agent]),
                "{keep_alive}"
            );
        }
        assert_eq!(
            roles("/agentkeeper.v1.RegistryService/Find"),
            Some(vec![Role::Orchestrator])
        );
        assert_eq!(
            roles("/agentkeeper.v1.TaskService/ListTasks"),
            Some(vec![Role::Orchestrator, Role::Agent, Role::Reader])
        );
        assert_eq!(
            roles("/agentkeeper.v1.TaskService/CreateTask"),
            Some(vec![Role::Orchestrator])
        );
    }
}
