//! End to end: `agentkeeper ctl`, the real binary against a real daemon: tables, `--json`,
//! paging, live events, and the one-line errors.

#![allow(clippy::disallowed_methods)] // the watch tests wait on real time

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;

use agentkeeper::proto as pb;
use common::Daemon;
use serde_json::Value;

/// What one ctl run printed.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(self) -> String {
        assert_eq!(self.code, Some(0), "stderr: {}\nstdout: {}", self.stderr, self.stdout);
        assert!(self.stderr.is_empty(), "{}", self.stderr);
        self.stdout
    }

    fn json(self) -> Value {
        let stdout = self.ok();
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not one JSON value ({e}):\n{stdout}"))
    }

    /// A failure: non-zero, nothing on stdout, one line on stderr; returns that line.
    fn failed(self) -> String {
        assert_ne!(self.code, Some(0), "{}", self.stdout);
        assert!(self.stdout.is_empty(), "{}", self.stdout);
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line: {lines:?}");
        lines[0].to_string()
    }
}

fn ctl(daemon: &Daemon, args: &[&str]) -> Run {
    ctl_at(&format!("127.0.0.1:{}", daemon.port), args)
}

fn ctl_at(endpoint: &str, args: &[&str]) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_agentkeeper"))
        .args(["ctl", "--endpoint", endpoint, "--timeout", "5s"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run agentkeeper ctl");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

/// The start of each column in a table's header line.
fn column_starts(header: &str) -> Vec<usize> {
    let mut starts = vec![0];
    let bytes = header.as_bytes();
    for i in 2..bytes.len() {
        if bytes[i] != b' ' && bytes[i - 1] == b' ' && bytes[i - 2] == b' ' {
            starts.push(i);
        }
    }
    starts
}

/// Asserts that every row's cells start where the header's columns do; returns the rows' cells.
fn aligned_rows(table: &str) -> Vec<Vec<String>> {
    let mut lines = table.lines();
    let header = lines.next().expect("a header line");
    let starts = column_starts(header);
    lines
        .map(|line| {
            let cells: Vec<String> = starts
                .iter()
                .enumerate()
                .map(|(i, &start)| {
                    assert!(
                        start == 0 || line.as_bytes()[start - 1] == b' ',
                        "column {i} misaligned in {line:?} under {header:?}"
                    );
                    let end = starts.get(i + 1).map_or(line.len(), |&next| next);
                    line[start..end].trim().to_string()
                })
                .collect();
            cells
        })
        .collect()
}

#[tokio::test]
async fn agents_lists_alive_agents_as_an_aligned_table_and_as_json_with_tool_filters() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let scraper = c.register("scraper-1", &["browser", "http_client"], 30).await;
    let summarizer = c.register("summarizer", &["llm"], 30).await;
    let gone = c.register("gone", &["llm"], 30).await;
    c.deregister(&gone).await.unwrap();

    let table = ctl(&daemon, &["agents"]).ok();
    assert!(table.starts_with("ID "), "{table}");
    let rows = aligned_rows(&table);
    assert_eq!(rows.len(), 2, "{table}");
    assert_eq!(rows[0][..3], [scraper.clone(), "scraper-1".into(), "ALIVE".into()]);
    assert_eq!(rows[0][4], "browser,http_client");
    assert_eq!(rows[1][..3], [summarizer.clone(), "summarizer".into(), "ALIVE".into()]);

    let json = ctl(&daemon, &["agents", "--json"]).json();
    let agents = json.as_array().expect("an array");
    assert_eq!(agents.len(), 2);
    assert_eq!(agents[0]["agent_id"], scraper.as_str());
    assert_eq!(agents[0]["name"], "scraper-1");
    assert_eq!(agents[0]["status"], "ALIVE");
    assert_eq!(agents[0]["tools"], serde_json::json!(["browser", "http_client"]));
    assert_eq!(agents[0]["description"], "scraper-1 agent");
    assert!(agents[0]["registered_at"].as_str().unwrap().ends_with('Z'));

    let json = ctl(&daemon, &["agents", "--tool", "llm", "--json"]).json();
    let names: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["summarizer"]);
    let table = ctl(&daemon, &["agents", "--tool", "nobody-has-this"]).ok();
    assert_eq!(table.lines().count(), 1, "only the header: {table}");
    assert_eq!(
        ctl(&daemon, &["agents", "--tool", "nobody-has-this", "--json"]).json(),
        serde_json::json!([])
    );
}

