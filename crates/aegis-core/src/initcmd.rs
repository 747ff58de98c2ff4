//! The Sentinel init-command file: secrets to seed at start-up (see
//! `docs/VSECM-COMPATIBILITY.md`, "Sentinel init commands").
//!
//! ```text
//! w:k8s:db-credentials
//! n:payments,billing
//! s:gen:{"username":"admin-[a-z0-9]{6}"}
//! --
//! sleep:5000
//! --
//! exit
//! ```
//!
//! Lines are trimmed and empty lines skipped. A line is `key:value`, split at
//! the first colon, or `--`, which ends the block and runs it, or a bare
//! `exit`, which stops reading as if the file ended there. Keys: `w`
//! (workloads) and `n` (namespaces), comma-separated, items trimmed and empty
//! items dropped; `s` (secret), `t` (template) and `i` (root key input), kept
//! exactly as written after the colon; `f` (format), `N` (not before) and `E`
//! (expires), trimmed; `e` (encrypt) and `d` (delete), flags; and
//! `sleep:<milliseconds>`, which must be alone in its block.
//!
//! An Aegis extension: `policy:<JSON policy document on one line>` (see
//! docs/POLICIES.md), alone in its block, writes that policy, so an install can
//! start with its policies. The document is checked when the file is read;
//! a bad one is an error naming the line and the problem.
//!
//! Where Aegis differs from VSecM: a last block without a closing `--` (also
//! before `exit`) is run rather than dropped; unknown keys, lines without a
//! colon, a key given twice in a block and `sleep` mixed with other keys are
//! errors naming the line, rather than ignored. VSecM sets `e` and `d` when
//! the key is present; Aegis reads their value: empty, `true`, `yes` or `1`
//! set the flag, `false`, `no` or `0` leave it unset (any case), anything else
//! is an error. Error messages never repeat a value.

use crate::secret::SecretValue;
use crate::sentinel::SentinelAction;

/// One thing the Sentinel does, in file order.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Send this command to the Safe.
    Apply(Command),
    /// Write this policy (a new version).
    Policy {
        /// The checked policy.
        policy: Box<crate::policy::Policy>,
        /// The line of the `policy` key (1-based).
        line: usize,
    },
    /// Wait before the next step.
    Sleep {
        /// How long to wait, in milliseconds.
        ms: u64,
        /// The line of the `sleep` key (1-based).
        line: usize,
    },
}

/// One block of the file: the equivalent of one `safe` command, and where it
/// starts. `Debug` never shows the secret or the root key input (they are
/// [`SecretValue`]s).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Command {
    /// The line where the block starts (1-based).
    pub line: usize,
    /// What the block asks of the Safe.
    pub action: SentinelAction,
}

/// A line the parser cannot accept. Line numbers count from 1; no message
/// repeats a value from the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InitCmdError {
    /// Neither `key:value`, `--` nor `exit`.
    #[error("line {line}: expected key:value, -- or exit")]
    MissingColon {
        /// The offending line.
        line: usize,
    },
    /// A key the file format does not have.
    #[error("line {line}: unknown key {}; the keys are w, n, s, t, f, e, d, i, N, E, sleep and policy", shown_key(.key))]
    UnknownKey {
        /// The offending line.
        line: usize,
        /// The key as written (shown only when it looks like a key).
        key: String,
    },
    /// The same key twice in one block.
    #[error("line {line}: {key} is already set in this block; end the block with -- first")]
    DuplicateKey {
        /// The offending line.
        line: usize,
        /// The repeated key.
        key: &'static str,
    },
    /// `e` or `d` with a value that is not a yes or a no.
    #[error("line {line}: {key} takes true or false (or nothing)")]
    BadFlag {
        /// The offending line.
        line: usize,
        /// `e` or `d`.
        key: &'static str,
    },
    /// `sleep` with a value that is not a number of milliseconds.
    #[error("line {line}: sleep takes a whole number of milliseconds")]
    BadSleep {
        /// The offending line.
        line: usize,
    },
    /// `sleep` in a block with other keys.
    #[error("line {line}: sleep must be alone in its block; end the block before it with --")]
    SleepNotAlone {
        /// The offending line.
        line: usize,
    },
    /// `policy` in a block with other keys.
    #[error("line {line}: policy must be alone in its block; end the block before it with --")]
    PolicyNotAlone {
        /// The offending line.
        line: usize,
    },
    /// `policy` with a document that is not a valid policy.
    #[error("line {line}: {why}")]
    BadPolicy {
        /// The offending line.
        line: usize,
        /// What is wrong (a policy holds no secret value).
        why: String,
    },
}

