//! One Sentinel action: what one `safe` command or one init-command block asks
//! the Safe to do.
//!
//! `safe`'s flags, an init-command block and `aegis sentinel init`'s keystone
//! write all become a [`SentinelAction`]; the admin CLI turns it into the wire
//! request ([`SentinelAction::into_upsert`]). The secret value and the root key
//! input are held in [`SecretValue`]s: zeroized on drop, never in `Debug`.

use crate::api::VsecmUpsert;
use crate::secret::SecretValue;

/// One thing the Sentinel asks of the Safe, with VSecM's `safe` flags as fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SentinelAction {
    /// `-w` / `w:`: workload (secret) names.
    pub workloads: Vec<String>,
    /// `-n` / `n:`: Kubernetes namespaces; empty means `default`.
    pub namespaces: Vec<String>,
    /// `-s` / `s:`: the value, possibly a `gen:` pattern or (with `encrypt`) a ciphertext.
    pub secret: Option<SecretValue>,
    /// `-t` / `t:`: the Go template.
    pub template: Option<String>,
    /// `-f` / `f:`: the format, as written.
    pub format: Option<String>,
    /// `-e` / `e:`: the value is (or, without workloads, should become) a ciphertext.
    pub encrypt: bool,
    /// `-d` / `d:`: delete the secrets of `workloads`.
    pub delete: bool,
    /// `-i` / `i:`: the root key parts to hand to a Safe waiting for them.
    pub input_keys: Option<SecretValue>,
    /// `-N` / `N:`: not before (`now` or RFC 3339), as written.
    pub not_before: Option<String>,
    /// `-E` / `E:`: expires (`never` or RFC 3339), as written.
    pub expires: Option<String>,
}

impl SentinelAction {
    /// Writes `value` to `workloads` with every other setting at its default.
    pub fn write(workloads: Vec<String>, value: SecretValue) -> Self {
        Self { workloads, secret: Some(value), ..Self::default() }
    }

    /// The upsert VSecM's `safe` would send for this action, with `value` (the
    /// secret after `gen:` expansion) and VSecM's defaults for what is not
    /// set: namespace `default`, `now`, `never`.
    pub fn into_upsert(self, value: SecretValue) -> VsecmUpsert {
        let namespaces = if self.namespaces.is_empty() { vec!["default".to_owned()] } else { self.namespaces };
        VsecmUpsert {
            workloads: (!self.workloads.is_empty()).then_some(self.workloads),
            namespaces: Some(namespaces),
            value,
            template: self.template.unwrap_or_default(),
            format: self.format.unwrap_or_default(),
            encrypt: self.encrypt,
            not_before: self.not_before.unwrap_or_else(|| "now".to_owned()),
            expires: self.expires.unwrap_or_else(|| "never".to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upsert_takes_vsecms_defaults() {
        let up =
            SentinelAction::write(vec!["billing".into()], SecretValue::new("x")).into_upsert(SecretValue::new("y"));
        assert_eq!(up.workloads, Some(vec!["billing".to_owned()]));
        assert_eq!(up.namespaces, Some(vec!["default".to_owned()]));
        assert_eq!((up.value.expose(), up.template.as_str(), up.format.as_str()), ("y", "", ""));
        assert_eq!((up.not_before.as_str(), up.expires.as_str(), up.encrypt), ("now", "never", false));
    }

    #[test]
    fn an_upsert_keeps_what_was_set() {
        let action = SentinelAction {
            namespaces: vec!["payments".into()],
            template: Some("{{.a}}".into()),
            format: Some("yaml".into()),
            encrypt: true,
            not_before: Some("2030-01-01T00:00:00Z".into()),
            expires: Some("2031-01-01T00:00:00Z".into()),
            ..SentinelAction::default()
        };
        let up = action.into_upsert(SecretValue::new("v"));
        assert_eq!(up.workloads, None, "no workloads: encrypt-only");
        assert_eq!(up.namespaces, Some(vec!["payments".to_owned()]));
        assert_eq!((up.template.as_str(), up.format.as_str(), up.encrypt), ("{{.a}}", "yaml", true));
        assert_eq!((up.not_before.as_str(), up.expires.as_str()), ("2030-01-01T00:00:00Z", "2031-01-01T00:00:00Z"));
    }

    #[test]
    fn debug_never_shows_the_value_or_the_root_key() {
        let action = SentinelAction {
            input_keys: Some(SecretValue::new("AGE-SECRET-KEY-1QQQ")),
            ..SentinelAction::write(vec!["a".into()], SecretValue::new("hunter2"))
        };
        let shown = format!("{action:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("AGE-SECRET-KEY"), "{shown}");
    }
}
