//! `init`: create or update the topology, and say what exists.

use crate::infra::topology::{self, TopologyConfig};
use crate::{Error, NatsConfig};
use async_nats::jetstream;

/// Creates or updates the topology; with `salt`, writes the federation salt to `truebit-config`
/// when it holds none (never over another).
pub async fn init(
    nats: &NatsConfig,
    config: &TopologyConfig,
    salt: Option<&str>,
    digest_every: Option<u64>,
) -> Result<String, Error> {
    let client = nats.connect("truebit-federation init").await?;
    let js = jetstream::new(client);
    let mut t = topology::ensure(&js, config).await?;
    let every = topology::digest_every(&js, digest_every, true).await?;
    let mut out = String::new();
    for stream in [&mut t.events, &mut t.dlq, &mut t.history] {
        let info = stream
            .info()
            .await
            .map_err(|e| Error::nats("reading a stream", e))?;
        out.push_str(&format!(
            "stream {:<16} {} messages, max_age {}\n",
            info.config.name,
            info.state.messages,
            if info.config.max_age.is_zero() {
                "unlimited".to_string()
            } else {
                format!("{:?}", info.config.max_age)
            }
        ));
    }
    out.push_str(&format!("kv     {:<16} ready\n", topology::STATS_BUCKET));
    let salt_line = match salt {
        Some(salt) if salt.trim().is_empty() => {
            return Err(Error::Usage(
                "--federation-salt is empty; give the network's salt (a long random string)".into(),
            ))
        }
        Some(salt) => {
            if topology::put_salt_if_absent(&js, salt).await? {
                "salt written"
            } else {
                "salt already set (kept; it is never overwritten)"
            }
        }
        None => "ready",
    };
    out.push_str(&format!(
        "kv     {:<16} {salt_line}; digest-every {every}\n",
        topology::CONFIG_BUCKET
    ));
    Ok(out)
}