/// Quotes a key for an error message, unless it may be part of a secret
/// (say, a line of a multi-line value): then only says that it is hidden.
fn shown_key(key: &str) -> String {
    let looks_like_key = key.len() <= 16 && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if looks_like_key {
        format!("'{key}'")
    } else {
        "(not shown)".to_owned()
    }
}

/// Parses an init-command file into the steps to run, in order.
pub fn parse(text: &str) -> Result<Vec<Step>, InitCmdError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut steps = Vec::new();
    let mut block = Block::default();
    for (index, raw) in text.lines().enumerate() {
        match raw.trim() {
            "" => {}
            "--" => steps.extend(std::mem::take(&mut block).finish()),
            "exit" => break,
            line => block.add(index + 1, line)?,
        }
    }
    steps.extend(block.finish());
    Ok(steps)
}

/// The block being read.
#[derive(Default)]
struct Block {
    command: Option<Command>,
    /// A step alone in its block (`sleep`, `policy`).
    alone: Option<Step>,
    seen: Vec<&'static str>,
}

impl Block {
    fn finish(self) -> Option<Step> {
        self.alone.or(self.command.map(Step::Apply))
    }

    fn add(&mut self, line: usize, text: &str) -> Result<(), InitCmdError> {
        let (key, value) = text.split_once(':').ok_or(InitCmdError::MissingColon { line })?;
        let key = known_key(key.trim()).ok_or_else(|| InitCmdError::UnknownKey { line, key: key.trim().to_owned() })?;
        if self.seen.contains(&key) {
            return Err(InitCmdError::DuplicateKey { line, key });
        }
        self.seen.push(key);
        if key == "sleep" {
            return self.set_sleep(line, value);
        }
        if key == "policy" {
            return self.set_policy(line, value);
        }
        match &self.alone {
            Some(Step::Policy { .. }) => return Err(InitCmdError::PolicyNotAlone { line }),
            Some(_) => return Err(InitCmdError::SleepNotAlone { line }),
            None => {}
        }
        let command = self.command.get_or_insert_with(|| Command { line, action: SentinelAction::default() });
        set_field(&mut command.action, line, key, value)
    }

    fn set_sleep(&mut self, line: usize, value: &str) -> Result<(), InitCmdError> {
        if self.command.is_some() {
            return Err(InitCmdError::SleepNotAlone { line });
        }
        if matches!(self.alone, Some(Step::Policy { .. })) {
            return Err(InitCmdError::PolicyNotAlone { line });
        }
        let ms = value.trim().parse().map_err(|_| InitCmdError::BadSleep { line })?;
        self.alone = Some(Step::Sleep { ms, line });
        Ok(())
    }

    fn set_policy(&mut self, line: usize, value: &str) -> Result<(), InitCmdError> {
        if self.command.is_some() || self.alone.is_some() {
            return Err(InitCmdError::PolicyNotAlone { line });
        }
        let policy = crate::policy::Policy::from_json(value.trim().as_bytes())
            .map_err(|e| InitCmdError::BadPolicy { line, why: e.to_string() })?;
        self.alone = Some(Step::Policy { policy: Box::new(policy), line });
        Ok(())
    }
}

/// The key's canonical spelling, if it is one.
fn known_key(key: &str) -> Option<&'static str> {
    const KEYS: [&str; 12] = ["w", "n", "s", "t", "f", "e", "d", "i", "N", "E", "sleep", "policy"];
    KEYS.into_iter().find(|k| *k == key)
}

fn set_field(action: &mut SentinelAction, line: usize, key: &'static str, value: &str) -> Result<(), InitCmdError> {
    match key {
        "w" => action.workloads = list(value),
        "n" => action.namespaces = list(value),
        "s" => action.secret = Some(SecretValue::new(value)),
        "t" => action.template = Some(value.to_owned()),
        "i" => action.input_keys = Some(SecretValue::new(value)),
        "f" => action.format = Some(value.trim().to_owned()),
        "N" => action.not_before = Some(value.trim().to_owned()),
        "E" => action.expires = Some(value.trim().to_owned()),
        "e" => action.encrypt = flag(value).ok_or(InitCmdError::BadFlag { line, key })?,
        "d" => action.delete = flag(value).ok_or(InitCmdError::BadFlag { line, key })?,
        _ => return Err(InitCmdError::UnknownKey { line, key: key.to_owned() }),
    }
    Ok(())
}

/// A comma-separated list, items trimmed, empty items dropped.
fn list(value: &str) -> Vec<String> {
    value.split(',').map(str::trim).filter(|item| !item.is_empty()).map(str::to_owned).collect()
}

