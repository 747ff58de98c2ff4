//! What readers see of one secret, and the changes the writer applies.

use aegis_core::secret::{SecretDoc, SecretMeta, SecretValue};
use aegis_core::transform::{Budget, TemplateError};
use time::OffsetDateTime;

/// What a workload receives, computed once per write (or load).
#[derive(Debug, Clone)]
pub enum Data {
    /// The transformation left the raw value unchanged (saves a copy).
    Same,
    /// The transformed value.
    Transformed(SecretValue),
    /// The stored template is over the template budget (it was stored by an
    /// older version, or the budget was lowered): the workload gets an error,
    /// never the raw value. The reason names the bound, never a value. (A
    /// boxed `str`, not a `String`: the enum then fits in 24 bytes, and the
    /// entry of every secret is 16 bytes smaller.)
    Failed(Box<str>),
}

impl Data {
    /// Computes the view of `value` under `meta`'s template and format within
    /// `budget`; an error when the template is over the budget (the write
    /// should then be refused).
    pub fn compute(value: &SecretValue, meta: &SecretMeta, budget: &Budget) -> Result<Data, TemplateError> {
        let out = aegis_core::transform::transform(value.expose(), meta.template.as_ref(), meta.format, budget)?;
        Ok(if out == value.expose() { Data::Same } else { Data::Transformed(SecretValue::new(out)) })
    }
}

/// One secret as readers see it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The secret with its history.
    pub doc: SecretDoc,
    /// The workload's view of the current version.
    pub data: Data,
}

impl Entry {
    /// The entry for `doc`, with the workload's view computed within `budget`
    /// unless `data` (computed for the live version already) is given. A view
    /// over the budget becomes [`Data::Failed`] and is logged.
    pub(crate) fn new(mut doc: SecretDoc, data: Option<Data>, budget: &Budget) -> Self {
        // Deserialising and pushing grow the history vector to 4 slots or more;
        // held for every secret, the spare slots would cost ~450 bytes each.
        doc.versions.shrink_to_fit();
        // The same for each version's namespaces: one namespace in a vector
        // grown for four is 72 bytes for nothing, per version.
        for v in &mut doc.versions {
            v.meta.namespaces.shrink_to_fit();
        }
        let data = match (doc.live(), data) {
            (Some(_), Some(data)) => data,
            (Some((v, value)), None) => Data::compute(value, &v.meta, budget).unwrap_or_else(|e| {
                tracing::error!(
                    secret = %doc.name,
                    reason = %e.reason(),
                    "the stored template cannot be rendered within the template budget; \
                     the workload gets an error until the secret is written again"
                );
                Data::Failed(e.reason().into())
            }),
            (None, _) => Data::Same,
        };
        Self { doc, data }
    }

    /// The value a workload receives: the current version transformed, if the
    /// secret is live and its transformation did not fail.
    pub fn workload_value(&self) -> Option<&SecretValue> {
        let (_, raw) = self.doc.live()?;
        match &self.data {
            Data::Same => Some(raw),
            Data::Transformed(v) => Some(v),
            Data::Failed(_) => None,
        }
    }

    /// What a workload may receive `now`: the transformed value if the
    /// secret is live and `now` is inside its validity window; nothing
    /// otherwise; an error when its stored template is over the template
    /// budget (the workload never gets the raw value in its place).
    pub fn deliverable(&self, now: OffsetDateTime) -> Result<Option<&SecretValue>, Undeliverable> {
        let Some((v, _)) = self.doc.live() else { return Ok(None) };
        if !v.meta.valid_at(now) {
            return Ok(None);
        }
        if let Some(why) = self.transform_error() {
            return Err(Undeliverable { name: self.doc.name.to_string(), reason: why.to_owned() });
        }
        Ok(self.workload_value())
    }

    /// Why the live version's transformation failed (over the template
    /// budget), if it did; such a secret is served as an error.
    pub fn transform_error(&self) -> Option<&str> {
        self.doc.live()?;
        match &self.data {
            Data::Failed(why) => Some(why),
            _ => None,
        }
    }
}

/// Times an import keeps from the system it comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamps {
    /// The secret's creation time, used when the write creates the secret.
    pub created: OffsetDateTime,
    /// The time of the new version and of the secret's last update.
    pub updated: OffsetDateTime,
}

