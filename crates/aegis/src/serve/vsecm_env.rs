//! VSecM's `VSECM_*` environment variables at the Safe's start.
//!
//! A VSecM deployment sets many of them, most for other components (the
//! sidecar, the init container, the Sentinel) or for machinery Aegis does not
//! have (polling intervals, channel sizes). Each variable VSecM v0.28.1 reads
//! is in [`VARIABLES`] with what `aegis server` does with it; one that is set
//! and would change behaviour Aegis cannot give stops the start (exit 64)
//! naming it and what to do, and so does one that is not in the table (a typo
//! silently ignored is how a setting gets lost). docs/VSECM-COMPATIBILITY.md
//! ("`VSECM_*` variables") is the same table for people.

use crate::exit::{CliError, CONFIG};

/// What `aegis server` does with a VSecM variable.
#[derive(Debug, Clone, Copy)]
pub enum Treatment {
    /// Read by the Safe or by another Aegis command (named).
    Honoured(&'static str),
    /// Meaningless for the Safe and harmless: logged at start, else ignored.
    Ignored(&'static str),
    /// Accepted only with the value Aegis gives; else refused with the reason.
    Only(fn(&str) -> Result<(), String>),
}

/// Whether VSecM reads `value` as true (its `val.True`: "true", any case, trimmed).
pub fn vsecm_true(value: &str) -> bool {
    value.trim().eq_ignore_ascii_case("true")
}

fn not_fips(v: &str) -> Result<(), String> {
    if vsecm_true(v) {
        return Err(
            "Aegis's cryptography (XChaCha20-Poly1305, age) is not FIPS 140 validated; unset it, or set it to \
                    false, only if a validated module is not required"
                .to_owned(),
        );
    }
    Ok(())
}

fn file_store(v: &str) -> Result<(), String> {
    match v.trim() {
        "" | "file" => Ok(()),
        other => Err(format!(
            "the backing store '{other}' is not supported: Aegis keeps encrypted records in its data directory \
             (--data-dir); unset it or set it to file"
        )),
    }
}

fn prefix(fixed: &'static str) -> impl Fn(&str) -> Result<(), String> {
    move |v: &str| match v {
        "" => Ok(()),
        given if given == fixed => Ok(()),
        given => Err(format!(
            "Aegis's prefix is fixed to '{fixed}', not '{given}'; unset it, and rename the secrets written with the \
             other prefix"
        )),
    }
}

fn k8s_prefix(v: &str) -> Result<(), String> {
    prefix("k8s:")(v)
}

fn raw_prefix(v: &str) -> Result<(), String> {
    prefix("raw:")(v)
}

fn manual_mode(v: &str) -> Result<(), String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "" | "true" | "false" => Ok(()),
        _ => Err("must be true or false".to_owned()),
    }
}

fn sync_deleted(v: &str) -> Result<(), String> {
    manual_mode(v)
}

use Treatment::{Honoured, Ignored, Only};

