//! The runner's folders: the files in one whose names end alike (`*-eventDB.json`, `*.log`).

use std::fs::Metadata;
use std::path::{Path, PathBuf};

/// The regular files directly in `dir` whose names end with `suffix`, with their metadata, in no
/// particular order. A folder that cannot be read yet holds none: the watchers look again later.
pub(crate) fn files_ending(dir: &Path, suffix: &str) -> Vec<(PathBuf, Metadata)> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(suffix))
        })
        .filter_map(|p| std::fs::metadata(&p).ok().map(|m| (p, m)))
        .filter(|(_, m)| m.is_file())
        .collect()
}
