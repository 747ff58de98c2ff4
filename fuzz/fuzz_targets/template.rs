//! Templates, parsed and run within a budget: the output stays under the
//! output limit, a render never runs much past the time limit (in CPU time
//! when the wall clock, on a busy machine, says it did), a result
//! within a small budget is the same under a larger one, and no error
//! repeats the value.
//!
//! Input: format byte, output-limit byte, step-limit byte, then
//! `value` NUL `template`.
#![no_main]

use std::time::{Duration, Instant};

use aegis_core::transform::{transform, Budget, Format, Template};
use aegis_fuzz::process_cpu_time;
use libfuzzer_sys::fuzz_target;

/// A render may overrun its time limit by the cost of one step; this is far more.
const TIME_SLACK: Duration = Duration::from_millis(500);

fuzz_target!(|data: &[u8]| {
    let Some(([format, out, steps], rest)) = data.split_first_chunk::<3>() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let (value, template) = text.split_once('\0').unwrap_or((text, ""));
    let format = [Format::Json, Format::Yaml, Format::Raw][usize::from(*format % 3)];
    let budget = Budget {
        max_output_bytes: 16 + usize::from(*out) * 16,
        max_steps: 1 + u64::from(*steps) * 4,
        max_time: Duration::from_millis(100),
    };
    let valid = Template::parse(template);
    // Any text, as a stored record may hold it (deserialising does not check): what
    // does not parse or run falls back to the value.
    let stored = stored(template);
    let (started, cpu) = (Instant::now(), process_cpu_time());
    let result = transform(value, stored.as_ref(), format, &budget);
    // On the wall clock, and if that was exceeded, in CPU time (a busy machine is not a finding).
    if started.elapsed() > budget.max_time + TIME_SLACK {
        let used = process_cpu_time().saturating_sub(cpu);
        assert!(used <= budget.max_time + TIME_SLACK, "a render ran past its time limit ({used:?} of CPU)");
    }
    match result {
        Ok(out) => within_budget(value, stored.as_ref(), format, &budget, &out),
        Err(e) => {
            assert!(e.is_over_budget() || valid.is_err(), "an error from a template that validates");
            if value.trim().len() >= 8 && !template.contains(value.trim()) {
                assert!(!e.to_string().contains(value.trim()), "a template error repeats the value");
            }
        }
    }
});

/// `text` as a stored template; `None` when empty (no template).
fn stored(text: &str) -> Option<Template> {
    (!text.is_empty()).then(|| {
        serde_json::from_value(serde_json::Value::String(text.to_owned())).expect("any text deserialises as a template")
    })
}

fn within_budget(value: &str, template: Option<&Template>, format: Format, budget: &Budget, out: &str) {
    if format == Format::Raw {
        let limit = budget.max_output_bytes.max(value.trim().len());
        assert!(out.len() <= limit, "raw output over the output limit");
    }
    let roomy = Budget { max_time: Duration::from_secs(5), ..Budget::default() };
    let again = transform(value, template, format, &roomy).expect("a larger budget refused the template");
    assert!(again == out, "a larger budget changed the result");
}
