//! `replay`: rebuild the database from the stream, or verify it against a rebuild.

use crate::infra::files::{remove_if_exists, sibling};
use crate::{Error, NatsConfig};
use async_nats::jetstream;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use truebit_projections::task::blocking;
use truebit_projections::{Projections, StateDigest};
use truebit_streams::PublicKey;

#[derive(Debug, Clone)]
pub struct ReplayConfig {
    pub nats: NatsConfig,
    pub db_path: PathBuf,
    /// Write here and swap nothing.
    pub output: Option<PathBuf>,
    pub to_seq: Option<u64>,
    pub verify: bool,
    pub allow_gap: bool,
    /// The root key of the key registry: the live fold's.
    pub admin_key: Option<PublicKey>,
}

/// How many differences `--verify` prints.
const SHOWN_DIFFERENCES: usize = 20;

pub async fn replay(config: &ReplayConfig) -> Result<String, Error> {
    let client = config.nats.connect("truebit-federation replay").await?;
    let js = jetstream::new(client.clone());
    // Commits end where the live fold's do, so that the rebuild records the same digest points.
    let digest_every = crate::infra::topology::digest_every(&js, None, false).await?;
    if config.verify {
        return verify(
            &js,
            &config.db_path,
            config.output.as_deref(),
            config.admin_key.as_ref(),
            digest_every,
        )
        .await;
    }
    // A swap needs the live file free: said first, with the way out, before serve is asked
    // anything about a file it would have to let go of anyway.
    if config.output.is_none() {
        ensure_free(&config.db_path).await?;
    }
    check_admin_key(&client, &config.db_path, config.admin_key.as_ref()).await?;
    let options = truebit_replay::Options {
        to_seq: config.to_seq,
        prefer_checkpoint: true,
        allow_gap: config.allow_gap,
        admin_key: config.admin_key.clone(),
        digest_every,
        base: None,
    };
    if let Some(output) = &config.output {
        let rebuilt = run(&js, output, options).await?;
        return Ok(summary(&rebuilt, output));
    }
    // Rebuild beside the live file (checked free above), then swap it in only once complete.
    let temp = sibling(&config.db_path, "rebuild");
    remove_if_exists(&temp)?;
    let rebuilt = run(&js, &temp, options).await?;
    let carried = {
        let (temp, live) = (temp.clone(), config.db_path.clone());
        truebit_projections::task::joined(tokio::task::spawn_blocking(move || {
            swap_in(&temp, &live)
        }))
        .await?
    };
    Ok(format!(
        "{}replaced {}; serve resumes after sequence {}{carried}\n",
        summary(&rebuilt, &config.db_path),
        config.db_path.display(),
        rebuilt.last_seq
    ))
}