#[tokio::test]
async fn agent_shows_any_agent_dead_included_and_an_unknown_id_is_one_line_on_stderr() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let id = c.register("worker", &["llm"], 30).await;
    c.deregister(&id).await.unwrap();
    let text = ctl(&daemon, &["agent", &id]).ok();
    let fields: Vec<(String, String)> = text
        .lines()
        .map(|l| {
            let (k, v) = l.split_at(l.find("  ").expect("KEY  value"));
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect();
    assert!(fields.contains(&("ID".into(), id.clone())), "{text}");
    assert!(fields.contains(&("STATUS".into(), "DEAD".into())), "{text}");
    assert!(fields.contains(&("TOOLS".into(), "llm".into())), "{text}");
    let json = ctl(&daemon, &["agent", &id, "--json"]).json();
    assert_eq!(json["status"], "DEAD");
    assert_eq!(json["name"], "worker");

    let line = ctl(&daemon, &["agent", common::UNKNOWN_ID]).failed();
    assert!(line.starts_with("agentkeeper ctl: GetAgent: NOT_FOUND"), "{line}");
}

#[tokio::test]
async fn find_ranks_by_the_query() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    for (name, description) in [
        ("mailer", "Sends email notifications"),
        ("scraper", "Fetches and parses web pages"),
    ] {
        c.registry
            .register(pb::RegisterRequest {
                card: Some(common::card(name, description, &[])),
                ttl_seconds: 30,
            })
            .await
            .unwrap();
    }
    let json = ctl(&daemon, &["find", "parse web pages", "--json"]).json();
    let names: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["scraper", "mailer"]);
    let rows = aligned_rows(&ctl(&daemon, &["find", "email", "--limit", "1"]).ok());
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0][1], "mailer");
}

#[tokio::test]
async fn policy_set_list_check_and_delete() {
    let daemon = Daemon::start(&[]);
    let set = ctl(
        &daemon,
        &[
            "policy",
            "set",
            "deny-write",
            "--subject",
            "agent:scraper",
            "--action",
            "call",
            "--resource",
            "tool:write_file",
            "--effect",
            "deny",
        ],
    )
    .ok();
    let rows = aligned_rows(&set);
    assert_eq!(
        rows,
        [["deny-write", "agent:scraper", "call", "tool:write_file", "DENY"]]
    );
    let args = [
        "policy",
        "set",
        "allow-read",
        "--subject",
        "agent:*",
        "--action",
        "call",
        "--resource",
        "tool:read_*",
        "--effect",
        "allow",
        "--json",
    ];
    let json = ctl(&daemon, &args).json();
    assert_eq!(json[0]["effect"], "ALLOW");

    let rows = aligned_rows(&ctl(&daemon, &["policy", "list"]).ok());
    let ids: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(ids, ["allow-read", "deny-write"]);
    let json = ctl(&daemon, &["policy", "list", "--subject-prefix", "agent:s", "--json"]).json();
    assert_eq!(json.as_array().unwrap().len(), 1);
    assert_eq!(json[0]["id"], "deny-write");

    let denied = ctl(
        &daemon,
        &["policy", "check", "agent:scraper", "call", "tool:write_file"],
    )
    .ok();
    assert_eq!(denied.trim_end(), "DENIED  denied by policy \"deny-write\"");
    let json = ctl(
        &daemon,
        &["policy", "check", "agent:x", "call", "tool:read_file", "--json"],
    )
    .json();
    assert_eq!(json["allowed"], true);
    assert_eq!(json["reason"], "allowed by policy \"allow-read\"");

    assert_eq!(
        ctl(&daemon, &["policy", "delete", "deny-write"]).ok().trim_end(),
        "deleted policy deny-write"
    );
    let json = ctl(&daemon, &["policy", "list", "--json"]).json();
    assert_eq!(json.as_array().unwrap().len(), 1);
    let line = ctl(
        &daemon,
        &[
            "policy",
            "set",
            "bad",
            "--subject",
            "",
            "--action",
            "a",
            "--resource",
            "r",
            "--effect",
            "allow",
        ],
    )
    .failed();
    assert!(line.contains("SetPolicy: INVALID_ARGUMENT"), "{line}");
}

