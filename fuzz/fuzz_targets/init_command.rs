//! The Sentinel init-command file: parse → print → parse gives the same
//! steps, and an error never repeats a value from the file.
#![no_main]

use aegis_core::initcmd::{self, InitCmdError};
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
        Err(e) => no_value_in_error(&e),
    }
});

/// The message may name a key and a line number, never a value: the only
/// text from the file an error holds is an unknown key, shown only when it
/// looks like a key (16 letters, digits, `-` or `_` at most).
fn no_value_in_error(e: &InitCmdError) {
    let InitCmdError::UnknownKey { key, .. } = e else { return };
    let looks_like_key = key.len() <= 16 && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !looks_like_key {
        let quoted = format!("'{key}'");
        assert!(!e.to_string().contains(&quoted), "an init-command error repeats text that may be a value");
    }
}
