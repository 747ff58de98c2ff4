//! Value parsers shared by the settings of several commands.

/// The parser of path settings where empty means unset (`KUBECONFIG=""`, as kubectl
/// reads it): clap's own path parser refuses an empty value, which stopped start-up;
/// this one passes it on, and the setting's reader treats an empty path as absent.
pub fn path_or_empty() -> impl clap::builder::TypedValueParser<Value = std::path::PathBuf> {
    use clap::builder::TypedValueParser as _;
    clap::builder::OsStringValueParser::new().map(std::path::PathBuf::from)
}

/// The delivery format of a secret, as `aegis put -f` takes it: checked here,
/// so that a typo is refused with the choices before anything is read or sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "lowercase")]
pub enum FormatArg {
    /// A JSON object, or the value itself when the result is not one.
    Json,
    /// YAML converted from a JSON object result.
    Yaml,
    /// The template output (or the value) untouched.
    Raw,
}

impl From<FormatArg> for aegis_core::transform::Format {
    fn from(f: FormatArg) -> Self {
        use aegis_core::transform::Format;
        match f {
            FormatArg::Json => Format::Json,
            FormatArg::Yaml => Format::Yaml,
            FormatArg::Raw => Format::Raw,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Put {
        #[arg(short = 'f', long, value_enum, ignore_case = true)]
        format: Option<FormatArg>,
    }

    #[test]
    fn formats_parse_in_any_case_and_a_typo_names_the_choices() {
        let f = |arg: &str| Put::try_parse_from(["put", "-f", arg]).map(|p| p.format);
        assert_eq!(f("yaml").unwrap(), Some(FormatArg::Yaml));
        assert_eq!(f("RAW").unwrap(), Some(FormatArg::Raw));
        let e = f("yml").unwrap_err().to_string();
        assert!(e.contains("'yml'") && e.contains("json, yaml, raw"), "{e}");
        for arg in [FormatArg::Json, FormatArg::Yaml, FormatArg::Raw] {
            let wire = aegis_core::transform::Format::from(arg).as_str();
            assert_eq!(f(wire).unwrap(), Some(arg), "the wire word is the flag's word");
        }
    }
}
