//! Where the daemon's settings come from besides its flags: a TOML file (`--config FILE`) with
//! the flags' names as keys, and `AGENTKEEPER_*` environment variables. A flag beats its
//! variable, which beats the file, which beats the default; `--print-config` shows the result.
//!
//! Owns reading the file and layering it under the command line; never knows what a setting
//! means (the flags' clap definitions do, and every value goes through its flag's own parser)
//! and never changes a default: without a file and variables, the flags alone decide.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::builder::Resettable;
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};
use toml::de::{DeTable, DeValue};

/// The flag that names the file, and the one that prints the result; neither is a key.
pub const CONFIG_ID: &str = "config";
pub const PRINT_ID: &str = "print_config";

/// The prefix of the environment variable of each flag: `--metrics-addr` is
/// `AGENTKEEPER_METRICS_ADDR`.
pub const ENV_PREFIX: &str = "AGENTKEEPER_";

/// The variable that stands for the flag with the long name `long`.
pub fn env_name(long: &str) -> String {
    format!("{ENV_PREFIX}{}", long.to_uppercase().replace('-', "_"))
}

/// True for a flag that may be set from the file and the environment: every daemon flag that
/// takes a value (not `--help`, `--version`, `--print-config`, nor `--config` inside the file).
fn settable(arg: &Arg) -> bool {
    arg.get_long().is_some() && matches!(arg.get_action(), ArgAction::Set) && arg.get_id() != PRINT_ID
}

/// `command` with an `AGENTKEEPER_*` variable behind every daemon flag that takes a value
/// (`--help` lists each). Subcommands' own flags are left as they are.
pub fn with_env(command: Command) -> Command {
    command.mut_args(|arg| match arg.get_long() {
        Some(long) if settable(&arg) => {
            let name = env_name(long);
            arg.env(name)
        }
        _ => arg,
    })
}

/// Where one effective setting came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Flag,
    Env,
    File { path: PathBuf, line: usize },
    Default,
}

/// The parsed command line with the file and the environment layered under it.
#[derive(Debug)]
pub struct Layered {
    pub matches: ArgMatches,
    /// The keys the file set that neither a flag nor a variable overrode, by clap id.
    from_file: BTreeMap<String, (PathBuf, usize)>,
}

impl Layered {
    /// Where the setting with clap id `id` came from, if it has a value at all.
    pub fn source(&self, id: &str) -> Option<Source> {
        if let Some((path, line)) = self.from_file.get(id) {
            return Some(Source::File {
                path: path.clone(),
                line: *line,
            });
        }
        match self.matches.value_source(id)? {
            ValueSource::CommandLine => Some(Source::Flag),
            ValueSource::EnvVariable => Some(Source::Env),
            _ => Some(Source::Default),
        }
    }
}

/// One key of the file: its value as its flag would take it, and the line it is on.
struct Entry {
    key: String,
    value: String,
    line: usize,
}

/// Parses `args` against `command` (made by [`with_env`]) with the file named by `--config` (or
/// its variable) layered under them: each of the file's keys that no flag or variable sets is
/// passed as if it were a flag, so clap checks it exactly as it checks a flag.
///
/// A bad file is an `Err` naming the file, the line and the key; clap's own errors (a bad flag,
/// `--help`, `--version`) come back as clap errors for the caller to print and exit with.
pub fn parse(command: &Command, args: Vec<OsString>) -> Result<Result<Layered, String>, clap::Error> {
    // A first, lenient look: which file, and which settings the flags and variables already set.
    let first = command.clone().ignore_errors(true).try_get_matches_from(&args);
    let path = first
        .as_ref()
        .ok()
        .filter(|matches| matches.subcommand().is_none())
        .and_then(|matches| matches.get_one::<PathBuf>(CONFIG_ID).cloned());
    let Some(path) = path else {
        return command.clone().try_get_matches_from(args).map(|matches| {
            Ok(Layered {
                matches,
                from_file: BTreeMap::new(),
            })
        });
    };
    let first = first.expect("a lenient parse that named a file succeeded");
    let entries = match read(command, &path) {
        Ok(entries) => entries,
        Err(message) => return Ok(Err(message)),
    };
    let mut file_args = Vec::new();
    let mut from_file = BTreeMap::new();
    for entry in entries {
        let arg = find(command, &entry.key).expect("read() keeps known keys only");
        let id = arg.get_id().as_str();
        let overridden = matches!(
            first.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if !overridden {
            file_args.push(OsString::from(format!("--{}={}", entry.key, entry.value)));
            from_file.insert(id.to_string(), (path.clone(), entry.line));
        }
    }
    // The file's settings right after the program's name: before any of the real flags, so a
    // message about the command line still points at what the user typed.
    let mut layered_args = args;
    let rest = layered_args.split_off(layered_args.len().min(1));
    layered_args.extend(file_args);
    layered_args.extend(rest);
    command
        .clone()
        .try_get_matches_from(layered_args)
        .map(|matches| Ok(Layered { matches, from_file }))
}

/// The daemon flag whose long name is `key`, if it may be set from a file.
fn find<'c>(command: &'c Command, key: &str) -> Option<&'c Arg> {
    command
        .get_arguments()
        .find(|arg| arg.get_long() == Some(key) && settable(arg) && arg.get_id() != CONFIG_ID)
}

