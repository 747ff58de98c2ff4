//! Times as VSecM writes them: RFC 3339 to the second, with `now` and `never`.

use time::format_description::well_known::Rfc3339;
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time};

use crate::error::InvalidInput;

/// VSecM's "never": 9999-12-31T23:59:59Z.
pub fn never() -> OffsetDateTime {
    match Date::from_calendar_date(9999, Month::December, 31) {
        Ok(d) => PrimitiveDateTime::new(d, Time::MAX)
            .assume_utc()
            .replace_nanosecond(0)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH),
        Err(_) => OffsetDateTime::UNIX_EPOCH,
    }
}

/// Formats a time as RFC 3339 in UTC, second precision (`2024-01-02T03:04:05Z`).
pub fn rfc3339(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC).replace_nanosecond(0).unwrap_or(t);
    t.format(&Rfc3339).unwrap_or_else(|_| "invalid-time".to_owned())
}

/// Parses `now`, `never` or an RFC 3339 time; `field` names the input in errors.
pub fn parse_time(field: &'static str, s: &str, now: OffsetDateTime) -> Result<OffsetDateTime, InvalidInput> {
    match s.trim() {
        "" | "now" => Ok(now),
        "never" => Ok(never()),
        t => OffsetDateTime::parse(t, &Rfc3339).map_err(|_| {
            InvalidInput::new(field, "must be 'now', 'never' or an RFC 3339 time such as 2030-01-31T12:00:00Z")
        }),
    }
}

/// When a secret may be delivered: from `not_before` to `expires_after`,
/// the end strictly later than the start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidityWindow {
    /// The first moment the secret is delivered.
    pub not_before: OffsetDateTime,
    /// The last moment the secret is delivered.
    pub expires_after: OffsetDateTime,
}

impl ValidityWindow {
    /// Parses `notBefore` (`now` when empty) and `expires` (`never` when
    /// empty) as VSecM writes them; refuses a window that ends before it
    /// starts, or ends at `now` (a secret expired as it is written).
    pub fn parse(not_before: &str, expires: &str, now: OffsetDateTime) -> Result<Self, InvalidInput> {
        let or = |s: &str, default| if s.trim().is_empty() { default } else { s.trim() }.to_owned();
        let not_before = parse_time("notBefore", &or(not_before, "now"), now)?;
        let expires_after = parse_time("expires", &or(expires, "never"), now)?;
        if expires_after <= not_before {
            return Err(InvalidInput::new("validity window", "expires must be later than notBefore"));
        }
        Ok(Self { not_before, expires_after })
    }
}

/// Serde helpers storing times as Unix nanoseconds (compact, lossless).
pub mod unix_nanos {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::OffsetDateTime;

    /// Serializes as an i128 of nanoseconds since the Unix epoch.
    pub fn serialize<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i128(t.unix_timestamp_nanos())
    }

    /// Deserializes from nanoseconds since the Unix epoch.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
        let n = i128::deserialize(d)?;
        OffsetDateTime::from_unix_timestamp_nanos(n).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses() {
        assert_eq!(rfc3339(never()), "9999-12-31T23:59:59Z");
        let now = OffsetDateTime::UNIX_EPOCH;
        assert_eq!(parse_time("nbf", "now", now).unwrap(), now);
        assert_eq!(parse_time("exp", "never", now).unwrap(), never());
        let t = parse_time("nbf", "2030-01-31T12:00:00Z", now).unwrap();
        assert_eq!(rfc3339(t), "2030-01-31T12:00:00Z");
        let e = parse_time("nbf", "tomorrow", now).unwrap_err().to_string();
        assert!(e.contains("nbf") && e.contains("RFC 3339"), "{e}");
    }

    #[test]
    fn a_window_is_parsed_once_and_never_ends_before_it_starts() {
        let now = OffsetDateTime::UNIX_EPOCH;
        let w = ValidityWindow::parse("", " ", now).unwrap();
        assert_eq!((w.not_before, w.expires_after), (now, never()));
        let w = ValidityWindow::parse("2030-01-01T00:00:00Z", "never", now).unwrap();
        assert_eq!(rfc3339(w.not_before), "2030-01-01T00:00:00Z");
        let e = ValidityWindow::parse("now", "1969-12-31T00:00:00Z", now).unwrap_err().to_string();
        assert!(e.contains("expires must be later than notBefore"), "{e}");
        let e = ValidityWindow::parse("now", "tomorrow", now).unwrap_err().to_string();
        assert!(e.contains("expires") && e.contains("RFC 3339"), "{e}");
    }
}
