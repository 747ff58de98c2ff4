//! Templates, parsed and run within a budget: the output stays under the
//! output limit, a render within its counted budget never uses much CPU (a
//! cost the budget does not count would show up here; the wall clock is
//! read first, and CPU time only when it says so, so a busy machine is not
//! a finding), the same budget gives the same outcome twice, a result
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

/// Far more CPU than a render within the budgets below needs.
const CPU_LIMIT: Duration = Duration::from_millis(600);

fuzz_target!(|data: &[u8]| {
    let Some(([format, out, steps], rest)) = data.split_first_chunk::<3>() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let (value, template) = text.split_once('\0').unwrap_or((text, ""));
    let format = [Format::Json, Format::Yaml, Format::Raw][usize::from(*format % 3)];
    let budget = Budget {
        max_output_bytes: 16 + usize::from(*out) * 16,
        max_steps: 1 + u64::from(*steps) * 4,
        max_work_bytes: 256 * 1024,
        ..Budget::default()
    };
    let valid = Template::parse(template);
    // Any text, as a stored record may hold it (deserialising does not check): what
    // does not parse or run falls back to the value.
    let stored = stored(template);
    let (started, cpu) = (Instant::now(), process_cpu_time());
    let result = transform(value, stored.as_ref(), format, &budget);
    // On the wall clock, and if that was exceeded, in CPU time (a busy machine is not a finding).
    if started.elapsed() > CPU_LIMIT {
        let used = process_cpu_time().saturating_sub(cpu);
        assert!(used <= CPU_LIMIT, "a render within its budget used {used:?} of CPU: a cost the budget misses");
    }
    assert!(transform(value, stored.as_ref(), format, &budget) == result, "the same budget gave another outcome");
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
    let roomy = Budget::default();
    let again = transform(value, template, format, &roomy).expect("a larger budget refused the template");
    assert!(again == out, "a larger budget changed the result");
}
