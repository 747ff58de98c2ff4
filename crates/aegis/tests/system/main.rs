//! The system tests: the real `aegis` and `safe` binaries started as processes and
//! reached over real mTLS, with real SPIRE, Kubernetes and Helm where a test needs them.
//!
//! One test binary, so the shared harness (`tests/common`) and the crates under test are
//! linked once instead of once per file. Each module is one former test file; a test's
//! name is `module::test`, so `cargo test -p aegis --test system kube_secrets::` runs one
//! module. A new system test goes into a new module here (see CONTRIBUTING.md).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// The harness stays at tests/common so a single-file test under tests/ can still use it.
#[path = "../common/mod.rs"]
mod common;

mod api_contract;
mod audit;
mod backup;
mod cli_e2e;
mod delivery;
mod durability;
mod federation;
mod flood;
mod go_templates;
mod hardening;
mod helm_chart;
mod import_vsecm;
mod kube_defaults;
mod kube_harness;
mod kube_rootkey;
mod kube_secrets;
mod limits;
mod names;
mod policies;
mod postgres_store;
mod replication;
mod security;
mod sentinel;
mod spire;
mod storage_limits;
mod templates_attack;
mod vsecm_env;
mod vsecm_sdk;
mod write_status;