/// Reads and checks the file: every key a flag's name, every value one its flag accepts.
fn read(command: &Command, path: &Path) -> Result<Vec<Entry>, String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|error| format!("--config {shown}: {error}"))?;
    let table = DeTable::parse(&text).map_err(|error| format!("--config {shown}: {}", error.to_string().trim_end()))?;
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let mut entries: Vec<_> = table.get_ref().iter().collect();
    entries.sort_by_key(|(key, _)| key.span().start);
    let mut checked = Vec::with_capacity(entries.len());
    for (key, value) in entries {
        let line = line_of(key.span().start);
        let name = key.get_ref().as_ref();
        let at = format!("{shown} line {line}: {name}");
        let arg = find(command, name).ok_or_else(|| format!("{at}: unknown key{}", suggestion(command, name)))?;
        let value = scalar(value.get_ref()).map_err(|why| format!("{at}: {why}"))?;
        check(arg, name, &value).map_err(|why| format!("{at} = {value:?}: {why}"))?;
        checked.push(Entry {
            key: name.to_string(),
            value,
            line,
        });
    }
    Ok(checked)
}

/// Gives `value` to the flag `long` alone, so that the file accepts exactly what the flag does
/// (its own parser and range) and a refusal is about this key only: no variable read, no other
/// flag required.
fn check(arg: &Arg, long: &str, value: &str) -> Result<(), String> {
    let alone = arg.clone().env(Resettable::Reset).requires(Resettable::Reset);
    Command::new("agentkeeper")
        .no_binary_name(true)
        .arg(alone)
        .try_get_matches_from([format!("--{long}={value}")])
        .map(drop)
        .map_err(|error| first_line(&error))
}

/// A value as its flag would be given it: strings as they are, integers in decimal.
fn scalar(value: &DeValue<'_>) -> Result<String, String> {
    match value {
        DeValue::String(text) => Ok(text.to_string()),
        DeValue::Integer(integer) => u64::from_str_radix(integer.as_str(), integer.radix())
            .map(|n| n.to_string())
            .or_else(|_| i64::from_str_radix(integer.as_str(), integer.radix()).map(|n| n.to_string()))
            .map_err(|error| format!("integer out of range: {error}")),
        other => Err(format!("expected a string or an integer, found {}", other.type_str())),
    }
}

/// " (did you mean `metrics-addr`?)" for a key close to a known one, else a pointer to the list.
fn suggestion(command: &Command, unknown: &str) -> String {
    let kebab = unknown.replace('_', "-");
    let best = command
        .get_arguments()
        .filter(|arg| settable(arg) && arg.get_id() != CONFIG_ID)
        .filter_map(Arg::get_long)
        .map(|long| (strsim::jaro_winkler(&kebab, long), long))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match best {
        Some((score, long)) if score > 0.8 => format!(" (did you mean `{long}`?)"),
        _ => " (the keys are the flags' names, as `agentkeeper --print-config` lists them)".to_string(),
    }
}

/// clap's message without its "error: " prefix and its usage lines.
fn first_line(error: &clap::Error) -> String {
    let text = error.to_string();
    let line = text.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_string()
}

