//! The Sentinel init-command file: parse → print → parse gives the same
//! steps, and an error never repeats a line of the file.
#![no_main]

use aegis_core::initcmd;
use aegis_fuzz::initcmd_print::{print, without_lines};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match initcmd::parse(text) {
        Ok(steps) => {
            let printed = print(&steps);
            let again = initcmd::parse(&printed).expect("printed steps parse again");
            assert!(without_lines(again) == without_lines(steps), "parse → print → parse changed the steps");
        }
        Err(e) => no_value_in_error(text, &e.to_string()),
    }
});

/// The message may name keys and line numbers, never a value: no line's
/// text after its colon (8 bytes or more) appears in it.
fn no_value_in_error(text: &str, message: &str) {
    for line in text.lines() {
        let Some((_, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        if value.len() >= 8 {
            assert!(!message.contains(value), "an init-command error repeats a value");
        }
    }
}
