//! What can go wrong installing or removing capture rules; each message says what to do.

use std::io;

/// An error of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `-m TPROXY` was asked for.
    #[error(
        "interception mode TPROXY is not supported yet: use REDIRECT (`-m REDIRECT`, the default)"
    )]
    TproxyUnsupported,

    /// `--run-validation` found no capture rules: the CNI plugin did not set them up.
    #[error(
        "no capture rules in this network namespace ({family} nat table has no {chain} chain): \
         the CNI plugin did not set up capture for this pod; check that Istio's CNI plugin is \
         installed on the node"
    )]
    NotCaptured {
        /// The family checked.
        family: crate::rules::Family,
        /// The chain looked for.
        chain: &'static str,
    },

    /// An iptables program is not on `PATH`.
    #[error(
        "{program} not found in PATH: install the iptables package \
         (Debian/Ubuntu: apt-get install iptables)"
    )]
    NotInstalled {
        /// The program looked for.
        program: &'static str,
    },

    /// The process may not change netfilter rules.
    #[error(
        "permission denied{detail}: installing capture rules needs CAP_NET_ADMIN; run as root, \
         or give the container the NET_ADMIN and NET_RAW capabilities"
    )]
    PermissionDenied {
        /// What refused, e.g. ` (iptables-restore: ... Permission denied (you must be root))`.
        detail: String,
    },

    /// iptables-restore refused the rules.
    #[error("{program} rejected the rules: {stderr}{at}")]
    Rejected {
        /// The program that failed.
        program: &'static str,
        /// What it printed.
        stderr: String,
        /// The line it named, as `\n  at line N: TEXT`, or empty.
        at: String,
    },

    /// A program could not be run or talked to.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: io::Error,
    },
}

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}
