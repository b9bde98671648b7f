//! The service's errors, and the one place that decides exit codes.

use crate::infra::topology::TopologyError;
use std::path::PathBuf;

/// What went wrong, worded for the operator, with the exit code it earns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach NATS at {url}: {source}; check that nats-server is running there (with -js) and that --nats-url / NATS_URL and the credentials are right")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error(
        "cannot read the NATS credentials file {path}: {source}; check --nats-creds / NATS_CREDS"
    )]
    Credentials {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error(transparent)]
    Projections(#[from] truebit_projections::Error),
    #[error(transparent)]
    Replay(#[from] truebit_replay::Error),
    #[error("{what} failed on NATS: {detail}; the server may be restarting: the aggregator retries by itself, so check the server if this repeats")]
    Nats { what: String, detail: String },
    #[error("{0}")]
    Usage(String),
    #[error("{what} {path} failed: {source}; check the path, its folder's permissions and the free space")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen for HTTP on {addr}: {source}; another process may hold that address: choose another with --http-addr / HTTP_ADDR, or `off` to serve no HTTP")]
    HttpBind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the running serve could not answer: {0}")]
    Remote(String),
    #[error("{0}")]
    CheckFailed(String),
}

impl Error {
    /// 0 success, 1 a failed check, 2 bad usage or config, 3 cannot reach NATS.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Connect { .. } | Error::Nats { .. } => 3,
            Error::Topology(TopologyError::JetStream { .. }) => 3,
            Error::Topology(_) => 2,
            // A local file that cannot be read or written: a path or a permission to fix.
            Error::Credentials { .. } | Error::Usage(_) | Error::Io { .. } => 2,
            // A setting to change: the address is taken or not this host's.
            Error::HttpBind { .. } => 2,
            Error::Remote(_) => 3,
            Error::Replay(truebit_replay::Error::Nats { .. }) => 3,
            Error::Replay(truebit_replay::Error::OutputExists { .. }) => 2,
            Error::Replay(truebit_replay::Error::Io { .. }) => 2,
            Error::Replay(truebit_replay::Error::Gap { .. }) => 1,
            Error::Replay(truebit_replay::Error::Projections(p)) | Error::Projections(p) => {
                projections_exit_code(p)
            }
            Error::CheckFailed(_) => 1,
        }
    }

    pub(crate) fn nats(what: impl Into<String>, e: impl std::fmt::Display) -> Self {
        Error::Nats {
            what: what.into(),
            detail: e.to_string(),
        }
    }

    /// An I/O error on a local file, naming what was being done to which path.
    pub(crate) fn io(
        what: &'static str,
        path: &std::path::Path,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| Error::Io { what, path, source }
    }
}

/// The exit code of a projections error, wherever it surfaced.
fn projections_exit_code(e: &truebit_projections::Error) -> i32 {
    use truebit_projections::Error as P;
    match e {
        P::Missing { .. }
        | P::Locked { .. }
        | P::SchemaVersion { .. }
        | P::Open { .. }
        | P::CreateDir { .. }
        | P::AdminKey { .. } => 2,
        P::Corrupt { .. } | P::Storage(_) => 1,
    }
}
