//! What readers see of one secret, and the changes the writer applies.

use aegis_core::secret::{SecretDoc, SecretMeta, SecretValue};
use aegis_core::transform::{Budget, TemplateError};

/// What a workload receives, computed once per write (or load).
#[derive(Debug, Clone)]
pub enum Data {
    /// The transformation left the raw value unchanged (saves a copy).
    Same,
    /// The transformed value.
    Transformed(SecretValue),
    /// The stored template is over the template budget (it was stored by an
    /// older version, or the budget was lowered): the workload gets an error,
    /// never the raw value. The reason names the bound, never a value.
    Failed(String),
}

impl Data {
    /// Computes the view of `value` under `meta`'s template and format within
    /// `budget`; an error when the template is over the budget (the write
    /// should then be refused).
    pub fn compute(value: &SecretValue, meta: &SecretMeta, budget: &Budget) -> Result<Data, TemplateError> {
        let out = aegis_core::transform::transform(value.expose(), meta.template.as_deref(), meta.format, budget)?;
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
        let data = match (doc.live(), data) {
            (Some(_), Some(data)) => data,
            (Some((v, value)), None) => Data::compute(value, &v.meta, budget).unwrap_or_else(|e| {
                tracing::error!(
                    secret = %doc.name,
                    reason = %e.reason(),
                    "the stored template cannot be rendered within the template budget; \
                     the workload gets an error until the secret is written again"
                );
                Data::Failed(e.reason().to_owned())
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
    },
    /// Soft delete.
    Delete,
    /// Undo a soft delete.
    Undelete,
    /// Destroy one version's value.
    Destroy(u64),
    /// Write an earlier version again as the newest.
    Rollback(u64),
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
