//! `keys`: making key pairs, and the operator events of the key registry (contract §7).
//!
//! Seeds live in files of mode 0600 that only their holder reads; this module writes them, reads
//! them, and never prints, logs or sends one. What travels is the public key and signatures.

use crate::{query, Error, NatsConfig};
use async_nats::jetstream;
use serde_json::{json, Value};
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use truebit_projections::task::blocking;
use truebit_projections::{KeyView, Projections};
use truebit_streams::{
    minute_timestamp, operator_payload, subjects, KeyGrant, Mode, OperatorKind, Permissions,
    PublicKey, SigningKey,
};

/// Writes a new key pair's seed to `out` (mode 0600, never over an existing file); returns the
/// public key.
pub fn new_key(out: &Path) -> Result<PublicKey, Error> {
    let key = SigningKey::generate();
    write_seed(out, &key)?;
    Ok(key.public_key().clone())
}

fn write_seed(out: &Path, key: &SigningKey) -> Result<(), Error> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Error::Usage(format!(
                    "{} already exists; a seed is never written over another: choose another --out, or remove the old file if its key is revoked",
                    out.display()
                ))
            } else {
                Error::io("creating the seed file", out)(e)
            }
        })?;
    writeln!(file, "{}", key.seed())
        .and_then(|()| file.sync_all())
        .map_err(Error::io("writing the seed file", out))
}

/// Reads a seed file: refused when others may read it, or when it holds no user seed. Neither
/// error quotes the file.
pub fn read_seed(path: &Path, what: &str) -> Result<SigningKey, Error> {
    let meta = std::fs::metadata(path).map_err(Error::io("reading the seed file", path))?;
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(Error::Usage(format!(
            "{what} {} can be read by others (mode {:o}); a seed signs as its holder: run `chmod 600 {}` and keep it that way",
            path.display(),
            mode & 0o777,
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(Error::io("reading the seed file", path))?;
    SigningKey::from_seed(&text).ok_or_else(|| {
        Error::Usage(format!(
            "{what} {} does not hold an nkey user seed (SU…, as `keys new` writes); check the path",
            path.display()
        ))
    })
}

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
pub async fn publish(
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
        registry_json(&db)
    })
    .await
    {
        Ok(v) => Ok(v),
        Err(truebit_projections::Error::Locked { .. }) => {
            let client = nats.connect("truebit-federation keys list").await?;
            query::ask_keys(&client).await
        }
        Err(e) => Err(e.into()),
    }
}

/// The registry as JSON: what `keys list --json` prints and serve answers.
pub(crate) fn registry_json(db: &Projections) -> Result<Value, truebit_projections::Error> {
    let keys: Vec<Value> = db.keys()?.iter().map(key_json).collect();
    Ok(json!({
        "mode": db.admission_mode()?.as_str(),
        "adminKey": db.admin_key()?.flatten().map(|k| k.to_string()),
        "admission": db.admission_counts()?,
        "keys": keys,
    }))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_is_written_0600_never_twice_and_refused_once_others_can_read_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.seed");
        let public = new_key(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(read_seed(&path, "the seed").unwrap().public_key(), &public);

        let again = new_key(&path).unwrap_err();
        assert!(again.to_string().contains("already exists"), "{again}");
        assert_eq!(read_seed(&path, "the seed").unwrap().public_key(), &public);

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let open = read_seed(&path, "the seed").unwrap_err();
        let seed = std::fs::read_to_string(&path).unwrap();
        assert_eq!(open.exit_code(), 2);
        assert!(open.to_string().contains("chmod 600"), "{open}");
        assert!(
            !open.to_string().contains(seed.trim()),
            "an error never quotes the seed"
        );

        let junk = dir.path().join("junk");
        std::fs::write(&junk, "not a seed").unwrap();
        std::fs::set_permissions(&junk, std::fs::Permissions::from_mode(0o600)).unwrap();
        let bad = read_seed(&junk, "the seed").unwrap_err();
        assert!(bad.to_string().contains("does not hold"), "{bad}");
    }
}