/// Moves the rebuild at `temp` over the live database at `live`, after taking over the live
/// outbox: a rebuild's own is empty (it never publishes), and the dead letters the live
/// database had not sent yet must not be lost with it (contract §4, §9). The live file stays
/// open, and so locked against a serve starting, until the rebuild is in its place. Returns a
/// sentence for the summary.
fn swap_in(temp: &Path, live: &Path) -> Result<String, Error> {
    let held = match Projections::open_existing(live) {
        Ok(db) => Some(db),
        Err(truebit_projections::Error::Missing { .. }) => None,
        Err(truebit_projections::Error::Locked { path }) => {
            return Err(Error::Usage(format!(
                "{} is held by a running serve; stop it before replacing its database, or rebuild beside it with --output",
                path.display()
            )))
        }
        // A file of another schema cannot be read, outbox and all: replaced as before, and said.
        Err(truebit_projections::Error::SchemaVersion { found, .. }) => {
            std::fs::rename(temp, live)
                .map_err(Error::io("moving the rebuild into place over", live))?;
            return Ok(format!(
                "; WARNING: the replaced database had schema version {found}, so any dead letters it had not sent yet could not be carried over: compare TRUEBIT_DLQ with the refusals in the stream"
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let mut said = String::new();
    if let Some(live_db) = &held {
        let rebuilt = Projections::open_existing(temp)?;
        let (from, to) = (live_db.stream_identity()?, rebuilt.stream_identity()?);
        let unsent = live_db.pending_dead_letter_count()?;
        if from.is_some() && from != to {
            // Their sequences are another stream's: sent under this one's name they would
            // stand for the wrong messages.
            if unsent > 0 {
                said = format!(
                    "; WARNING: {unsent} dead letters that the replaced database had not sent were of stream {}, not of {}, and are not carried over",
                    from.unwrap_or_default(),
                    to.unwrap_or_default()
                );
            }
        } else {
            let carried = rebuilt.carry_dead_letters(live_db)?;
            if carried > 0 {
                said = format!("; {carried} dead letters not sent yet carried over");
            }
        }
    }
    std::fs::rename(temp, live).map_err(Error::io("moving the rebuild into place over", live))?;
    drop(held);
    Ok(said)
}

/// Rebuilds up to the live database's last sequence and compares the two record by record. The
/// rebuild is written to `keep` when given (and kept whatever the comparison finds: it is what
/// the stream says), else beside the database and removed.
async fn verify(
    js: &jetstream::Context,
    db_path: &Path,
    keep: Option<&Path>,
    admin_key: Option<&PublicKey>,
    digest_every: u64,
) -> Result<String, Error> {
    let path = db_path.to_path_buf();
    let live = blocking(move || Projections::open_existing(path)).await.map_err(|e| match e {
        truebit_projections::Error::Locked { path } => Error::Usage(format!(
            "{} is held by a running serve; stop it to verify, or rebuild beside it with --output and compare with stats",
            path.display()
        )),
        other => other.into(),
    })?;
    let live_seq = live.last_seq()?;
    live.check_admin_key(admin_key)?;
    let target = match keep {
        Some(path) => path.to_path_buf(),
        None => {
            let temp = sibling(db_path, "verify");
            remove_if_exists(&temp)?;
            temp
        }
    };
    // From the stream alone while it is whole, so that the whole record is checked; from a
    // checkpoint only when old events have expired.
    let options = truebit_replay::Options {
        to_seq: Some(live_seq),
        prefer_checkpoint: false,
        allow_gap: false,
        admin_key: admin_key.cloned(),
        digest_every,
        base: None,
    };
    let outcome = compare(js, live, &target, options).await;
    if keep.is_none() {
        remove_if_exists(&target)?;
    }
    let (rebuilt, differences, rebuilt_digest) = outcome?;
    let kept = match keep {
        Some(path) => format!("; the rebuild is kept at {}", path.display()),
        None => String::new(),
    };
    if rebuilt.last_seq < live_seq {
        return Err(Error::CheckFailed(format!(
            "the stream ends at sequence {} but {} has folded up to {live_seq}: the stream was recreated or purged; the database does not belong to it{kept}",
            rebuilt.last_seq,
            db_path.display()
        )));
    }
    if differences.is_empty() {
        return Ok(format!(
            "verified: a rebuild up to sequence {live_seq} matches {} record for record, and its state digest {digest}{kept}\n",
            db_path.display(),
            digest = rebuilt_digest.text(),
        ));
    }
    Err(Error::CheckFailed(format!(
        "{} differs from a rebuild up to sequence {live_seq} (first {} differences; first database is the live one){kept}:\n  {}",
        db_path.display(),
        differences.len(),
        differences.join("\n  ")
    )))
}

/// Rebuilds into `target` and lists how `live` differs from it: record by record, then the
/// state digest (contract §11) that the live database keeps against the rebuild's computed by
/// reading every record, and the digest points both recorded. Returns the rebuild's digest.
async fn compare(
    js: &jetstream::Context,
    live: Projections,
    target: &Path,
    options: truebit_replay::Options,
) -> Result<(truebit_replay::Rebuilt, Vec<String>, StateDigest), Error> {
    let rebuilt = run(js, target, options).await?;
    let target = target.to_path_buf();
    let (differences, digest) = blocking(move || {
        let other = Projections::open_existing(target)?;
        let mut differences = live.differences(&other, SHOWN_DIFFERENCES)?;
        let (kept, scanned) = (live.state_digest()?, other.scan_digest()?);
        if kept != scanned {
            differences.push(format!(
                "state digest: the live database keeps {kept}, the rebuild's is {scanned}; tables that differ: {}",
                kept.differing(&scanned).join(", ")
            ));
        }
        let theirs: std::collections::BTreeMap<u64, StateDigest> =
            other.digest_points(0)?.into_iter().collect();
        for (seq, mine) in live.digest_points(0)? {
            match theirs.get(&seq) {
                Some(t) if *t != mine => differences.push(format!(
                    "digest point {seq}: the live database recorded {mine}, the rebuild {t}; tables that differ: {}",
                    mine.differing(t).join(", ")
                )),
                _ => {}
            }
        }
        Ok((differences, scanned))
    })
    .await?;
    Ok((rebuilt, differences, digest))
}

/// Rebuilds with progress: a bar on a terminal, a line every 5 s otherwise.
pub(crate) async fn run(
    js: &jetstream::Context,
    output: &Path,
    options: truebit_replay::Options,
) -> Result<truebit_replay::Rebuilt, Error> {
    run_as("replay", js, output, options).await
}

/// [`run`], its progress named `label` (the command that rebuilds).
pub(crate) async fn run_as(
    label: &'static str,
    js: &jetstream::Context,
    output: &Path,
    options: truebit_replay::Options,
) -> Result<truebit_replay::Rebuilt, Error> {
    let terminal = std::io::stderr().is_terminal();
    let bar = terminal.then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(&format!(
                "{{spinner}} {label} [{{bar:40}}] {{pos}}/{{len}} seq  {{msg}}  ETA {{eta}}"
            ))
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar
    });
    let started = Instant::now();
    let mut last_line = Instant::now();
    let mut first = true;
    let rebuilt = truebit_replay::rebuild(js, output, options, |seq, target| {
        if let Some(bar) = &bar {
            bar.set_length(target);
            bar.set_position(seq);
            bar.set_message(format!(
                "{:.0} events/s",
                seq as f64 / started.elapsed().as_secs_f64().max(1e-9)
            ));
        } else if first || last_line.elapsed() >= Duration::from_secs(5) || seq >= target {
            first = false;
            last_line = Instant::now();
            let rate = seq as f64 / started.elapsed().as_secs_f64().max(1e-9);
            eprintln!("{label}: sequence {seq} of {target}, {rate:.0} events/s");
        }
    })
    .await?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if let Some(seq) = rebuilt.checkpoint {
        eprintln!("{label}: started from the checkpoint at sequence {seq}");
    } else if rebuilt.first_seq > 1 {
        eprintln!(
            "WARNING: TRUEBIT_EVENTS now starts at sequence {}: sequences 1..{} have expired or been deleted, and this rebuild does not include them; its all-time numbers are lower than the live fold's",
            rebuilt.first_seq,
            rebuilt.first_seq - 1
        );
    }
    Ok(rebuilt)
}

fn summary(rebuilt: &truebit_replay::Rebuilt, path: &Path) -> String {
    format!(
        "rebuilt {} messages up to sequence {} in {:.1} s ({:.0} events/s) into {}\n",
        rebuilt.folded,
        rebuilt.last_seq,
        rebuilt.seconds,
        rebuilt.rate(),
        path.display()
    )
}

/// A rebuild must fold with the root key the live database was folded with (contract §7). A
/// database that a running serve holds cannot be read here: that serve is asked instead.
async fn check_admin_key(
    client: &async_nats::Client,
    db_path: &Path,
    configured: Option<&PublicKey>,
) -> Result<(), Error> {
    if !db_path.exists() {
        return Ok(());
    }
    let path = db_path.to_path_buf();
    let key = configured.cloned();
    match blocking(move || Projections::open_existing(path)?.check_admin_key(key.as_ref())).await
    {
        Err(e @ truebit_projections::Error::AdminKey { .. }) => Err(e.into()),
        Err(truebit_projections::Error::Locked { path }) => {
            super::ask::ask_admin_key(client, configured)
                .await
                .map_err(|e| match e {
                    Error::Usage(said) => Error::Usage(format!(
                        "{said} (answered by the serve that holds {})",
                        path.display()
                    )),
                    other => Error::Usage(format!(
                        "{} is held by another process, and ADMIN_KEY cannot be checked against it: {other}; a rebuild folded with another root key than the live fold's decides differently, so run replay where serve answers, or stop serve first",
                        path.display()
                    )),
                })
        }
        // Of another schema: the swap's own checks say so.
        _ => Ok(()),
    }
}

async fn ensure_free(db_path: &Path) -> Result<(), Error> {
    if !db_path.exists() {
        return Ok(());
    }
    let path = db_path.to_path_buf();
    match blocking(move || Projections::open_existing(path).map(drop)).await {
        Ok(()) | Err(truebit_projections::Error::SchemaVersion { .. }) => Ok(()),
        Err(truebit_projections::Error::Locked { path }) => Err(Error::Usage(format!(
            "{} is held by a running serve; stop it before replacing its database, or rebuild beside it with --output",
            path.display()
        ))),
        Err(e) => Err(e.into()),
    }
}