#[tokio::test]
async fn tasks_follow_every_page_and_filter_by_status_and_task_shows_input_bytes() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let mut ids = Vec::new();
    // More than two of ctl's 500-task pages.
    for i in 0..1100u32 {
        let input = if i == 0 {
            vec![0xff, 0x00, 0x10]
        } else {
            format!("input {i}").into_bytes()
        };
        let task = c
            .tasks
            .create_task(pb::CreateTaskRequest {
                r#type: if i % 2 == 0 { "even".into() } else { "odd".into() },
                input,
                required_tools: vec!["llm".into()],
                max_retries: 2,
                ttl_seconds: 0,
            })
            .await
            .unwrap()
            .into_inner()
            .task
            .unwrap();
        ids.push(task.id);
    }
    let worker = c.register("worker", &["llm"], 30).await;
    let claimed = c
        .tasks
        .claim_task(pb::ClaimTaskRequest {
            agent_id: worker.clone(),
            wait_ms: Some(0),
        })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(claimed.id, ids[0]);

    let json = ctl(&daemon, &["tasks", "--json"]).json();
    let listed: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ids, "every task, in creation order, across pages");
    let table = ctl(&daemon, &["tasks", "--status", "claimed"]).ok();
    let rows = aligned_rows(&table);
    assert_eq!(rows.len(), 1, "{table}");
    assert_eq!(
        rows[0][..5],
        [
            ids[0].clone(),
            "even".into(),
            "CLAIMED".into(),
            "llm".into(),
            "0/2".into()
        ]
    );
    assert_eq!(rows[0][5], worker);
    let pending = ctl(&daemon, &["tasks", "--status", "pending", "--json"]).json();
    assert_eq!(pending.as_array().unwrap().len(), 1099);

    let json = ctl(&daemon, &["task", &ids[0], "--json"]).json();
    assert_eq!(json["status"], "CLAIMED");
    assert_eq!(json["input"], serde_json::json!({"base64": "/wAQ"}));
    assert_eq!(json["claimed_by_agent_id"], worker.as_str());
    let json = ctl(&daemon, &["task", &ids[1], "--json"]).json();
    assert_eq!(json["input"], "input 1");
    let text = ctl(&daemon, &["task", &ids[1]]).ok();
    assert!(
        text.lines().any(|l| l.starts_with("INPUT") && l.ends_with("  input 1")),
        "{text}"
    );
    let line = ctl(&daemon, &["task", "no-such-task"]).failed();
    assert!(line.contains("GetTask: NOT_FOUND"), "{line}");
}

#[tokio::test]
async fn election_shows_the_leader_and_term_of_a_group() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let a = c.register("a", &[], 30).await;
    let b = c.register("b", &[], 30).await;
    c.campaign("leaders", &a).await;
    c.campaign("leaders", &b).await;
    c.resign("leaders", &a).await.unwrap();
    let json = ctl(&daemon, &["election", "leaders", "--json"]).json();
    assert_eq!(json["group"], "leaders");
    assert_eq!(json["leader_agent_id"], b.as_str());
    assert_eq!(json["term"], 2);
    let text = ctl(&daemon, &["election", "leaders"]).ok();
    assert!(text.lines().any(|l| l == format!("LEADER   {b}")), "{text}");
    assert!(text.lines().any(|l| l == "TERM     2"), "{text}");
}

