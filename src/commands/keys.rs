//! `keys`: making key pairs, and the operator events of the key registry (contract §7).
//!
//! Seeds live in files of mode 0600 that only their holder reads ([`crate::infra::seed`]); what
//! travels is the public key and signatures.

use super::ask;
use crate::infra::nats::NatsConfig;
use crate::infra::seed::{read_seed, write_seed};
use crate::Error;
use async_nats::jetstream;
use serde_json::Value;
use std::path::{Path, PathBuf};
use truebit_projections::task::blocking;
use truebit_projections::Projections;
use truebit_streams::{
    operator_payload, subjects, KeyGrant, Mode, OperatorKind, Permissions, PublicKey, SigningKey,
};

/// What an operator asked to publish.
#[derive(Debug, Clone)]
pub enum Change {
    Issue {
        name: String,
        node_id: Option<String>,
        rate_limit: u32,
        permissions: Permissions,
        /// Make the key here (its seed written to this file), or register one made elsewhere.
        key: KeySource,
    },
    Revoke {
        key: PublicKey,
        reason: Option<String>,
    },
    Mode(Mode),
}

#[derive(Debug, Clone)]
pub enum KeySource {
    New(PathBuf),
    Public(PublicKey),
}

/// Publishes an operator event signed with the admin seed; returns what to print.
pub async fn publish_change(
    nats: &NatsConfig,
    admin_seed: Option<&Path>,
    change: Change,
) -> Result<String, Error> {
    let Some(seed_path) = admin_seed else {
        return Err(Error::Usage(
            "this command publishes an operator event, which an admin key must sign: pass --admin-seed FILE (or ADMIN_SEED), the file `keys new-admin` wrote".into(),
        ));
    };
    let admin = read_seed(seed_path, "the admin seed")?;
    // Connect before making a key, so that an unreachable server leaves no orphan seed behind.
    let client = nats.connect("truebit-federation keys").await?;
    let (kind, made) = match change {
        Change::Issue {
            name,
            node_id,
            rate_limit,
            permissions,
            key,
        } => {
            let (public, made) = match key {
                KeySource::Public(k) => (k, None),
                KeySource::New(out) => {
                    let k = SigningKey::generate();
                    write_seed(&out, &k)?;
                    (k.public_key().clone(), Some(out))
                }
            };
            let grant = KeyGrant {
                key: public,
                name,
                node_id,
                permissions,
                rate_limit,
            };
            (OperatorKind::KeyIssued(grant), made)
        }
        Change::Revoke { key, reason } => (OperatorKind::KeyRevoked { key, reason }, None),
        Change::Mode(mode) => (OperatorKind::AdmissionSet { mode }, None),
    };
    let payload = operator_payload(&kind, chrono::Utc::now());
    let mut headers = async_nats::HeaderMap::new();
    for (name, value) in admin.sign(subjects::ADMIN_KEYS, &payload) {
        headers.insert(name, value.as_str());
    }
    let js = jetstream::new(client);
    let ack = js
        .publish_with_headers(subjects::ADMIN_KEYS, headers, payload.into())
        .await
        .map_err(|e| Error::nats("publishing the operator event", e))?
        .await
        .map_err(|e| {
            Error::nats(
                "storing the operator event (does TRUEBIT_EVENTS exist? `truebit-federation init` makes it)",
                e,
            )
        })?;
    let said = match &kind {
        OperatorKind::KeyIssued(g) => {
            let mut s = format!("{}\n", g.key);
            if let Some(out) = made {
                s.push_str(&format!(
                    "issued key {:?} ({}); its seed is in {} (mode 0600): hand it to the node over a private channel, and keep no copy\n",
                    g.name,
                    g.permissions,
                    out.display()
                ));
            } else {
                s.push_str(&format!("issued key {:?} ({})\n", g.name, g.permissions));
            }
            s
        }
        OperatorKind::KeyRevoked { key, .. } => format!("revoked {key}\n"),
        OperatorKind::AdmissionSet { mode } => format!("admission mode set to {mode}\n"),
    };
    Ok(format!(
        "{said}(stream sequence {}; it takes effect at that position, once serve folds it)\n",
        ack.sequence
    ))
}

/// The registry as folded, from the database file or from the running serve.
pub async fn list(nats: &NatsConfig, db_path: &Path) -> Result<Value, Error> {
    let path = db_path.to_path_buf();
    match blocking(move || {
        let db = Projections::open_existing(path)?;
        db.registry_json()
    })
    .await
    {
        Ok(v) => Ok(v),
        Err(truebit_projections::Error::Locked { .. }) => {
            let client = nats.connect("truebit-federation keys list").await?;
            ask::ask_keys(&client).await
        }
        Err(e) => Err(e.into()),
    }
}

/// The registry for a person to read.
pub fn render(registry: &Value) -> String {
    let mut out = format!(
        "admission mode {}; root key (ADMIN_KEY) {}\n",
        registry["mode"].as_str().unwrap_or("?"),
        registry["adminKey"].as_str().unwrap_or("none")
    );
    let keys = registry["keys"].as_array().cloned().unwrap_or_default();
    if keys.is_empty() {
        out.push_str("no keys issued\n");
    }
    for k in keys {
        let s = |f: &str| k[f].as_str().unwrap_or("-").to_string();
        let perms: Vec<&str> = k["permissions"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        out.push_str(&format!(
            "{}  {}\n  node {}  permissions {}  rate limit {}/min  issued {}{}\n  admitted {}  refused: unauthorized {}, rate_limited {}\n",
            s("name"),
            s("publicKey"),
            s("nodeId"),
            perms.join(","),
            k["rateLimit"],
            s("issuedAt"),
            match k["revokedAt"].as_str() {
                Some(at) => format!("  REVOKED {at}{}", k["revokeReason"].as_str().map(|r| format!(" ({r})")).unwrap_or_default()),
                None => String::new(),
            },
            k["admitted"],
            k["refused"]["unauthorized"],
            k["refused"]["rate_limited"],
        ));
    }
    if let Some(counts) = registry["admission"].as_object().filter(|c| !c.is_empty()) {
        let parts: Vec<String> = counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
        out.push_str(&format!("node messages checked: {}\n", parts.join(", ")));
    }
    out
}