/// A change to one secret.
#[derive(Debug)]
pub enum Mutation {
    /// Write a new version; `cas` is the expected current version (0: must not exist).
    Put {
        /// The raw value.
        value: SecretValue,
        /// Delivery metadata.
        meta: SecretMeta,
        /// Check-and-set.
        cas: Option<u64>,
        /// The workload's view of this value, computed (and its template
        /// checked against the budget) before the write, so the writer does
        /// not render; `None`: the writer validates and renders.
        view: Option<Data>,
        /// Times to keep instead of now (imports); `None` for ordinary writes.
        stamps: Option<Stamps>,
    },
    /// Soft delete.
    Delete,
    /// Undo a soft delete.
    Undelete,
    /// Destroy one version's value.
    Destroy(aegis_core::secret::VersionNumber),
    /// Write an earlier version again as the newest.
    Rollback(aegis_core::secret::VersionNumber),
    /// Replace the secret with its source's state (a replica applying a
    /// replicated change): versions, numbers and times as the source has
    /// them, `origin` set. Refused over a secret of this Safe's own or of
    /// another source.
    Replicate(Box<SecretDoc>),
}

/// A record that could not be loaded and was moved aside.
#[derive(Debug, Clone)]
pub struct Quarantined {
    /// The secret name (or file name when even that is unreadable).
    pub name: String,
    /// Why.
    pub reason: String,
}

/// The outcome of loading the store at start-up.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Secrets loaded.
    pub loaded: usize,
    /// Records that failed and were quarantined.
    pub quarantined: Vec<Quarantined>,
    /// Secrets loaded whose names the current name rule refuses (stored by
    /// an older version): readable and deletable, but they take no new value.
    pub legacy_names: Vec<String>,
    /// Secrets loaded whose transformation is over the template budget; they
    /// are served as errors.
    pub transform_failures: usize,
}

/// A live secret that cannot be delivered: its stored template is over the
/// template budget. Names the secret and the bound, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the stored template of secret '{name}' cannot be rendered: {reason}; an admin must write the secret again \
     with a template within the budget"
)]
pub struct Undeliverable {
    /// The secret.
    pub name: String,
    /// The bound it is over.
    pub reason: String,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use aegis_core::secret::SecretDoc;
    use aegis_core::SecretName;
    use time::Duration;

    fn entry(meta: SecretMeta, template_budget: &Budget) -> Entry {
        let now = OffsetDateTime::now_utc();
        let mut doc = SecretDoc::empty(SecretName::parse("billing").unwrap(), now);
        doc.put(SecretValue::new(r#"{"a":"b"}"#), meta, None, now, 10).unwrap();
        Entry::new(doc, None, template_budget)
    }

    #[test]
    fn the_view_without_a_template_is_what_transform_gives() {
        use aegis_core::transform::Format;
        let now = OffsetDateTime::now_utc();
        let budget = Budget::default();
        let values = ["x", "  padded\n", r#"{"a":"b"}"#, r#" {"a": 1} "#, "[1,2]", "not json {", "", " "];
        for format in [Format::Json, Format::Raw, Format::Yaml] {
            for v in values {
                let meta = SecretMeta { format, ..SecretMeta::defaults(now) };
                let value = SecretValue::new(v);
                let expected = aegis_core::transform::transform(v, None, format, &budget).unwrap();
                let got = match Data::compute(&value, &meta, &budget).unwrap() {
                    Data::Same => v.to_owned(),
                    Data::Transformed(t) => t.expose().to_owned(),
                    Data::Failed(why) => panic!("{why}"),
                };
                assert_eq!(got, expected, "{format:?} of {v:?}");
            }
        }
    }

    #[test]
    fn a_workload_gets_the_value_only_inside_its_window() {
        let now = OffsetDateTime::now_utc();
        let hour = Duration::hours(1);
        let mut meta = SecretMeta::defaults(now - hour);
        let open = entry(meta.clone(), &Budget::default());
        assert_eq!(open.deliverable(now).unwrap().map(SecretValue::expose), Some(r#"{"a":"b"}"#));
        assert_eq!(open.deliverable(now - 2 * hour).unwrap(), None, "before notBefore");
        meta.expires_after = now - Duration::seconds(1);
        assert_eq!(entry(meta, &Budget::default()).deliverable(now).unwrap(), None, "after expiry");
        let mut deleted = open;
        deleted.doc.soft_delete(now).unwrap();
        assert_eq!(deleted.deliverable(now).unwrap(), None, "deleted");
    }

    #[test]
    fn a_template_over_the_budget_is_an_error_never_the_raw_value() {
        let now = OffsetDateTime::now_utc();
        let mut meta = SecretMeta::defaults(now);
        meta.template = aegis_core::transform::Template::parse("{{.a}}{{.a}}{{.a}}").unwrap();
        let tiny = Budget { max_output_bytes: 2, ..Budget::default() };
        let e = entry(meta, &tiny).deliverable(now).unwrap_err();
        assert_eq!(e.name, "billing");
        assert!(e.to_string().contains("cannot be rendered") && !e.to_string().contains("\"a\""), "{e}");
    }
}