#[tokio::test]
async fn elections_lists_every_group_with_leader_term_and_standbys() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let a = c.register("a", &[], 30).await;
    let b = c.register("b", &[], 30).await;
    c.campaign("writers", &a).await;
    c.campaign("writers", &b).await;
    c.campaign("indexers", &b).await;
    let json = ctl(&daemon, &["elections", "--json"]).json();
    let groups = json.as_array().unwrap();
    assert_eq!(groups.len(), 2, "{json}");
    assert_eq!(groups[0]["group"], "indexers", "by name");
    assert_eq!(groups[0]["leader_agent_id"], b.as_str());
    assert_eq!(groups[1]["group"], "writers");
    assert_eq!(groups[1]["leader_agent_id"], a.as_str());
    assert_eq!(groups[1]["term"], 1);
    assert_eq!(
        groups[1]["candidate_agent_ids"],
        serde_json::json!([a, b]),
        "FIFO order"
    );
    let text = ctl(&daemon, &["elections"]).ok();
    let header: Vec<&str> = text.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["GROUP", "LEADER", "TERM", "STANDBYS", "ELECTED"]);
    let rows = aligned_rows(&text);
    assert_eq!(rows[1][..4], ["writers".to_string(), a.clone(), "1".into(), b.clone()]);
}

#[tokio::test]
async fn leases_follow_every_page_by_key_and_filter_by_prefix() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let holder = c.register("holder", &[], 30).await;
    // More than one page of 500, so ctl must follow next_page_token.
    let mut tokens = std::collections::BTreeMap::new();
    for i in 0..1203 {
        let key = format!("{}/{i:05}", if i % 3 == 0 { "jobs" } else { "locks" });
        let (lease, acquired) = c.acquire(&key, &holder, 60).await;
        assert!(acquired);
        tokens.insert(key, common::token_of(&lease));
    }
    let json = ctl(&daemon, &["leases", "--json"]).json();
    let listed: Vec<(String, u64)> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["task_id"].as_str().unwrap().to_string(), l["token"].as_u64().unwrap()))
        .collect();
    let want: Vec<(String, u64)> = tokens.iter().map(|(k, t)| (k.clone(), *t)).collect();
    assert_eq!(listed, want, "every lease once, by key, with its token");
    assert_eq!(json[0]["holder_agent_id"], holder.as_str());

    let jobs = ctl(&daemon, &["leases", "--prefix", "jobs/", "--json"]).json();
    assert_eq!(jobs.as_array().unwrap().len(), 401);
    assert!(
        jobs.as_array()
            .unwrap()
            .iter()
            .all(|l| l["task_id"].as_str().unwrap().starts_with("jobs/"))
    );

    let text = ctl(&daemon, &["leases", "--prefix", "jobs/0000"]).ok();
    let header: Vec<&str> = text.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["KEY", "HOLDER", "TOKEN", "ACQUIRED", "EXPIRES"]);
    let rows = aligned_rows(&text);
    assert_eq!(rows.len(), 4, "jobs/00000, 00003, 00006, 00009: {text}");
    assert_eq!(
        rows[0][..3],
        [
            "jobs/00000".to_string(),
            holder.clone(),
            tokens["jobs/00000"].to_string()
        ]
    );
}

/// A running `ctl watch`: its stdout lines arrive on a channel.
struct Watching {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
}

