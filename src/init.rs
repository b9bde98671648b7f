//! `init`: create or update the topology, and say what exists.

use crate::topology::{self, TopologyConfig};
use crate::{Error, NatsConfig};
use async_nats::jetstream;

pub async fn init(nats: &NatsConfig, config: &TopologyConfig) -> Result<String, Error> {
    let client = nats.connect("truebit-federation init").await?;
    let js = jetstream::new(client);
    let mut t = topology::ensure(&js, config).await?;
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
    Ok(out)
}
