//! Where sealed records live.

use crate::StoreError;

/// Entries that could not be read, as (name or file, reason).
pub type Unreadable = Vec<(String, String)>;

/// Why a group write failed, and which of its records were stored anyway
/// (empty unless replacing the records failed midway).
#[derive(Debug)]
pub struct GroupError {
    /// Names whose new record is in place (in the order given).
    pub stored: Vec<String>,
    /// The failure.
    pub error: StoreError,
}

/// A durable home for sealed records, one per secret name.
///
/// Methods block; the store calls them from blocking threads.
pub trait Backend: Send + Sync + 'static {
    /// The names of every record. Entries whose name cannot be decoded are
    /// reported in the second list as (file, reason) instead of failing the load.
    fn list(&self) -> Result<(Vec<String>, Unreadable), StoreError>;

    /// One record's sealed bytes.
    fn read(&self, name: &str) -> Result<Vec<u8>, StoreError>;

    /// Writes the records durably and atomically per record: when this returns
    /// `Ok` for a record, it survives a crash; when it fails, the previous record is intact.
    fn write_batch(&self, records: &[(String, Vec<u8>)]) -> Vec<Result<(), StoreError>>;

    /// Writes the records all or nothing: every record goes to a durable
    /// temporary file first, and if any of those fails, all are removed and
    /// nothing is stored. Only if replacing the records then fails midway are
    /// some stored: the error lists exactly which.
    fn write_group(&self, records: &[(String, Vec<u8>)]) -> Result<(), GroupError>;

    /// Moves a record that cannot be opened out of the way, keeping its bytes for inspection.
    fn quarantine(&self, name: &str, reason: &str) -> Result<(), StoreError>;

    /// A short description for logs (e.g. the directory path).
    fn describe(&self) -> String;
}