/// Every `VSECM_*` variable VSecM v0.28.1 reads (its `core/constants/env`,
/// and four older or test-only names), with what `aegis server` does.
pub const VARIABLES: &[(&str, Treatment)] = &[
    (
        "VSECM_BACKOFF_DELAY",
        Ignored("VSecM's retry backoff of its clients; Aegis's commands retry with their own bounded backoff"),
    ),
    ("VSECM_BACKOFF_MAX_RETRIES", Ignored("VSecM's retry backoff of its clients")),
    ("VSECM_BACKOFF_MAX_WAIT", Ignored("VSecM's retry backoff of its clients")),
    ("VSECM_BACKOFF_MODE", Ignored("VSecM's retry backoff of its clients")),
    ("VSECM_INIT_CONTAINER_POLL_INTERVAL", Honoured("aegis init")),
    ("VSECM_INIT_CONTAINER_WAIT_BEFORE_EXIT", Honoured("aegis init")),
    ("VSECM_KEYGEN_DECRYPT", Ignored("VSecM's keygen tool; Aegis reads VSecM's data with `aegis import vsecm`")),
    ("VSECM_KEYGEN_EXPORTED_SECRET_PATH", Ignored("VSecM's keygen tool")),
    ("VSECM_KEYGEN_ROOT_KEY_PATH", Ignored("VSecM's keygen tool")),
    (
        "VSECM_LOG_LEVEL",
        Honoured(
            "aegis server: the log level when AEGIS_LOG is not set (1-2 error, 3 warn, 4-5 info, 6 debug, 7 trace)",
        ),
    ),
    ("VSECM_LOG_SECRET_FINGERPRINTS", Ignored("Aegis never logs anything derived from a secret value")),
    ("VSECM_NAMESPACE_SYSTEM", Honoured("aegis server: the namespace of the root key Secret")),
    ("VSECM_PROBE_LIVENESS_PORT", Honoured("aegis server: the health port when --health-listen is not given")),
    (
        "VSECM_PROBE_READINESS_PORT",
        Honoured("aegis server: must be the liveness port: /healthz and /readyz share one port"),
    ),
    ("VSECM_ROOT_KEY_INPUT_MODE_MANUAL", Only(manual_mode)),
    ("VSECM_ROOT_KEY_NAME", Honoured("aegis server: the name of the root key Secret")),
    (
        "VSECM_ROOT_KEY_PATH",
        Ignored("VSecM's mounted copy of the root key Secret; Aegis reads the Secret through the Kubernetes API"),
    ),
    ("VSECM_SAFE_BACKING_STORE", Only(file_store)),
    (
        "VSECM_SAFE_BOOTSTRAP_TIMEOUT",
        Ignored("Aegis waits for its SVID and the Kubernetes API with its own bounds (AEGIS_KUBE_START_WAIT_MS)"),
    ),
    ("VSECM_SAFE_DATA_PATH", Honoured("aegis server: the data directory when --data-dir is not given")),
    ("VSECM_SAFE_ENDPOINT_URL", Honoured("aegis and safe (clients): the Safe's URL")),
    ("VSECM_SAFE_FIPS_COMPLIANT", Only(not_fips)),
    (
        "VSECM_SAFE_IV_INITIALIZATION_INTERVAL",
        Ignored("Aegis's records use random 192-bit nonces; there is no IV counter to re-seed"),
    ),
    ("VSECM_SAFE_K8S_SECRET_BUFFER_SIZE", Ignored("a channel size inside VSecM")),
    ("VSECM_SAFE_ROOT_KEY_STORE", Honoured("aegis server: k8s selects the root key Secret")),
    ("VSECM_SAFE_SECRET_BACKUP_COUNT", Ignored("Aegis keeps versions instead (AEGIS_MAX_VERSIONS)")),
    ("VSECM_SAFE_SECRET_BUFFER_SIZE", Ignored("a channel size inside VSecM")),
    ("VSECM_SAFE_SECRET_DELETE_BUFFER_SIZE", Ignored("a channel size inside VSecM")),
    (
        "VSECM_SAFE_SOURCE_ACQUISITION_TIMEOUT",
        Ignored("Aegis waits for its SVID from the Workload API with its own bound"),
    ),
    ("VSECM_SAFE_STORE_WORKLOAD_SECRET_AS_K8S_SECRET_PREFIX", Only(k8s_prefix)),
    ("VSECM_SAFE_SYNC_DELETED_SECRETS", Only(sync_deleted)),
    (
        "VSECM_SAFE_SYNC_EXPIRED_SECRETS",
        Ignored("the Kubernetes copies always follow the validity window (docs/KUBERNETES.md)"),
    ),
    (
        "VSECM_SAFE_SYNC_INTERPOLATED_K8S_SECRETS",
        Ignored("a template always applies to the Kubernetes copies (docs/KUBERNETES.md, Data)"),
    ),
    (
        "VSECM_SAFE_SYNC_ROOT_KEY_INTERVAL",
        Ignored("Aegis reads the root key Secret at start and rotation, it does not poll"),
    ),
    (
        "VSECM_SAFE_SYNC_SECRETS_INTERVAL",
        Ignored("the Kubernetes sync follows each write and watches the copies, it does not poll"),
    ),
    ("VSECM_SAFE_TLS_PORT", Honoured("aegis server: the port when --listen is not given")),
    ("VSECM_SENTINEL_INIT_COMMAND_PATH", Honoured("aegis sentinel init")),
    (
        "VSECM_SENTINEL_INIT_COMMAND_WAIT_AFTER_INIT_COMPLETE",
        Ignored("the Sentinel's; `aegis sentinel init` does not wait"),
    ),
    ("VSECM_SENTINEL_INIT_COMMAND_WAIT_BEFORE_EXEC", Ignored("the Sentinel's; `aegis sentinel init` does not wait")),
    ("VSECM_RELAY_SERVER_URL", Ignored("VSecM's relay, which Aegis does not have")),
    ("VSECM_SENTINEL_OIDC_ENABLE_RESOURCE_SERVER", Ignored("the Sentinel's OIDC server, which Aegis does not have")),
    ("VSECM_SENTINEL_OIDC_PROVIDER_BASE_URL", Ignored("the Sentinel's OIDC server, which Aegis does not have")),
    ("VSECM_SENTINEL_OIDC_RESOURCE_SERVER_PORT", Ignored("the Sentinel's OIDC server, which Aegis does not have")),
    (
        "VSECM_SENTINEL_SECRET_GENERATION_PREFIX",
        Ignored("the Sentinel's; `safe` and `aegis sentinel init` know gen: only"),
    ),
    ("VSECM_SAFE_RAW_SECRET_PREFIX", Only(raw_prefix)),
    ("VSECM_SIDECAR_ERROR_THRESHOLD", Ignored("the polling sidecar's; `aegis sidecar` is pushed changes")),
    (
        "VSECM_SIDECAR_EXPONENTIAL_BACKOFF_MULTIPLIER",
        Ignored("the polling sidecar's; `aegis sidecar` is pushed changes"),
    ),
    ("VSECM_SIDECAR_MAX_POLL_INTERVAL", Ignored("the polling sidecar's; `aegis sidecar` is pushed changes")),
    ("VSECM_SIDECAR_POLL_INTERVAL", Honoured("aegis sidecar")),
    ("VSECM_SIDECAR_SECRETS_PATH", Honoured("aegis sidecar")),
    ("VSECM_SIDECAR_SUCCESS_THRESHOLD", Ignored("the polling sidecar's; `aegis sidecar` is pushed changes")),
    ("VSECM_SPIFFEID_PREFIX_RELAY_CLIENT", Ignored("VSecM's relay, which Aegis does not have")),
    ("VSECM_SPIFFEID_PREFIX_RELAY_SERVER", Ignored("VSecM's relay, which Aegis does not have")),
    ("VSECM_SPIFFEID_PREFIX_SAFE", Honoured("every Aegis command: the role rules")),
    ("VSECM_SPIFFEID_PREFIX_SENTINEL", Honoured("every Aegis command: the role rules")),
    ("VSECM_SPIFFEID_PREFIX_SCOUT", Honoured("every Aegis command: the role rules")),
    ("VSECM_SPIFFEID_PREFIX_CLERK", Ignored("VSecM's clerk, which Aegis does not have")),
    ("VSECM_SPIFFEID_PREFIX_WORKLOAD", Honoured("every Aegis command: the role rules")),
    ("VSECM_WORKLOAD_NAME_REGEXP", Honoured("every Aegis command: the role rules")),
    (
        "VSECM_NAME_REGEXP_FOR_WORKLOAD",
        Ignored("an old name of VSECM_WORKLOAD_NAME_REGEXP, no longer read by VSecM either"),
    ),
    (
        "VSECM_SAFE_REMOVE_LINKED_K8S_SECRETS",
        Ignored("an old name of VSECM_SAFE_SYNC_DELETED_SECRETS, no longer read by VSecM either"),
    ),
    ("VSECM_SENTINEL_LOGGER_URL", Ignored("the Sentinel's log relay; Aegis's audit trail is docs/AUDIT.md")),
    ("VSECM_SYSTEM_NAMESPACE", Ignored("an old name of VSECM_NAMESPACE_SYSTEM, no longer read by VSecM either")),
];