/// A flag's value: present with no value means yes.
fn flag(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "" | "true" | "yes" | "1" => Some(true),
        "false" | "no" | "0" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"w:k8s:db-credentials
n:payments,billing
s:gen:{"username":"admin-[a-z0-9]{6}","password":"[a-zA-Z0-9]{12}"}
t:{"DB_USER":"{{.username}}","DB_PASS":"{{.password}}"}
--
sleep:5000
--
w:billing
s:initial
--
exit
"#;

    fn command(line: usize, workloads: &[&str], secret: &str) -> Command {
        let workloads = workloads.iter().map(|w| w.to_string()).collect();
        Command { line, action: SentinelAction::write(workloads, SecretValue::new(secret)) }
    }

    fn apply(steps: &[Step], i: usize) -> &SentinelAction {
        match &steps[i] {
            Step::Apply(c) => &c.action,
            other => panic!("step {i} is {other:?}"),
        }
    }

    fn shown(v: &Option<SecretValue>) -> Option<&str> {
        v.as_ref().map(SecretValue::expose)
    }

    #[test]
    fn example_file_parses_into_its_steps() {
        let mut first =
            command(1, &["k8s:db-credentials"], r#"gen:{"username":"admin-[a-z0-9]{6}","password":"[a-zA-Z0-9]{12}"}"#);
        first.action.namespaces = vec!["payments".into(), "billing".into()];
        first.action.template = Some(r#"{"DB_USER":"{{.username}}","DB_PASS":"{{.password}}"}"#.into());
        let want = vec![
            Step::Apply(first),
            Step::Sleep { ms: 5000, line: 6 },
            Step::Apply(command(8, &["billing"], "initial")),
        ];
        assert_eq!(parse(EXAMPLE).unwrap(), want);
    }

    #[test]
    fn a_policy_block_writes_a_checked_policy_and_a_bad_one_names_its_line() {
        let text = "policy:{\"name\":\"ops\",\"spiffe_ids\":[\"spiffe://x/*\"],\"secrets\":[\"*\"],\"actions\":[\"reveal\"]}\n--\nw:a\ns:b\n";
        let steps = parse(text).unwrap();
        assert!(matches!(&steps[0], Step::Policy { policy, line: 1 } if policy.name.as_str() == "ops"), "{steps:?}");
        assert!(matches!(&steps[1], Step::Apply(_)));
        let bad =
            parse("policy:{\"name\":\"ops\",\"spiffe_ids\":[\"x\"],\"secrets\":[\"*\"],\"actions\":[\"read\"]}\n")
                .unwrap_err();
        assert!(bad.to_string().starts_with("line 1: invalid SPIFFE ID pattern"), "{bad}");
        let mixed = parse("w:a\npolicy:{}\n").unwrap_err();
        assert_eq!(mixed, InitCmdError::PolicyNotAlone { line: 2 });
    }

    #[test]
    fn last_block_without_closing_dashes_is_run() {
        let steps = parse("w:a\ns:one\n--\nw:b\ns:two\n").unwrap();
        assert_eq!(steps.len(), 2);
        assert_eq!(steps[1], Step::Apply(command(4, &["b"], "two")));
        let steps = parse("sleep:10").unwrap();
        assert_eq!(steps, vec![Step::Sleep { ms: 10, line: 1 }]);
    }

    #[test]
    fn exit_stops_reading_and_runs_the_open_block() {
        let steps = parse("w:a\ns:one\nexit\nw:b\nnot even valid\n").unwrap();
        assert_eq!(steps, vec![Step::Apply(command(1, &["a"], "one"))]);
        assert_eq!(parse("exit\nw:a\n").unwrap(), vec![]);
        assert_eq!(parse("  exit  \nbad").unwrap(), vec![]);
    }

    #[test]
    fn empty_blocks_run_nothing() {
        assert_eq!(parse("--\n--\n\n--\n").unwrap(), vec![]);
        assert_eq!(parse("").unwrap(), vec![]);
        let steps = parse("--\nw:a\ns:x\n--\n--\n").unwrap();
        assert_eq!(steps, vec![Step::Apply(command(2, &["a"], "x"))]);
    }

    #[test]
    fn crlf_and_surrounding_spaces() {
        let steps = parse("\u{feff}  w:a  \r\n\r\n\ts:x \r\n--\r\nsleep: 7 \r\n").unwrap();
        assert_eq!(steps, vec![Step::Apply(command(1, &["a"], "x")), Step::Sleep { ms: 7, line: 5 }]);
    }

    #[test]
    fn values_are_split_at_the_first_colon_only() {
        let steps = parse("w:k8s:name\ns:{\"a\":\"b:c\"}\nt:x:{{.a}}:y").unwrap();
        let c = apply(&steps, 0);
        assert_eq!(c.workloads, vec!["k8s:name"]);
        assert_eq!(shown(&c.secret), Some("{\"a\":\"b:c\"}"));
        assert_eq!(c.template.as_deref(), Some("x:{{.a}}:y"));
    }

    #[test]
    fn lists_are_trimmed_and_empty_items_dropped() {
        let steps = parse("w: a , ,b ,\nn:,x,,\nd:").unwrap();
        let c = apply(&steps, 0);
        assert_eq!(c.workloads, vec!["a", "b"]);
        assert_eq!(c.namespaces, vec!["x"]);
        let steps = parse("w:\nd:").unwrap();
        assert!(apply(&steps, 0).workloads.is_empty());
    }

    #[test]
    fn every_key_has_its_field() {
        let text =
            "w:a\nn:ns\ns: padded \nt:tmpl\nf: yaml \ne:\nd:true\ni:AGE-SECRET-KEY-1X\nN: now \nE:2030-01-01T00:00:00Z";
        let steps = parse(text).unwrap();
        let Step::Apply(Command { line, .. }) = &steps[0] else { panic!("{steps:?}") };
        assert_eq!(*line, 1);
        let c = apply(&steps, 0);
        assert_eq!(c.namespaces, vec!["ns"]);
        assert_eq!(shown(&c.secret), Some(" padded"));
        assert_eq!(c.template.as_deref(), Some("tmpl"));
        assert_eq!(c.format.as_deref(), Some("yaml"));
        assert!(c.encrypt && c.delete);
        assert_eq!(shown(&c.input_keys), Some("AGE-SECRET-KEY-1X"));
        assert_eq!(c.not_before.as_deref(), Some("now"));
        assert_eq!(c.expires.as_deref(), Some("2030-01-01T00:00:00Z"));
    }

    #[test]
    fn flags_read_their_value() {
        for (value, want) in
            [("", true), ("true", true), ("YES", true), ("1", true), ("false", false), ("No", false), ("0", false)]
        {
            let steps = parse(&format!("w:a\ne:{value}\nd:{value}")).unwrap();
            let c = apply(&steps, 0);
            assert_eq!((c.encrypt, c.delete), (want, want), "{value:?}");
        }
        assert_eq!(parse("w:a\ne:maybe"), Err(InitCmdError::BadFlag { line: 2, key: "e" }));
    }

    #[test]
    fn unknown_keys_and_bad_lines_name_the_line() {
        assert_eq!(parse("w:a\n\nx:1\n"), Err(InitCmdError::UnknownKey { line: 3, key: "x".into() }));
        let err = parse("w:a\nW:b").unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("'W'"), "{err}");
        assert_eq!(parse("w:a\njunk"), Err(InitCmdError::MissingColon { line: 2 }));
        assert_eq!(parse("w:a\nw:b"), Err(InitCmdError::DuplicateKey { line: 2, key: "w" }));
        assert_eq!(parse("exit:now"), Err(InitCmdError::UnknownKey { line: 1, key: "exit".into() }));
    }

    #[test]
    fn sleep_errors() {
        assert_eq!(parse("sleep:soon"), Err(InitCmdError::BadSleep { line: 1 }));
        assert_eq!(parse("sleep:-5"), Err(InitCmdError::BadSleep { line: 1 }));
        assert_eq!(parse("sleep:"), Err(InitCmdError::BadSleep { line: 1 }));
        assert_eq!(parse("w:a\nsleep:5"), Err(InitCmdError::SleepNotAlone { line: 2 }));
        assert_eq!(parse("sleep:5\nw:a"), Err(InitCmdError::SleepNotAlone { line: 2 }));
        let err = parse("\n\nsleep:x").unwrap_err().to_string();
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn errors_never_show_secret_text() {
        // A secret spread over lines: its continuation lines are errors.
        let text = "w:a\ns:{\"user\":\"admin\",\n\"password\":\"hunter2\"}\n--";
        let err = parse(text).unwrap_err();
        assert_eq!(err, InitCmdError::UnknownKey { line: 3, key: "\"password\"".into() });
        let shown = err.to_string();
        assert!(!shown.contains("hunter2") && !shown.contains("password"), "{shown}");
        let shown = parse("w:a\nhunter2").unwrap_err().to_string();
        assert!(!shown.contains("hunter2"), "{shown}");
        let shown = parse("w:a\nhunter2hunter2hunter2:x").unwrap_err().to_string();
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn debug_never_shows_the_secret_or_root_keys() {
        let steps = parse("w:a\ns:hunter2\ni:AGE-SECRET-KEY-1QQQ").unwrap();
        for shown in [format!("{steps:?}"), format!("{:#?}", apply(&steps, 0))] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(!shown.contains("AGE-SECRET-KEY"), "{shown}");
            assert!(shown.contains("<redacted"), "{shown}");
        }
        let none = format!("{:?}", Command::default());
        assert!(none.contains("secret: None"), "{none}");
    }
}