impl Watching {
    fn start(daemon: &Daemon, args: &[&str]) -> Watching {
        let mut child = Command::new(env!("CARGO_BIN_EXE_agentkeeper"))
            .args(["ctl", "--endpoint", &format!("127.0.0.1:{}", daemon.port), "watch"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run agentkeeper ctl watch");
        let stdout = child.stdout.take().unwrap();
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if send.send(line).is_err() {
                    return;
                }
            }
        });
        Watching { child, lines }
    }

    fn line(&self) -> String {
        self.lines
            .recv_timeout(common::HANG_GUARD)
            .expect("a line from ctl watch")
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn watch_prints_one_line_per_event_live_and_from_a_sequence_and_ends_with_the_daemon() {
    let mut daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let first = c.register("first", &[], 30).await;
    let agents = Watching::start(&daemon, &["agent."]);
    let all_json = Watching::start(&daemon, &["--from", "1", "--json"]);
    // The replay reaches the JSON watcher at once; it proves that watch is subscribed too.
    let replayed: Value = serde_json::from_str(&all_json.line()).unwrap();
    assert_eq!(replayed["sequence_number"], 1);
    assert_eq!(replayed["topic"], "agent.registered");
    assert_eq!(replayed["agent"]["agent_id"], first.as_str());
    // Both watchers are subscribed once the daemon counts two watch streams.
    daemon.wait_metric("agentkeeper_watchers", 2.0).await;
    let second_id = c.register("second", &[], 30).await;
    let line = agents.line();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[2], "agent.registered", "{line}");
    assert_eq!(fields[3], format!("agent={second_id}"), "{line}");
    assert_eq!(fields[4], "name=second", "{line}");
    let (lease, _) = c.acquire("job:1", &second_id, 30).await;
    c.deregister(&second_id).await.unwrap();
    let line = agents.line();
    assert!(line.contains("agent.died"), "lease events are filtered out: {line}");
    // The JSON watcher sees everything in order, one object per line.
    let mut topics = Vec::new();
    loop {
        let event: Value = serde_json::from_str(&all_json.line()).unwrap();
        topics.push(event["topic"].as_str().unwrap().to_string());
        if event["topic"] == "lease.released" {
            assert_eq!(event["lease"]["token"], common::token_of(&lease));
            break;
        }
    }
    assert_eq!(topics.last().unwrap(), "lease.released");
    assert!(topics.contains(&"lease.acquired".to_string()));

    drop(c);
    daemon.sigterm();
    let mut watcher = agents;
    let status = tokio::task::spawn_blocking(move || {
        let status = watcher.child.wait().unwrap();
        let mut stderr = String::new();
        std::io::Read::read_to_string(watcher.child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        (status, stderr)
    })
    .await
    .unwrap();
    assert_ne!(status.0.code(), Some(0));
    assert_eq!(
        status.1.trim_end(),
        "agentkeeper ctl: Watch: UNAVAILABLE: the daemon is shutting down"
    );
    assert_eq!(daemon.exited().await.code(), Some(0));
}

#[test]
fn no_daemon_at_the_endpoint_is_one_line_naming_it() {
    let (_closed, port) = common::refusing_port();
    let line = ctl_at(&format!("127.0.0.1:{port}"), &["agents"]).failed();
    assert!(
        line.starts_with(&format!("agentkeeper ctl: cannot connect to 127.0.0.1:{port}")),
        "{line}"
    );
}

#[test]
fn daemon_flags_and_ctl_do_not_mix_and_bad_ctl_arguments_fail() {
    for args in [
        &["--seed", "1", "ctl", "agents"][..],
        &["ctl", "tasks", "--status", "sleeping"][..],
        &["ctl", "no-such-command"][..],
        &["ctl", "policy", "set", "p", "--subject", "s"][..],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_agentkeeper"))
            .args(args)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?}");
        assert!(!output.stderr.is_empty(), "{args:?} says why");
    }
}

#[tokio::test]
async fn with_auth_tokens_ctl_sends_the_token_from_the_flag_or_the_environment() {
    const READER: &str = "reader-token-0123456789";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens");
    std::fs::write(&path, format!("reader {READER}\n")).unwrap();
    let daemon = Daemon::start(&[&format!("--auth-tokens={}", path.display())]);
    let refused = ctl(&daemon, &["leases"]).failed();
    assert!(refused.contains("ListLeases: UNAUTHENTICATED"), "{refused}");
    let listed = ctl(&daemon, &["leases", "--token", READER]).ok();
    assert!(listed.starts_with("KEY"), "{listed}");
    let output = Command::new(env!("CARGO_BIN_EXE_agentkeeper"))
        .args([
            "ctl",
            "--endpoint",
            &format!("127.0.0.1:{}", daemon.port),
            "elections",
            "--json",
        ])
        .env("AGENTKEEPER_TOKEN", READER)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "[]");
    // A reader may not change policies: the error names the role needed.
    let denied = ctl(
        &daemon,
        &[
            "policy",
            "set",
            "p",
            "--subject",
            "a",
            "--action",
            "b",
            "--resource",
            "c",
            "--effect",
            "allow",
            "--token",
            READER,
        ],
    )
    .failed();
    assert!(
        denied.contains("PERMISSION_DENIED") && denied.contains("admin"),
        "{denied}"
    );
}
