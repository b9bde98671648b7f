//! Every name of contract §1 and §2 besides the subjects: streams, the consumer, buckets, keys and
//! headers. A node or an operator sees these; nothing else in the project spells them.

use chrono::{DateTime, Utc};

/// The record of everything nodes and operators said.
pub const EVENTS_STREAM: &str = "TRUEBIT_EVENTS";
/// Every rejected message, with its reason in the headers.
pub const DLQ_STREAM: &str = "TRUEBIT_DLQ";
/// The durable pull consumer of the live fold; with `--instance NAME`, `aggregator-NAME`.
pub const CONSUMER: &str = "aggregator";

/// The durable consumer of an instance: `aggregator` without a name (contract §2).
pub fn consumer_name(instance: Option<&str>) -> String {
    match instance {
        Some(name) => format!("{CONSUMER}-{name}"),
        None => CONSUMER.to_string(),
    }
}
/// The KV bucket of snapshots for nodes that join late.
pub const STATS_BUCKET: &str = "truebit-stats";
/// Object store of projection checkpoints: the database at a known stream sequence, so that old
/// events can expire from `TRUEBIT_EVENTS` without a rebuild losing what they counted.
pub const CHECKPOINT_BUCKET: &str = "truebit-checkpoints";

/// The KV bucket of the lease that decides which `serve` instance publishes (contract §9).
pub const LEADER_BUCKET: &str = "truebit-leader";
/// The lease's key; its value is the leader's instance name.
pub const LEADER_KEY: &str = "serve";
/// The instance name of a `serve` started without `--instance`.
pub const DEFAULT_INSTANCE: &str = "default";

/// The KV bucket of the network's settings (contract §2, §10).
pub const CONFIG_BUCKET: &str = "truebit-config";
/// The key of [`CONFIG_BUCKET`] that holds the federation salt.
pub const SALT_KEY: &str = "salt";
/// The key of [`CONFIG_BUCKET`] that holds how many stream sequences lie between two digest
/// points (contract §11): one value for the whole network, as decimal text.
pub const DIGEST_EVERY_KEY: &str = "digest-every";
/// `digest-every` when the network has none yet.
pub const DEFAULT_DIGEST_EVERY: u64 = 10_000;

/// The published history (contract §8): one compact record per snapshot published, the plan's
/// `network_stats` table, readable by any NATS client.
pub const HISTORY_STREAM: &str = "TRUEBIT_STATS";
/// The NATS micro service that answers `stats` (and `keys list`) requests: `$SRV.PING`,
/// `$SRV.INFO` and `$SRV.STATS` find it.
pub const STATS_SERVICE: &str = "truebit-stats";

/// The KV key that holds the same JSON as the last message on `truebit.stats.aggregated`.
pub const LATEST_KEY: &str = "latest";

/// On every published snapshot: the last stream sequence folded into it, so that a reader can
/// tell how fresh it is.
pub const HEADER_LAST_SEQ: &str = "Truebit-Last-Seq";
/// A node's public key (contract §7), on every message it signs.
pub const HEADER_KEY: &str = "Truebit-Key";
/// The base64url (no padding) Ed25519 signature over `<subject>\n<payload>`.
pub const HEADER_SIGNATURE: &str = "Truebit-Signature";
/// On every published snapshot: the `serve` instance that published it (contract §9).
pub const HEADER_INSTANCE: &str = "Truebit-Instance";
/// On every published snapshot and history record: the state digest (contract §11) at its
/// `Truebit-Last-Seq`, `<algorithm>:<hex>`.
pub const HEADER_STATE_DIGEST: &str = "Truebit-State-Digest";
/// JetStream's deduplication header.
pub const HEADER_MSG_ID: &str = "Nats-Msg-Id";

pub const HEADER_DLQ_REASON: &str = "Truebit-Dlq-Reason";
pub const HEADER_DLQ_PATH: &str = "Truebit-Dlq-Path";
pub const HEADER_DLQ_DETAIL: &str = "Truebit-Dlq-Detail";
pub const HEADER_ORIGINAL_SUBJECT: &str = "Truebit-Original-Subject";
pub const HEADER_ORIGINAL_SEQ: &str = "Truebit-Original-Seq";
/// On a dead letter: the incarnation of `TRUEBIT_EVENTS` ([`stream_identity`]) that its
/// `Truebit-Original-Seq` counts in, since a stream made again restarts its sequences at 1.
pub const HEADER_ORIGINAL_STREAM: &str = "Truebit-Original-Stream";

/// The object name of the checkpoint at `seq`; names sort as their sequences do.
pub fn checkpoint_name(seq: u64) -> String {
    format!("seq-{seq:020}")
}

/// The sequence a checkpoint object holds, if `name` is one.
pub fn checkpoint_seq(name: &str) -> Option<u64> {
    name.strip_prefix("seq-")?.parse().ok()
}

/// Names one incarnation of a stream: its name and creation time. A stream deleted and created
/// again under the same name restarts its sequences at 1, and gets another identity.
pub fn stream_identity(name: &str, created: DateTime<Utc>) -> String {
    format!("{name}@{}", created.to_rfc3339())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_names_sort_as_their_sequences_and_read_back() {
        let (a, b) = (checkpoint_name(9), checkpoint_name(10));
        assert!(a < b, "{a} sorts before {b}");
        assert_eq!(checkpoint_seq(&b), Some(10));
        assert_eq!(checkpoint_seq("latest"), None);
    }
}