/// The effective configuration as a file `--config` reads back: every key with its value (or
/// commented out when it has none) and, after it, where the value came from.
pub fn render(command: &Command, layered: &Layered) -> String {
    let mut out = String::from(
        "# agentkeeper's effective configuration. Highest first: flags, AGENTKEEPER_* variables,\n\
         # the --config file, defaults. This output is itself a valid --config file.\n",
    );
    for arg in command
        .get_arguments()
        .filter(|arg| settable(arg) && arg.get_id() != CONFIG_ID)
    {
        let id = arg.get_id().as_str();
        let long = arg.get_long().expect("settable flags have a long name");
        let raw = layered
            .matches
            .get_raw(id)
            .and_then(|mut values| values.next())
            .map(|value| value.to_string_lossy().into_owned());
        let Some(raw) = raw else {
            out.push_str(&format!("# {long} = (not set)\n"));
            continue;
        };
        let origin = match layered.source(id) {
            Some(Source::Flag) => format!("--{long}"),
            Some(Source::Env) => env_name(long),
            Some(Source::File { path, line }) => format!("{} line {line}", path.display()),
            Some(Source::Default) | None => "default".to_string(),
        };
        out.push_str(&format!("{long} = {}  # {origin}\n", toml_value(&raw)));
    }
    out
}

