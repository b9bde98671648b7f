//! Contract §4's reasons, and a refused message's account of itself.

use std::fmt;

/// Why a message was refused: the `<reason>` of `truebit.dlq.<reason>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    TooLarge,
    Malformed,
    Schema,
    Clock,
    Unauthorized,
    RateLimited,
}

impl Reason {
    pub const ALL: [Reason; 6] = [
        Reason::TooLarge,
        Reason::Malformed,
        Reason::Schema,
        Reason::Clock,
        Reason::Unauthorized,
        Reason::RateLimited,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::TooLarge => "too_large",
            Reason::Malformed => "malformed",
            Reason::Schema => "schema",
            Reason::Clock => "clock",
            Reason::Unauthorized => "unauthorized",
            Reason::RateLimited => "rate_limited",
        }
    }

    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused message: the reason, the JSON path of the first bad field (for `schema`), and a
/// sentence for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: Reason,
    pub path: Option<String>,
    pub detail: String,
}

impl Rejection {
    /// A refusal without a field to point at: every reason but `schema`, which names one.
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Rejection {
            reason,
            path: None,
            detail: detail.into(),
        }
    }

    pub(crate) fn schema(path: impl Into<String>, detail: impl Into<String>) -> Self {
        Rejection {
            reason: Reason::Schema,
            path: Some(path.into()),
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(path) => write!(f, "{} at {}: {}", self.reason, path, self.detail),
            None => write!(f, "{}: {}", self.reason, self.detail),
        }
    }
}
