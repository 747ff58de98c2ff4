//! The error every parser in this crate returns for bad input.

use std::fmt;

/// A value that could not be accepted, with what it was and why.
///
/// The message names the kind of value and the rule it broke; it never
/// repeats a secret value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidInput {
    what: &'static str,
    why: String,
}

impl InvalidInput {
    /// A new error: `what` is the kind of value ("secret name"), `why` the rule broken.
    pub fn new(what: &'static str, why: impl Into<String>) -> Self {
        Self { what, why: why.into() }
    }

    /// The kind of value that was rejected.
    pub fn what(&self) -> &'static str {
        self.what
    }
}

impl fmt::Display for InvalidInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}: {}", self.what, self.why)
    }
}

impl std::error::Error for InvalidInput {}

/// An error's message followed by those of its sources, joined with ": "
/// (a connection error's cause, such as a TLS alert, is in a source).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
