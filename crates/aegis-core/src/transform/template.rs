//! The template a secret carries: its text, checked once by the engine
//! (`aegis-gotmpl`) when it is written.

#[cfg(feature = "transform")]
use super::{Budget, TemplateError};

/// A template that parsed and passed the checks of
/// [`validate_template`](super::validate_template): the only way a template
/// gets into a secret's metadata, so the store and the handlers never see one
/// that was not checked. Templates are not secret (they are listed).
///
/// Deserialising (a stored record) does not check again: the template was
/// checked when it was written, and rendering parses it within the budget anyway.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Template(String);

impl Template {
    /// The template's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A template that was not checked, as an old stored record may hold: for tests of
    /// what rendering does with one.
    #[cfg(test)]
    #[cfg(feature = "transform")]
    pub(crate) fn unchecked(text: &str) -> Self {
        Self(text.to_owned())
    }
}

#[cfg(feature = "transform")]
impl Template {
    /// Checks `text` (trimmed) under the default [`Budget`]; `Ok(None)` if it
    /// is empty, which means no template. Call it off the async threads.
    pub fn parse(text: &str) -> Result<Option<Self>, TemplateError> {
        Self::parse_within(text, &Budget::default())
    }

    /// Checks `text` (trimmed): no larger than `budget`'s template size
    /// limit (checked before anything else looks at it), then as
    /// [`validate_template`](super::validate_template) does; `Ok(None)` if it
    /// is empty, which means no template. Call it off the async threads.
    pub fn parse_within(text: &str, budget: &Budget) -> Result<Option<Self>, TemplateError> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        aegis_gotmpl::check_template(text, budget)?;
        Ok(Some(Self(text.to_owned())))
    }

    /// Refuses `text` (trimmed) when it is larger than `budget`'s template
    /// size limit. Cheap: it runs before anything copies or parses the text.
    pub fn check_size(text: &str, budget: &Budget) -> Result<(), TemplateError> {
        aegis_gotmpl::check_template_size(text, budget)
    }
}
