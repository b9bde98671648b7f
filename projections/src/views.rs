//! Records as a reader of the projections sees them, one at a time.

use crate::records::{self, decode, InvoiceRecord, KeyRecord, NodeRecord, TaskRecord};
use crate::store::count_table;
use crate::tables::meta::read_mode;
use crate::{tables, Error, Projections};
use redb::{ReadableDatabase, ReadableTable};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use truebit_streams::{
    minute_timestamp, Continent, Digest, ExecutionTime, Location, Magnitude, Memory, Minute, Mode,
    Permissions,
};

/// A task as the projections hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskView {
    pub first_seen_at: Minute,
    pub last_seen_at: Minute,
    pub chain_id: Option<String>,
    pub task_type: Option<String>,
    /// `completed`, `failed` or `received`.
    pub state: &'static str,
    pub success: Option<bool>,
    pub status: Option<String>,
    pub execution_time: Option<ExecutionTime>,
    pub gas_used: Option<Magnitude>,
    pub cached: Option<bool>,
    pub reporting_nodes: usize,
}

/// An invoice as the projections hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoiceView {
    pub first_seen_at: Minute,
    pub last_seen_at: Minute,
    pub task: Option<Digest>,
    pub chain_id: Option<String>,
    pub steps_computed: Option<Magnitude>,
    pub memory_used: Option<Memory>,
    pub operation: Option<String>,
    pub reporting_nodes: usize,
}

/// A node as the projections hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub first_seen_at: Minute,
    pub last_seen_at: Option<Minute>,
    pub heartbeat_count: u64,
    pub offline: bool,
    pub status: Option<String>,
    pub continent: Option<Continent>,
    pub location: Option<Location>,
}

/// A key of the registry as `keys list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyView {
    pub public_key: String,
    pub name: String,
    pub node_id: Option<String>,
    pub permissions: Permissions,
    pub rate_limit: u32,
    pub issued_at: Minute,
    pub revoked_at: Option<Minute>,
    pub revoke_reason: Option<String>,
    pub admitted: u64,
    pub unauthorized: u64,
    pub rate_limited: u64,
}

impl Projections {
    /// Every key of the registry, by public key.
    pub fn keys(&self) -> Result<Vec<KeyView>, Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(tables::KEYS)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (key, bytes) = row?;
            let r: KeyRecord = decode("keys", bytes.value())?;
            out.push(KeyView {
                public_key: key.value().to_string(),
                name: r.name,
                node_id: r.node_id,
                permissions: r.permissions,
                rate_limit: r.rate_limit,
                issued_at: r.issued_at,
                revoked_at: r.revoked_at,
                revoke_reason: r.revoke_reason,
                admitted: r.admitted,
                unauthorized: r.unauthorized,
                rate_limited: r.rate_limited,
            });
        }
        Ok(out)
    }

    /// The admission mode as folded.
    pub fn admission_mode(&self) -> Result<Mode, Error> {
        let txn = self.db.begin_read()?;
        read_mode(&txn.open_table(tables::META)?)
    }

    /// Node messages checked in `audit` and `enforce`, by outcome.
    pub fn admission_counts(&self) -> Result<BTreeMap<String, u64>, Error> {
        count_table(&self.db, tables::ADMISSION)
    }

    pub fn task(&self, id: &Digest) -> Result<Option<TaskView>, Error> {
        let Some(t) = self.find::<TaskRecord>(tables::TASK_RECORDS, |l| &l.tasks, &id.0)? else {
            return Ok(None);
        };
        let outcome = t.outcome.clone().unwrap_or(records::StoredOutcome {
            success: None,
            status: None,
            execution_time: None,
            gas_used: None,
            cached: None,
        });
        Ok(Some(TaskView {
            first_seen_at: t.first_seen,
            last_seen_at: t.last_seen,
            chain_id: t.chain_id,
            task_type: t.task_type,
            state: match outcome.success {
                Some(true) => "completed",
                Some(false) => "failed",
                None => "received",
            },
            success: outcome.success,
            status: outcome.status,
            execution_time: outcome
                .execution_time
                .and_then(|i| ExecutionTime::from_index(i as usize)),
            gas_used: outcome
                .gas_used
                .and_then(|i| Magnitude::from_index(i as usize)),
            cached: outcome.cached,
            reporting_nodes: t.reporters.len(),
        }))
    }

    pub fn invoice(&self, id: &Digest) -> Result<Option<InvoiceView>, Error> {
        let kind = tables::INVOICE_RECORDS;
        let Some(i) = self.find::<InvoiceRecord>(kind, |l| &l.invoices, &id.0)? else {
            return Ok(None);
        };
        Ok(Some(InvoiceView {
            first_seen_at: i.first_seen,
            last_seen_at: i.last_seen,
            task: i.task.map(Digest),
            chain_id: i.chain_id,
            steps_computed: i
                .steps_computed
                .and_then(|b| Magnitude::from_index(b as usize)),
            memory_used: i.memory_used.and_then(|b| Memory::from_index(b as usize)),
            operation: i.operation,
            reporting_nodes: i.reporters.len(),
        }))
    }

    pub fn node(&self, node_id: &str) -> Result<Option<NodeView>, Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(tables::NODES)?;
        let Some(bytes) = table.get(node_id)? else {
            return Ok(None);
        };
        let n: NodeRecord = decode("nodes", bytes.value())?;
        Ok(Some(NodeView {
            first_seen_at: n.first_seen,
            last_seen_at: n.last_seen,
            heartbeat_count: n.heartbeat_count,
            offline: n.offline,
            status: n.status,
            continent: n.continent.and_then(|c| Continent::from_index(c as usize)),
            location: n.location.map(|(lat_tenths, lon_tenths)| Location {
                lat_tenths,
                lon_tenths,
            }),
        }))
    }

    /// How many refused messages were folded, by reason.
    pub fn rejections(&self) -> Result<BTreeMap<String, u64>, Error> {
        count_table(&self.db, tables::REJECTIONS)
    }

    /// How many events of each type were folded.
    pub fn event_counts(&self) -> Result<BTreeMap<String, u64>, Error> {
        count_table(&self.db, tables::EVENTS)
    }
}

impl Projections {
    /// The registry as JSON: what `keys list --json` prints and serve answers.
    pub fn registry_json(&self) -> Result<Value, Error> {
        let keys: Vec<Value> = self.keys()?.iter().map(key_json).collect();
        Ok(json!({
            "mode": self.admission_mode()?.as_str(),
            "adminKey": self.admin_key()?.flatten().map(|k| k.to_string()),
            "admission": self.admission_counts()?,
            "keys": keys,
        }))
    }
}

fn key_json(k: &KeyView) -> Value {
    json!({
        "name": k.name,
        "publicKey": k.public_key,
        "nodeId": k.node_id,
        "permissions": k.permissions.to_string().split(',').filter(|s| !s.is_empty()).collect::<Vec<_>>(),
        "rateLimit": k.rate_limit,
        "issuedAt": minute_timestamp(k.issued_at),
        "revokedAt": k.revoked_at.map(minute_timestamp),
        "revokeReason": k.revoke_reason,
        "admitted": k.admitted,
        "refused": {"unauthorized": k.unauthorized, "rate_limited": k.rate_limited},
    })
}
