//! Checkpoints: the projections at a known sequence, stored in the `truebit-checkpoints` object
//! store, so that `TRUEBIT_EVENTS` may expire old events without a rebuild losing what they
//! counted.

use super::leader::Leader;
use crate::infra::files::{remove_if_exists, sibling};
use crate::Error;
use async_nats::jetstream::object_store::ObjectStore;
use std::sync::Arc;
use std::time::{Duration, Instant};
use truebit_projections::task::blocking;
use truebit_projections::Projections;
use truebit_streams::names::checkpoint_name;

/// What one checkpoint cost.
#[derive(Debug, Clone, Copy)]
pub struct Written {
    pub seq: u64,
    pub bytes: u64,
    pub copy: Duration,
    pub upload: Duration,
}

/// Copies the database beside itself, uploads the copy, and keeps the newest `keep` checkpoints:
/// the leader's work (contract §9), asked again before the upload and the pruning, since the
/// copy takes a while and the lease may run out meanwhile.
pub(crate) async fn write(
    store: &ObjectStore,
    db: &Arc<Projections>,
    keep: usize,
    leader: &Leader,
) -> Result<Written, Error> {
    let temp = sibling(db.path(), "checkpoint");
    remove_if_exists(&temp)?;
    let started = Instant::now();
    let seq = {
        let (db, temp) = (db.clone(), temp.clone());
        blocking(move || db.checkpoint_to(&temp)).await?
    };
    let copy = started.elapsed();
    let bytes = std::fs::metadata(&temp).map(|m| m.len()).unwrap_or(0);
    if !leader.leading() {
        remove_if_exists(&temp)?;
        return Err(Error::nats(
            "storing a checkpoint",
            "the lease ran out while copying; the leader writes the next one",
        ));
    }
    let started = Instant::now();
    let mut file = tokio::fs::File::open(&temp)
        .await
        .map_err(Error::io("reading the checkpoint copy", &temp))?;
    let uploaded = store.put(checkpoint_name(seq).as_str(), &mut file).await;
    remove_if_exists(&temp)?;
    uploaded.map_err(|e| Error::nats("storing a checkpoint", e))?;
    let upload = started.elapsed();
    if leader.leading() {
        prune(store, keep).await?;
    }
    Ok(Written {
        seq,
        bytes,
        copy,
        upload,
    })
}

async fn prune(store: &ObjectStore, keep: usize) -> Result<(), Error> {
    let seqs = truebit_replay::checkpoints(store).await?;
    for seq in &seqs[..seqs.len().saturating_sub(keep)] {
        store
            .delete(checkpoint_name(*seq))
            .await
            .map_err(|e| Error::nats("deleting an old checkpoint", e))?;
    }
    Ok(())
}
