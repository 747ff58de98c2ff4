//! Running the Safe: `aegis server` (production identity) and `aegis dev`
//! (a throw-away local CA on one machine).

pub mod adapters;
pub mod dev;
pub mod kube;
pub mod policies;
pub mod replication;
pub mod server;
pub mod vsecm_env;
