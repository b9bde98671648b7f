use std::path::PathBuf;

/// What can go wrong with the projections database, each saying what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the projections database {path} does not exist; run `truebit-federation serve` to create it, or pass --db-path with the right file")]
    Missing { path: PathBuf },
    #[error("the projections database {path} is held by another process (a running `serve`?); stop it first, or use a command that asks it over NATS")]
    Locked { path: PathBuf },
    #[error("the projections database {path} has schema version {found}, and this build reads version {expected}; rebuild it from the stream with `truebit-federation replay`")]
    SchemaVersion {
        path: PathBuf,
        found: u64,
        expected: u64,
    },
    #[error("a record in table {table} cannot be decoded ({detail}); the database is damaged or was written by another build: rebuild it with `truebit-federation replay`")]
    Corrupt { table: &'static str, detail: String },
    #[error(
        "cannot open the projections database {path}: {source}; check the path and its permissions"
    )]
    Open {
        path: PathBuf,
        #[source]
        source: redb::DatabaseError,
    },
    #[error("cannot create the folder for {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} was folded with ADMIN_KEY {folded}, but {configured} is configured; a replay must decide as the live fold did, so the root key never changes: set ADMIN_KEY back, and hand over by issuing a new admin key with the old one (`keys issue --admin`)", folded = folded.as_deref().unwrap_or("(none)"), configured = configured.as_deref().unwrap_or("none"))]
    AdminKey {
        path: PathBuf,
        folded: Option<String>,
        configured: Option<String>,
    },
    #[error("the projections database failed: {0}; check the disk (space, permissions); the stream still holds every event, so `truebit-federation replay` can rebuild it")]
    Storage(#[from] redb::Error),
}

macro_rules! storage_from {
    ($($t:ty),+) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Storage(e.into())
            }
        }
    )+};
}

storage_from!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