/// Checks every `VSECM_*` variable in `vars`: `Err` (exit 64) names the first
/// one refused and what to do; the ignored ones that are set are logged.
pub fn check<'a>(vars: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<(), CliError> {
    for (name, value) in vars {
        if !name.starts_with("VSECM_") {
            continue;
        }
        match VARIABLES.iter().find(|(n, _)| *n == name).map(|(_, t)| *t) {
            None => {
                return Err(CliError::new(
                    CONFIG,
                    format!(
                        "{name} is not a VSecM v0.28.1 variable Aegis knows, so it would be ignored: check its \
                         spelling, or unset it (docs/VSECM-COMPATIBILITY.md lists every VSECM_* variable)"
                    ),
                ))
            }
            Some(Only(accepts)) => accepts(value).map_err(|why| CliError::new(CONFIG, format!("{name}: {why}")))?,
            Some(Ignored(why)) => tracing::info!(variable = name, why, "VSecM variable ignored"),
            Some(Honoured(_)) => {}
        }
    }
    Ok(())
}

/// The `tracing` filter of VSecM's log level (0 to 7; VSecM logs at warn for
/// 0 and for anything else it cannot read).
pub fn log_filter(level: &str) -> &'static str {
    match level.trim().parse::<u8>() {
        Ok(1 | 2) => "error",
        Ok(4 | 5) => "info",
        Ok(6) => "debug",
        Ok(7) => "trace",
        _ => "warn",
    }
}

