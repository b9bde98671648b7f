//! Files next to the database: rebuilds, verifications and checkpoints are written beside it, so
//! that a rename swaps them in on the same filesystem.

use crate::Error;
use std::path::{Path, PathBuf};

/// `<path>.<suffix>`, in the same folder.
pub(crate) fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{suffix}"));
    path.with_file_name(name)
}

pub(crate) fn remove_if_exists(path: &Path) -> Result<(), Error> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("removing the leftover file", path)(e)),
    }
}
