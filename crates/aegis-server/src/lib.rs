//! The Aegis Safe: an HTTPS server that accepts only mutual TLS with SPIFFE
//! X.509-SVIDs and serves the VSecM-compatible API and the native `/v1` API.
//!
//! - [`serve`] runs the accept loop: TLS handshake (with a deadline), the
//!   caller's SPIFFE ID and role decided once per connection, then HTTP/1.1 or
//!   HTTP/2 with head and request deadlines.
//! - [`routes`] is the one table of routes; [`router`] builds the axum router
//!   from it; [`error`] maps every failure to a status and a message.
//! - [`policy`] decides each request by the policies in force and serves the
//!   routes that manage them.
//! - [`health`] serves probes and metrics on a separate plain port.

pub mod audit;
pub mod auth;
pub mod backup;
pub mod error;
mod extract;
pub mod health;
pub mod inflight;
pub mod limits;
pub mod metrics;
pub mod native;
pub mod path;
pub mod policies;
pub mod policy;
pub mod quota;
pub mod replication;
pub mod router;
pub mod routes;
pub mod serve;
pub mod state;
mod sync;
mod tlsconn;
pub mod vsecm;
pub mod watch;
pub mod watchconn;

pub use router::{router, RouteLabel};
pub use routes::{path_label, route_label};
pub use serve::{serve, start, Running};
pub use state::{Adapters, AppState, RootKeyMode, Settings};
