//! Which link the daemon uses (`--link`): the FunctionFS gadget or a stream link (`tcp://…`,
//! `unix-listen://…`, `stdio`, …). URL parsing and the stream link task itself
//! (`qbkit_link::run_stream`) come from the shared `qbkit-link` crate, so the host accepts exactly
//! the same syntax and runs the same task.

use qbkit_link::{LinkError, LinkUrl};

/// Which link the daemon uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkSpec {
    /// The USB FunctionFS interface (default).
    FunctionFs,
    /// A stream link.
    Stream(LinkUrl),
}

impl LinkSpec {
    /// Every form `--link` accepts: the one list `run --help` and parse errors show.
    pub fn forms() -> Vec<&'static str> {
        std::iter::once("functionfs")
            .chain(LinkUrl::FORMS)
            .collect()
    }

    /// The `--link` help text, built from [`forms`](Self::forms).
    pub fn help() -> String {
        format!(
            "The link to the host: functionfs (the USB gadget; default) or a stream link. One of: {}",
            Self::forms().join(", ")
        )
    }

    /// Parses `functionfs` or a stream link URL.
    pub fn parse(s: &str) -> Result<Self, LinkSpecError> {
        if s == "functionfs" || s == "ffs" || s == "usb" {
            Ok(Self::FunctionFs)
        } else {
            match LinkUrl::parse(s) {
                Ok(u) => Ok(Self::Stream(u)),
                Err(LinkError::BadUrl { url, reason }) => Err(LinkSpecError { url, reason }),
                Err(_) => Err(LinkSpecError {
                    url: s.to_owned(),
                    reason: "not a link",
                }),
            }
        }
    }
}

/// A `--link` value that does not parse; the message lists every accepted form.
#[derive(Debug, thiserror::Error)]
#[error("invalid link {url:?}: {reason}; expected one of: {}", LinkSpec::forms().join(", "))]
pub struct LinkSpecError {
    /// The text given.
    pub url: String,
    /// What is wrong.
    pub reason: &'static str,
}

impl std::fmt::Display for LinkSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::FunctionFs => f.write_str("functionfs"),
            Self::Stream(u) => u.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_spec_parses_every_form() {
        assert_eq!(LinkSpec::parse("functionfs").unwrap(), LinkSpec::FunctionFs);
        for s in qbkit_link::testing::URLS {
            let l = LinkSpec::parse(s).unwrap();
            assert_eq!(l.to_string(), s);
        }
        for bad in qbkit_link::testing::BAD_URLS {
            assert!(LinkSpec::parse(bad).is_err(), "{bad} should not parse");
        }
    }
}
