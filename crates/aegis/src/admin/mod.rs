//! The admin commands: one function per `aegis` admin subcommand, plus the
//! Sentinel's tools (the VSecM-compatible `safe` command and
//! `aegis sentinel init`), `aegis import` from VSecM, and `aegis audit` (reads the
//! Safe's audit trail).

pub mod audit;
pub mod backup;
pub mod import;
pub mod policy;
pub mod safe;
pub mod secrets;
pub mod sentinel;
pub mod state;
pub mod store;