/// A decimal that fits TOML's integers is written as one, anything else as a string; `read`
/// takes both, so the output loads back whatever the flag.
fn toml_value(raw: &str) -> String {
    let decimal =
        !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()) && !(raw.len() > 1 && raw.starts_with('0'));
    match raw.parse::<i64>() {
        Ok(n) if decimal => n.to_string(),
        _ => toml::Value::String(raw.to_string()).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A small daemon-like command: the same kinds of flags as the real one.
    fn command() -> Command {
        with_env(
            Command::new("daemon")
                .arg(Arg::new("addr").long("addr").default_value("127.0.0.1:7070"))
                .arg(
                    Arg::new("snapshot_every")
                        .long("snapshot-every")
                        .default_value("100000")
                        .value_parser(clap::value_parser!(u64).range(1..)),
                )
                .arg(
                    Arg::new("data_dir")
                        .long("data-dir")
                        .value_parser(clap::value_parser!(PathBuf)),
                )
                .arg(
                    Arg::new("core_spin")
                        .long("core-spin")
                        .default_value("200us")
                        .value_parser(humantime::parse_duration),
                )
                .arg(
                    Arg::new(CONFIG_ID)
                        .long("config")
                        .value_parser(clap::value_parser!(PathBuf)),
                )
                .arg(Arg::new(PRINT_ID).long("print-config").action(ArgAction::SetTrue)),
        )
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().expect("a temp file");
        file.write_all(text.as_bytes()).expect("write");
        file
    }

    fn layered(args: &[&str]) -> Result<Layered, String> {
        let args = std::iter::once("daemon")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        parse(&command(), args).map_err(|error| error.to_string())?
    }

    fn config_arg(file: &tempfile::NamedTempFile) -> String {
        format!("--config={}", file.path().display())
    }

    #[test]
    fn the_file_sets_what_no_flag_sets_and_a_flag_beats_the_file() {
        let config = file("addr = \":7171\"\nsnapshot-every = 5_000\ndata-dir = \"/var/lib/ak\"\n");
        let layered = layered(&[&config_arg(&config), "--snapshot-every=7"]).expect("loads");
        let matches = &layered.matches;
        assert_eq!(matches.get_one::<String>("addr").map(String::as_str), Some(":7171"));
        assert_eq!(matches.get_one::<u64>("snapshot_every"), Some(&7));
        assert_eq!(
            matches.get_one::<PathBuf>("data_dir"),
            Some(&PathBuf::from("/var/lib/ak"))
        );
        assert_eq!(
            layered.source("addr"),
            Some(Source::File {
                path: config.path().to_path_buf(),
                line: 1
            })
        );
        assert_eq!(layered.source("snapshot_every"), Some(Source::Flag));
        assert_eq!(layered.source("core_spin"), Some(Source::Default));
    }

    #[test]
    fn without_a_file_the_defaults_stand() {
        let layered = layered(&[]).expect("parses");
        assert_eq!(layered.matches.get_one::<u64>("snapshot_every"), Some(&100_000));
        assert_eq!(layered.matches.get_one::<PathBuf>("data_dir"), None);
    }

    #[test]
    fn an_unknown_key_is_named_with_its_line_and_the_key_it_resembles() {
        let config = file("addr = \":7171\"\n\nsnapshot_every = 10\n");
        let error = layered(&[&config_arg(&config)]).expect_err("refused");
        let expected = format!(
            "{} line 3: snapshot_every: unknown key (did you mean `snapshot-every`?)",
            config.path().display()
        );
        assert_eq!(error, expected);
    }

    #[test]
    fn a_bad_value_is_named_with_its_key_its_line_and_the_flags_own_complaint() {
        let config = file("# tuned\ncore-spin = \"fast\"\n");
        let error = layered(&[&config_arg(&config)]).expect_err("refused");
        let at = format!(
            "{} line 2: core-spin = \"fast\": invalid value 'fast'",
            config.path().display()
        );
        assert!(error.starts_with(&at), "{error}");

        let config = file("snapshot-every = 0\n");
        let error = layered(&[&config_arg(&config)]).expect_err("refused");
        assert!(
            error.contains("line 1: snapshot-every = \"0\": invalid value '0'"),
            "{error}"
        );
    }

    #[test]
    fn a_value_of_the_wrong_type_and_a_broken_file_are_refused_with_their_line() {
        let config = file("addr = [\"a\"]\n");
        let error = layered(&[&config_arg(&config)]).expect_err("refused");
        assert!(
            error.ends_with("line 1: addr: expected a string or an integer, found array"),
            "{error}"
        );

        let config = file("addr = \":7171\"\naddr = \":7272\"\n");
        let error = layered(&[&config_arg(&config)]).expect_err("refused");
        assert!(error.contains("line 2"), "a duplicate key names its line: {error}");

        let config = file("[section]\naddr = \":7171\"\n");
        let error = layered(&[&config_arg(&config)]).expect_err("refused");
        assert!(error.ends_with("line 1: section: unknown key (the keys are the flags' names, as `agentkeeper --print-config` lists them)"), "{error}");
    }

    #[test]
    fn the_file_cannot_name_another_file_or_ask_to_print() {
        for key in [
            "config = \"/etc/other.toml\"",
            "print-config = \"true\"",
            "help = \"x\"",
        ] {
            let config = file(&format!("{key}\n"));
            let error = layered(&[&config_arg(&config)]).expect_err("refused");
            assert!(error.contains("unknown key"), "{key}: {error}");
        }
    }

    #[test]
    fn a_missing_file_is_an_error_that_names_it() {
        let error = layered(&["--config=/nonexistent/agentkeeper.toml"]).expect_err("refused");
        assert!(error.starts_with("--config /nonexistent/agentkeeper.toml: "), "{error}");
    }

    #[test]
    fn the_printed_configuration_loads_back_to_the_same_values() {
        let config = file("addr = \"127.0.0.1:7171\"\ncore-spin = \"0\"\n");
        let first = layered(&[&config_arg(&config), "--data-dir=/srv/ak"]).expect("loads");
        let printed = render(&command(), &first);
        assert!(printed.contains("addr = \"127.0.0.1:7171\"  # "), "{printed}");
        assert!(printed.contains("data-dir = \"/srv/ak\"  # --data-dir"), "{printed}");
        assert!(printed.contains("snapshot-every = 100000  # default"), "{printed}");
        let again = file(&printed);
        let second = layered(&[&config_arg(&again)]).expect("the printed file loads");
        for id in ["addr", "core_spin"] {
            assert_eq!(
                first.matches.get_raw(id).map(|v| v.collect::<Vec<_>>()),
                second.matches.get_raw(id).map(|v| v.collect::<Vec<_>>()),
                "{id}"
            );
        }
        assert_eq!(
            second.matches.get_one::<PathBuf>("data_dir"),
            Some(&PathBuf::from("/srv/ak"))
        );
        assert_eq!(second.matches.get_one::<u64>("snapshot_every"), Some(&100_000));
    }
}
