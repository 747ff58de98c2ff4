//! Value parsers shared by the settings of several commands.

/// The parser of path settings where empty means unset (`KUBECONFIG=""`, as kubectl
/// reads it): clap's own path parser refuses an empty value, which stopped start-up;
/// this one passes it on, and the setting's reader treats an empty path as absent.
pub fn path_or_empty() -> impl clap::builder::TypedValueParser<Value = std::path::PathBuf> {
    use clap::builder::TypedValueParser as _;
    clap::builder::OsStringValueParser::new().map(std::path::PathBuf::from)
}
