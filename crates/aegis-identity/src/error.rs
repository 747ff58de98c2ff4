//! The one error type of this crate.

use std::io;
use std::path::{Path, PathBuf};

use aegis_core::{InvalidInput, SpiffeId};

/// Everything that can go wrong while loading, issuing or using an identity.
///
/// Messages name the file, endpoint or SPIFFE ID involved and say what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: io::Error,
    },

    /// A file or directory could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: io::Error,
    },

    /// Another error, attributed to the file whose content caused it.
    #[error("{}: {source}", path.display())]
    InFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: Box<IdentityError>,
    },

    /// PEM input held no certificate.
    #[error(
        "the {what} holds no PEM certificate; expected one or more \
         '-----BEGIN CERTIFICATE-----' blocks"
    )]
    NoCertificate {
        /// Which input ("certificate chain" or "trust bundle").
        what: &'static str,
    },

    /// PEM input could not be decoded.
    #[error("the {what} is not valid PEM: {reason}")]
    Pem {
        /// Which input.
        what: &'static str,
        /// The decoder's reason.
        reason: String,
    },

    /// The private key could not be decoded or is of an unsupported type.
    #[error(
        "the private key is not usable: {reason}; expected one PEM block \
         'PRIVATE KEY' (PKCS#8), 'EC PRIVATE KEY' or 'RSA PRIVATE KEY'"
    )]
    Key {
        /// Why.
        reason: String,
    },

    /// The private key belongs to a different certificate.
    #[error(
        "the private key does not belong to the certificate of {spiffe_id}; \
         the key and certificate probably come from different rotations, write both again"
    )]
    KeyMismatch {
        /// The SPIFFE ID in the certificate.
        spiffe_id: SpiffeId,
    },

    /// A certificate could not be parsed or is unfit for its role.
    #[error("the {what} is not a usable X.509 certificate: {reason}")]
    Certificate {
        /// Which certificate.
        what: &'static str,
        /// Why.
        reason: String,
    },

    /// A certificate carries no usable SPIFFE ID.
    #[error(
        "the certificate is not an X.509-SVID: {reason}; an X.509-SVID carries exactly one \
         URI SAN of the form spiffe://<trust-domain>/<path>"
    )]
    NotAnSvid {
        /// Why.
        reason: String,
    },

    /// A peer of a federated trust domain, but no bundle of that domain is known
    /// (the SPIRE agent delivers none to this entry, and no bundle file names it).
    #[error(
        "peer {peer} is in a federated trust domain, but no bundle of that domain is known: the SPIRE entry must \
         federate with it (federatesWith), or a bundle file must be given for it"
    )]
    NoFederatedBundle {
        /// The peer's SPIFFE ID.
        peer: SpiffeId,
    },

    /// A peer belongs to a trust domain other than ours.
    #[error(
        "peer {peer} is not in trust domain {expected}, and its trust domain is not one this Safe federates with \
         (--federate-with); it is refused"
    )]
    ForeignTrustDomain {
        /// The peer's SPIFFE ID.
        peer: SpiffeId,
        /// Our trust domain.
        expected: String,
    },

    /// The server's SPIFFE ID is not the one the client expects.
    #[error(
        "server {0} is not authorized as the Safe; check the Safe SPIFFE ID setting \
         (VSECM_SPIFFEID_PREFIX_SAFE) and the address being contacted"
    )]
    UnauthorizedServer(SpiffeId),

    /// A trust domain name is not valid.
    #[error("invalid trust domain {value:?}: {source}")]
    InvalidTrustDomain {
        /// The rejected value.
        value: String,
        /// Why.
        #[source]
        source: InvalidInput,
    },

    /// A SPIFFE ID cannot be issued by this CA.
    #[error("cannot issue an SVID for {spiffe_id}: {reason}")]
    Issue {
        /// The requested SPIFFE ID.
        spiffe_id: String,
        /// Why.
        reason: String,
    },

    /// The development CA on disk is unusable.
    #[error("the development CA in {} is unusable: {reason}", dir.display())]
    DevCa {
        /// Its directory.
        dir: PathBuf,
        /// Why, and what to do.
        reason: String,
    },

    /// The Workload API did not deliver a usable identity.
    #[error(
        "cannot get an X.509-SVID from the SPIFFE Workload API at {endpoint}: {reason}; \
         check that the SPIRE agent runs, its socket is mounted, and this workload is registered"
    )]
    WorkloadApi {
        /// The endpoint, e.g. `unix:///spire-agent-socket/spire-agent.sock`.
        endpoint: String,
        /// Why.
        reason: String,
    },

    /// Identity settings are inconsistent.
    #[error("invalid identity settings: {0}")]
    Config(String),

    /// rustls refused the configuration.
    #[error("cannot build the TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

impl IdentityError {
    /// Attributes this error to `path`.
    pub(crate) fn in_file(self, path: &Path) -> Self {
        Self::InFile { path: path.to_owned(), source: Box::new(self) }
    }

    pub(crate) fn read(path: &Path, source: io::Error) -> Self {
        Self::Read { path: path.to_owned(), source }
    }

    pub(crate) fn write(path: &Path, source: io::Error) -> Self {
        Self::Write { path: path.to_owned(), source }
    }
}
