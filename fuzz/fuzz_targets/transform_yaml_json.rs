//! The YAML and JSON transformations of a value (no template): YAML output
//! reads back, with an independent YAML 1.2 parser, as the JSON object it
//! came from; JSON output is the trimmed value; anything that is not a JSON
//! object is passed through.
#![no_main]

use aegis_core::transform::{transform, Budget, Format};
use aegis_fuzz::yaml_check::mismatch;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = std::str::from_utf8(data) else { return };
    let budget = Budget::default();
    let yaml = transform(value, None, Format::Yaml, &budget).expect("no template, no budget error");
    let json = transform(value, None, Format::Json, &budget).expect("no template, no budget error");
    let raw = transform(value, None, Format::Raw, &budget).expect("no template, no budget error");
    let trimmed = value.trim();
    assert!(raw == trimmed, "raw is the trimmed value");
    assert!(json == trimmed, "json without a template is the trimmed value");
    match serde_json::from_str::<serde_json::Value>(trimmed) {
        Ok(serde_json::Value::Object(map)) => {
            assert!(yaml.ends_with('\n'), "a YAML document ends with a line break");
            if let Some(why) = mismatch(&yaml, &map) {
                panic!("the YAML does not read back as the JSON object: {why}");
            }
        }
        _ => assert!(yaml == trimmed, "yaml of a non-object is the trimmed value"),
    }
});
