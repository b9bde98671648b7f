//! What one [`Projections::apply`](crate::Projections::apply) is told besides its inputs, and
//! what it tells back.

use truebit_streams::Mode;

/// Whether a fold records dead letters in the outbox: the live fold does; a replay only counts
/// refusals, since it never publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outbox {
    Record,
    Skip,
}

/// What one [`Projections::apply`](crate::Projections::apply) did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// Inputs folded (events and refusals).
    pub folded: u64,
    /// Inputs at or below the last folded sequence: already folded, so skipped.
    pub skipped: u64,
    /// The last folded sequence after this batch.
    pub last_seq: u64,
    /// Node messages checked in `audit` or `enforce` mode (contract §7), by outcome:
    /// [`ADMISSION_OUTCOMES`] in that order.
    pub admission: [u64; 3],
    /// The admission mode after this batch: what the next batch's reader guesses its
    /// signature checks by ([`crate::Checks::after`]).
    pub mode: Mode,
}

/// The outcomes of an admission check, in the order of [`Applied::admission`].
pub const ADMISSION_OUTCOMES: [&str; 3] = ["admitted", "unauthorized", "rate_limited"];
