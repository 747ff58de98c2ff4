//! The watch request parser that runs before hyper: a request it answers is
//! a complete `GET /v1/workload/watch` head without a body; the bytes after
//! the head do not change the answer; a head cut short is incomplete or
//! handed to hyper, never a different watch; its query parses or is a 400.
#![no_main]

use aegis_server::watch::parse_query;
use aegis_server::watchconn::{classify, Head};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let head = classify(data);
    assert!(head != Head::Idle, "classify never says idle");
    let Head::Watch(len, req) = head else { return };
    assert!(len > 0 && len <= data.len(), "the head length is inside the buffer");
    let text = &data[..len];
    // httparse skips empty lines before the request line, as RFC 9112 asks.
    let request = &text[text.iter().position(|b| !b"\r\n".contains(b)).unwrap_or(0)..];
    assert!(request.starts_with(b"GET "), "a watch is a GET");
    assert!(text.ends_with(b"\n\n") || text.ends_with(b"\n\r\n"), "a head ends with an empty line");
    assert!(classify(text) == Head::Watch(len, req.clone()), "the bytes after the head changed the answer");
    for cut in [len - 1, len / 2] {
        assert!(matches!(classify(&data[..cut]), Head::Incomplete | Head::Other), "a cut head is a watch");
    }
    if let Err(e) = parse_query(req.query.as_deref()) {
        assert_eq!(e.status(), 400, "a bad watch query is a 400");
    }
});
