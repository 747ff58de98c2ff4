//! Text from data the command does not control, made safe for a terminal.

use std::borrow::Cow;

/// Whether a terminal could act on `c` or hide it: control characters (C0, DEL, C1),
/// format and bidirectional controls, line and paragraph separators, and blanks other
/// than the space. The table is std's (what `escape_debug` escapes), asked for `c`
/// after a letter so that combining marks, printable within a word, stay.
fn hidden(c: char) -> bool {
    if c.is_ascii_graphic() || c == ' ' {
        return false;
    }
    let mut pair = String::with_capacity(8);
    pair.push('a');
    pair.push(c);
    !matches!(c, '\'' | '"') && pair.escape_debug().count() > 2
}

/// `text` for a terminal: every [`hidden`] character is shown as an escape (`\n`,
/// `\u{1b}`), so names and paths from data the command does not control (file
/// names, answers of the Safe) cannot move the cursor, recolour, hide or forge lines.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(hidden) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(text.chars().map(|c| if hidden(c) { c.escape_debug().to_string() } else { c.to_string() }).collect())
}

/// JSON text for a terminal: [`hidden`] characters become `\uXXXX` escapes, which
/// JSON parsers read back as the same text. Raw line breaks, tabs and spaces in
/// serialized JSON are layout (inside strings they are escaped already) and stay.
pub fn json_printable(json: &str) -> Cow<'_, str> {
    let escape = |c: char| hidden(c) && !matches!(c, '\n' | '\r' | '\t');
    if !json.chars().any(escape) {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if escape(c) {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn terminal_controls_are_escaped_and_ordinary_text_is_kept() {
        assert!(matches!(printable("k8s:db-creds ünïcödé नमस्ते 'q' \"d\" a\\b"), Cow::Borrowed(_)));
        let forged = "a\u{1b}[2K\rok\nnew\u{9b}31m\u{202e}x\u{200b}\u{2028}\u{7f}\t";
        let shown = printable(forged);
        assert_eq!(shown, "a\\u{1b}[2K\\rok\\nnew\\u{9b}31m\\u{202e}x\\u{200b}\\u{2028}\\u{7f}\\t");
        assert!(!shown.chars().any(|c| c.is_control()));
    }

    #[test]
    fn json_stays_json_with_the_same_meaning() {
        let v = serde_json::json!({"name": "a\u{1b}[31m\u{9b}\u{202e}\u{e0041}b\n"});
        let text = serde_json::to_string_pretty(&v).unwrap();
        let shown = json_printable(&text);
        assert!(!shown.chars().any(|c| c.is_control() && c != '\n'), "{shown}");
        assert!(!shown.contains('\u{202e}') && !shown.contains('\u{e0041}'));
        assert_eq!(serde_json::from_str::<serde_json::Value>(&shown).unwrap(), v);
        assert!(matches!(json_printable("{\n  \"a\": \"ünï\"\n}"), Cow::Borrowed(_)));
    }
}