/// The port of VSecM's `:PORT` (or `HOST:PORT`) probe setting.
pub fn probe_port(name: &str, value: &str) -> Result<u16, CliError> {
    value
        .trim()
        .rsplit_once(':')
        .map_or(value.trim(), |(_, p)| p)
        .parse::<u16>()
        .map_err(|_| CliError::new(CONFIG, format!("{name} must look like ':8081', not '{value}'")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_variable_is_listed_once() {
        let mut names: Vec<&str> = VARIABLES.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(names.len(), before, "a variable is listed twice");
        assert_eq!(before, 63);
    }

    #[test]
    fn harmless_and_honoured_variables_pass_and_the_others_are_refused_by_name() {
        let ok = [
            ("VSECM_LOG_LEVEL", "7"),
            ("VSECM_SAFE_FIPS_COMPLIANT", "false"),
            ("VSECM_SAFE_BACKING_STORE", "file"),
            ("VSECM_SAFE_SYNC_SECRETS_INTERVAL", "20s"),
            ("VSECM_SAFE_RAW_SECRET_PREFIX", "raw:"),
            ("PATH", "/bin"),
        ];
        check(ok).unwrap();
        for (name, value, says) in [
            ("VSECM_SAFE_FIPS_COMPLIANT", "True", "FIPS"),
            ("VSECM_SAFE_BACKING_STORE", "postgres", "data directory"),
            ("VSECM_SAFE_STORE_WORKLOAD_SECRET_AS_K8S_SECRET_PREFIX", "kube:", "'k8s:'"),
            ("VSECM_ROOT_KEY_INPUT_MODE_MANUAL", "yes please", "true or false"),
            ("VSECM_SAFE_TSL_PORT", ":8443", "spelling"),
        ] {
            let e = check([(name, value)]).err().unwrap();
            assert_eq!(e.code, CONFIG);
            assert!(e.message.contains(name) && e.message.contains(says), "{}", e.message);
        }
    }

    #[test]
    fn vsecm_log_levels_and_probe_ports_translate() {
        assert_eq!(log_filter("7"), "trace");
        assert_eq!(log_filter("3"), "warn");
        assert_eq!(log_filter("0"), "warn");
        assert_eq!(log_filter("junk"), "warn");
        assert_eq!(probe_port("P", ":8081").unwrap(), 8081);
        assert_eq!(probe_port("P", "127.0.0.1:9000").unwrap(), 9000);
        assert!(probe_port("P", ":http").unwrap_err().message.contains("P must look like"));
    }
}
