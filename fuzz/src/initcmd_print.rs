//! Writes parsed init-command steps back in the file format, so a target can
//! check parse → print → parse.

use aegis_core::initcmd::Step;
use aegis_core::sentinel::SentinelAction;

/// The file text for `steps`: one block per step, each closed by `--`.
pub fn print(steps: &[Step]) -> String {
    let mut out = String::new();
    for step in steps {
        match step {
            Step::Sleep { ms, .. } => out.push_str(&format!("sleep:{ms}\n")),
            Step::Policy { policy, .. } => {
                let doc = serde_json::to_string(&policy.to_doc()).expect("a policy document prints");
                out.push_str(&format!("policy:{doc}\n"));
            }
            Step::Apply(c) => print_action(&mut out, &c.action),
        }
        out.push_str("--\n");
    }
    out
}

fn print_action(out: &mut String, a: &SentinelAction) {
    let mut line = |key: &str, value: &str| out.push_str(&format!("{key}:{value}\n"));
    if !a.workloads.is_empty() {
        line("w", &a.workloads.join(","));
    }
    if !a.namespaces.is_empty() {
        line("n", &a.namespaces.join(","));
    }
    if let Some(s) = &a.secret {
        line("s", s.expose());
    }
    if let Some(t) = &a.template {
        line("t", t);
    }
    if let Some(i) = &a.input_keys {
        line("i", i.expose());
    }
    for (key, value) in [("f", &a.format), ("N", &a.not_before), ("E", &a.expires)] {
        if let Some(v) = value {
            line(key, v);
        }
    }
    line("e", if a.encrypt { "true" } else { "false" });
    line("d", if a.delete { "true" } else { "false" });
}

/// `steps` with every line number set to 0, for comparing two parses of
/// texts laid out differently.
pub fn without_lines(steps: Vec<Step>) -> Vec<Step> {
    steps
        .into_iter()
        .map(|s| match s {
            Step::Sleep { ms, .. } => Step::Sleep { ms, line: 0 },
            Step::Policy { policy, .. } => Step::Policy { policy, line: 0 },
            Step::Apply(mut c) => {
                c.line = 0;
                Step::Apply(c)
            }
        })
        .collect()
}
