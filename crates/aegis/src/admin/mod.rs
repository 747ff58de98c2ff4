//! The admin commands: one function per `aegis` admin subcommand, plus the
//! Sentinel's tools (the VSecM-compatible `safe` command and
//! `aegis sentinel init`), and `aegis import` from VSecM.

pub mod import;
pub mod safe;
pub mod secrets;
pub mod sentinel;
pub mod state;
