//! Secret names and the record file names they are stored under: a name the
//! current rule accepts is one the stored rule accepts, every name survives
//! JSON and file-name round trips, and no file name escapes the data
//! directory or hides itself.
#![no_main]

use aegis_core::{Namespace, SecretName, WorkloadName};
use aegis_store::{file_name, name_header, name_of_file, read_name_header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    current_rule(text);
    stored_rule(text);
    file_names(text);
    if let Ok(ns) = Namespace::parse(text) {
        assert_eq!(ns.as_str(), text, "a namespace is kept as written");
    }
    if let Some(name) = name_of_file(text) {
        let canonical = file_name(&name);
        if !canonical.starts_with('=') {
            assert_eq!(name_of_file(&canonical).as_deref(), Some(name.as_str()), "decode → encode → decode");
        }
    }
});

fn current_rule(text: &str) {
    let Ok(name) = SecretName::parse(text) else { return };
    assert_eq!(name.as_str(), text, "names are never rewritten");
    assert!(SecretName::parse_stored(text).is_ok(), "a name the current rule accepts is refused as stored");
    assert!(name.current_rule_violation().is_none(), "a parsed name breaks the current rule");
    let wl = WorkloadName::parse(text).expect("a secret name is a workload name");
    assert!(wl.secret_name().ok().as_ref() == Some(&name), "workload name → secret name");
    assert_eq!(name.kubernetes_name().is_some(), text.starts_with("k8s:"), "k8s: prefix");
}

fn stored_rule(text: &str) {
    let Ok(name) = SecretName::parse_stored(text) else { return };
    let json = serde_json::to_string(&name).expect("a name serialises");
    let back: SecretName = serde_json::from_str(&json).expect("a serialised name deserialises");
    assert!(back == name, "JSON round trip changed the name");
}

fn file_names(text: &str) {
    if text.is_empty() || text.len() > 4096 {
        return;
    }
    let file = file_name(text);
    assert!(file.len() <= 255, "a file name over 255 bytes");
    assert!(!file.contains('/') && !file.contains('\0'), "a file name with / or NUL");
    assert!(!file.starts_with('.'), "a hidden file name");
    assert!(file.ends_with(".rec"), "a file name without .rec");
    if file.starts_with('=') {
        let header = name_header(text).expect("a header for a name under 64 KiB");
        let read = read_name_header(&mut header.as_slice()).expect("a written header reads back");
        assert_eq!(read, text, "the name header round trip");
        assert_eq!(file_name(&read), file, "the hashed file name is stable");
    } else {
        assert_eq!(name_of_file(&file).as_deref(), Some(text), "file name round trip");
    }
}
