//! The runner's debug logs in `--logs DIR`: every `*.log` followed by its identity (device and
//! inode), so that a file renamed by rotation is read to its end and the new one from its start;
//! a file shorter than where it was left was truncated and is read again from its start. Lines
//! are grouped into entries (continuation lines joined); an entry is taken once the next one
//! begins, or once the file stopped growing after it. Every `*.log.gz` not read before is read
//! once, at start, oldest first.

use super::runner::{classify, Entries, Entry};
use super::state::{Batch, LogPosition};
use super::tracker::Tracker;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read as _, Seek as _, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub struct Logs {
    dir: PathBuf,
    positions: BTreeMap<String, LogPosition>,
    gz_read: HashSet<String>,
    /// The size each file had at the last poll that left an entry pending.
    pending_at: HashMap<String, u64>,
    /// The last poll read every file to its end: no entry pending, no file unreadable.
    read_through: bool,
}

impl Logs {
    pub fn new(
        dir: PathBuf,
        positions: BTreeMap<String, LogPosition>,
        gz_read: HashSet<String>,
    ) -> Self {
        Logs {
            dir,
            positions,
            gz_read,
            pending_at: HashMap::new(),
            read_through: false,
        }
    }

    /// Whether the last poll read every followed log to its end.
    pub fn read_through(&self) -> bool {
        self.read_through
    }

    fn files(&self, suffix: &str) -> Vec<(PathBuf, std::fs::Metadata)> {
        let mut found = super::folder::files_ending(&self.dir, suffix);
        found.sort_by_key(|(p, m)| (m.modified().ok(), p.clone()));
        found
    }

    /// Reads every `*.log.gz` not read before, oldest first, each with its own running tasks.
    pub fn read_gz_once(&mut self, tracker: &mut Tracker, now: i64, batch: &mut Batch) {
        for (path, _) in self.files(".log.gz") {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if self.gz_read.contains(&name) {
                continue;
            }
            let mut text = String::new();
            let read = std::fs::File::open(&path)
                .and_then(|f| flate2::read::MultiGzDecoder::new(f).read_to_string(&mut text));
            if let Err(e) = read {
                tracing::warn!(file = %path.display(), error = %e, "cannot read the rotated log; skipped");
                continue;
            }
            let mut running = Vec::new();
            let mut entries = Entries::default();
            let mut take = |e: Entry, tracker: &mut Tracker| {
                tracker.log_entry(e.at, &classify(&e), Some(&mut running), now)
            };
            for line in text.lines() {
                if let Some(e) = entries.push(line) {
                    take(e, tracker);
                }
            }
            if let Some(e) = entries.finish() {
                take(e, tracker);
            }
            tracing::info!(file = %path.display(), "read the rotated log");
            self.gz_read.insert(name.clone());
            batch.gz_read.push(name);
        }
    }

    /// Reads what the followed logs gained since the last poll.
    pub fn poll(&mut self, tracker: &mut Tracker, now: i64, batch: &mut Batch) {
        let files = self.files(".log");
        let present: HashSet<String> = files.iter().map(|(_, m)| identity(m)).collect();
        self.positions.retain(|id, _| present.contains(id));
        let mut through = true;
        for (path, meta) in files {
            let id = identity(&meta);
            let mut pos = self.positions.get(&id).cloned().unwrap_or_default();
            if meta.len() < pos.offset {
                tracing::info!(file = %path.display(), "the log was truncated: reading it from its start");
                pos.offset = 0;
            }
            if meta.len() == pos.offset {
                continue;
            }
            let idle = self.pending_at.get(&id) == Some(&meta.len());
            match read_from(&path, pos.offset, tracker, now, idle) {
                Ok((offset, pending)) => {
                    if pending {
                        through = false;
                        self.pending_at.insert(id.clone(), meta.len());
                    } else {
                        self.pending_at.remove(&id);
                    }
                    if offset != pos.offset {
                        pos.offset = offset;
                        batch.logs.insert(id.clone(), pos.clone());
                        self.positions.insert(id, pos);
                    }
                }
                Err(e) => {
                    through = false;
                    tracing::warn!(file = %path.display(), error = %e, "cannot read the log; trying again")
                }
            }
        }
        self.read_through = through;
    }
}

/// Device and inode: what stays with a file across a rename.
fn identity(meta: &std::fs::Metadata) -> String {
    format!("{}:{}", meta.dev(), meta.ino())
}

/// Reads complete lines from `offset`; returns the offset of the first entry not taken, and
/// whether one is left pending. With `idle`, the file stopped growing: the last entry is taken.
fn read_from(
    path: &Path,
    offset: u64,
    tracker: &mut Tracker,
    now: i64,
    idle: bool,
) -> std::io::Result<(u64, bool)> {
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    // Only complete lines: a line still being written is read next time.
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let mut entries = Entries::default();
    let mut entry_start = offset;
    let mut at = offset;
    for line in bytes[..complete].split_inclusive(|&b| b == b'\n') {
        let text = String::from_utf8_lossy(line);
        if let Some(e) = entries.push(&text) {
            tracker.log_entry(e.at, &classify(&e), None, now);
        }
        if entries.pending() && super::runner::header(&super::runner::clean_line(&text)).is_some() {
            entry_start = at;
        }
        at += line.len() as u64;
    }
    if !entries.pending() {
        return Ok((at, false));
    }
    if idle && complete == bytes.len() {
        if let Some(e) = entries.finish() {
            tracker.log_entry(e.at, &classify(&e), None, now);
        }
        return Ok((at, false));
    }
    Ok((entry_start, true))
}
