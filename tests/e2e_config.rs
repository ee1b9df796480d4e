//! The daemon's configuration as an operator meets it: the `--config` file, the `AGENTKEEPER_*`
//! variables and the flags in their order of precedence, `--print-config`, the errors a bad
//! file gets (the key and its line, exit status 2), `--version` with the commit, and the
//! completion scripts and man page generated from the same flags.

mod common;

use std::io::Write;
use std::process::{Command, Output};

use common::Daemon;

fn agentkeeper(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agentkeeper"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run agentkeeper")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("UTF-8")
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).expect("UTF-8")
}

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new()
        .suffix(".toml")
        .tempfile()
        .expect("a temp file");
    file.write_all(text.as_bytes()).expect("write the config");
    file
}

/// The line `--print-config` shows for `key`.
fn printed<'a>(config: &'a str, key: &str) -> &'a str {
    config
        .lines()
        .find(|line| line.starts_with(&format!("{key} = ")) || line.starts_with(&format!("# {key} = ")))
        .unwrap_or_else(|| panic!("no line for {key} in:\n{config}"))
}

#[test]
fn without_a_file_or_variables_the_defaults_are_what_they_always_were() {
    let output = agentkeeper(&["--print-config"], &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    let config = stdout(&output);
    assert_eq!(printed(&config, "addr"), "addr = \"127.0.0.1:7070\"  # default");
    assert_eq!(printed(&config, "data-dir"), "# data-dir = (not set)");
    assert_eq!(printed(&config, "metrics-addr"), "# metrics-addr = (not set)");
    assert_eq!(printed(&config, "io"), "io = \"auto\"  # default");
    assert_eq!(printed(&config, "agents-max"), "agents-max = 1000000  # default");
    assert!(!config.contains("print-config"), "not a setting:\n{config}");
}

#[test]
fn a_flag_beats_its_variable_which_beats_the_file_which_beats_the_default() {
    let file = config_file(
        "# a test configuration\n\
         addr = \"127.0.0.1:7171\"\n\
         snapshot-every = 500\n\
         seed = 1\n\
         log-level = \"warn\"\n",
    );
    let path = file.path().display().to_string();
    let env = [("AGENTKEEPER_SNAPSHOT_EVERY", "600"), ("AGENTKEEPER_SEED", "2")];
    let output = agentkeeper(&["--config", &path, "--seed=3", "--print-config"], &env);
    assert!(output.status.success(), "{}", stderr(&output));
    let config = stdout(&output);
    assert_eq!(printed(&config, "seed"), "seed = 3  # --seed");
    assert_eq!(
        printed(&config, "snapshot-every"),
        "snapshot-every = 600  # AGENTKEEPER_SNAPSHOT_EVERY"
    );
    assert_eq!(
        printed(&config, "addr"),
        format!("addr = \"127.0.0.1:7171\"  # {path} line 2")
    );
    assert_eq!(
        printed(&config, "log-level"),
        format!("log-level = \"warn\"  # {path} line 5")
    );
    assert_eq!(printed(&config, "watch-buffer"), "watch-buffer = 4096  # default");

    // The file can come from its variable too, and what was printed loads back unchanged.
    let again = config_file(&config);
    let env = [("AGENTKEEPER_CONFIG", again.path().to_str().expect("a UTF-8 path"))];
    let reprinted = stdout(&agentkeeper(&["--print-config"], &env));
    for key in ["seed", "snapshot-every", "addr", "log-level", "watch-buffer"] {
        let value = |config: &str| printed(config, key).split("  # ").next().map(str::to_string);
        assert_eq!(value(&reprinted), value(&config), "{key}");
    }
}

#[test]
fn a_daemon_started_with_only_a_config_file_serves_as_the_file_says() {
    let file = config_file(
        "addr = \"127.0.0.1:0\"\n\
         metrics-addr = \"127.0.0.1:0\"\n\
         clock = \"manual\"\n",
    );
    let mut daemon = Daemon::spawn(&[format!("--config={}", file.path().display())]);
    daemon.wait_serving();
    // A manual clock answers ClockService.Now; the default real one refuses it.
    let now = tokio::runtime::Runtime::new().expect("a runtime").block_on(async {
        daemon
            .clients()
            .await
            .clock
            .now(agentkeeper::proto::NowRequest {})
            .await
    });
    assert!(now.is_ok(), "the file's clock = \"manual\" applies: {now:?}");
    assert!(daemon.terminate().success());
}

#[test]
fn an_unknown_key_exits_2_naming_the_key_its_line_and_the_key_meant() {
    let file = config_file("addr = \":7070\"\n\nmetric-addr = \":9090\"\n");
    let output = agentkeeper(&["--config", file.path().to_str().unwrap(), "--print-config"], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        stderr(&output).trim_end(),
        format!(
            "agentkeeper: {} line 3: metric-addr: unknown key (did you mean `metrics-addr`?)",
            file.path().display()
        )
    );
    assert!(stdout(&output).is_empty(), "nothing printed, nothing started");
}

#[test]
fn a_bad_value_exits_2_naming_the_key_its_line_and_what_the_flag_accepts() {
    let file = config_file("io = \"auto\"\nnet-threads = 0\n");
    let output = agentkeeper(&["--config", file.path().to_str().unwrap()], &[]);
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    let at = format!(
        "agentkeeper: {} line 2: net-threads = \"0\": invalid value '0'",
        file.path().display()
    );
    assert!(message.starts_with(&at), "{message}");
    assert!(message.contains("1..=256"), "the flag's own range: {message}");

    let file = config_file("dead-retention = 90\n");
    let output = agentkeeper(&["--config", file.path().to_str().unwrap()], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("line 1: dead-retention = \"90\": invalid value '90'"),
        "{}",
        stderr(&output)
    );

    let file = config_file("addr = \"127.0.0.1:7070\"\nclock = manual\n");
    let output = agentkeeper(&["--config", file.path().to_str().unwrap()], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("line 2"),
        "a TOML syntax error names its line: {}",
        stderr(&output)
    );
}

#[test]
fn a_bad_variable_is_refused_like_the_flag_it_stands_for() {
    let output = agentkeeper(&["--print-config"], &[("AGENTKEEPER_WATCH_BUFFER", "lots")]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("invalid value 'lots' for '--watch-buffer"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn version_names_the_release_and_the_commit_it_was_built_from() {
    let output = agentkeeper(&["--version"], &[]);
    assert!(output.status.success());
    let version = stdout(&output);
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string());
    // A build outside a checkout says "unknown"; inside one it names HEAD.
    let commit = commit.unwrap_or_else(|| "unknown".to_string());
    assert_eq!(
        version.trim_end(),
        format!("agentkeeper {} (commit {commit})", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn completions_and_the_man_page_come_from_the_flags_themselves() {
    let bash = agentkeeper(&["completions", "bash"], &[]);
    assert!(bash.status.success());
    let bash = stdout(&bash);
    assert!(
        bash.contains("--metrics-addr") && bash.contains("--config") && bash.contains("ctl"),
        "{bash}"
    );
    let zsh = stdout(&agentkeeper(&["completions", "zsh"], &[]));
    assert!(zsh.starts_with("#compdef agentkeeper"), "{zsh}");
    let fish = stdout(&agentkeeper(&["completions", "fish"], &[]));
    assert!(fish.contains("-l data-dir"), "{fish}");

    let man = agentkeeper(&["man"], &[]);
    assert!(man.status.success());
    let man = stdout(&man);
    assert!(
        man.starts_with(".ie \\n(.g .ds Aq") || man.contains(".TH agentkeeper"),
        "roff: {man}"
    );
    assert!(
        man.contains("AGENTKEEPER_METRICS_ADDR"),
        "the page names each flag's variable"
    );
    assert!(man.contains("\\-\\-print\\-config"), "the page lists the flags");

    // One page per command, for a package's man1 directory.
    let dir = tempfile::tempdir().expect("a temp dir");
    let written = agentkeeper(&["man", "--dir", dir.path().to_str().expect("UTF-8")], &[]);
    assert!(written.status.success(), "{}", stderr(&written));
    let mut pages: Vec<String> = std::fs::read_dir(dir.path())
        .expect("the pages")
        .map(|entry| entry.expect("an entry").file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    for page in [
        "agentkeeper.1",
        "agentkeeper-ctl.1",
        "agentkeeper-ctl-policy-set.1",
        "agentkeeper-probe.1",
    ] {
        assert!(pages.contains(&page.to_string()), "{page} in {pages:?}");
    }
    let main_page = std::fs::read_to_string(dir.path().join("agentkeeper.1")).expect("the main page");
    assert_eq!(main_page, man, "the same main page as `agentkeeper man` prints");
}
