//! The error of the config parsers in this crate.

/// Why a mesh config, values or injector config could not be used. The caller adds the file name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The text is not YAML (or JSON) of the expected shape; the message carries line and column.
    #[error("not valid YAML for {what}: {message}")]
    Yaml {
        /// What the text was meant to be (`MeshConfig`, `values` …).
        what: &'static str,
        /// The parser's message, with its location.
        message: String,
    },
    /// A field has a value of the wrong type or outside its language.
    #[error("{field}: {message}")]
    Field {
        /// Dotted path of the field (`global.proxy.excludeInboundPorts`).
        field: String,
        /// What is wrong, quoting the value.
        message: String,
    },
}

impl ConfigError {
    pub(crate) fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Field {
            field: field.into(),
            message: message.into(),
        }
    }

    pub(crate) fn yaml(what: &'static str, err: impl std::fmt::Display) -> Self {
        ConfigError::Yaml {
            what,
            message: err.to_string(),
        }
    }

    /// The same error with `prefix.` put before its field path (for configs nested in others).
    pub fn nested(self, prefix: &str) -> Self {
        match self {
            ConfigError::Field { field, message } => ConfigError::Field {
                field: format!("{prefix}.{field}"),
                message,
            },
            ConfigError::Yaml { what, message } => ConfigError::Yaml {
                what,
                message: format!("{prefix}: {message}"),
            },
        }
    }
}
