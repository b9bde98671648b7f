//! Connecting to NATS with the operator's credentials.

use crate::Error;
use std::path::PathBuf;
use std::time::Duration;

/// Where NATS is and who we are there.
#[derive(Debug, Clone, Default)]
pub struct NatsConfig {
    pub url: String,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    pub creds: Option<PathBuf>,
}

impl NatsConfig {
    pub fn new(url: impl Into<String>) -> Self {
        NatsConfig {
            url: url.into(),
            ..NatsConfig::default()
        }
    }

    /// The servers of `url`: one, or a comma-separated list as the NATS tools take it
    /// (contract §9), so that a start-up does not depend on any one of them.
    pub fn servers(&self) -> Vec<String> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Connects, failing at once if no server of the list can be reached; after that, the client
    /// reconnects by itself, to any server of the cluster, for as long as it takes.
    pub async fn connect(&self, name: &str) -> Result<async_nats::Client, Error> {
        self.connect_with(name, false, None).await
    }

    /// A client that connects in the background, however long the server is away (the node
    /// agent works without it), and reports every connect and reconnect on `connected`.
    pub async fn connect_patiently(
        &self,
        name: &str,
        connected: tokio::sync::broadcast::Sender<()>,
    ) -> Result<async_nats::Client, Error> {
        self.connect_with(name, true, Some(connected)).await
    }

    async fn connect_with(
        &self,
        name: &str,
        patient: bool,
        connected: Option<tokio::sync::broadcast::Sender<()>>,
    ) -> Result<async_nats::Client, Error> {
        let mut options = match &self.creds {
            Some(path) => async_nats::ConnectOptions::with_credentials_file(path)
                .await
                .map_err(|source| Error::Credentials {
                    path: path.clone(),
                    source,
                })?,
            None => async_nats::ConnectOptions::new(),
        };
        match (&self.user, &self.password) {
            (Some(user), Some(password)) => {
                options = options.user_and_password(user.clone(), password.clone())
            }
            (None, None) => {}
            _ => {
                return Err(Error::Usage(
                    "--nats-user and --nats-password go together: give both or neither".into(),
                ))
            }
        }
        if let Some(token) = &self.token {
            options = options.token(token.clone());
        }
        let url = self.url.clone();
        if patient {
            options = options.retry_on_initial_connect();
        }
        options
            .name(name)
            .connection_timeout(Duration::from_secs(5))
            .event_callback(move |event| {
                let connected = connected.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            tracing::info!("connected to NATS");
                            if let Some(tx) = connected {
                                let _ = tx.send(());
                            }
                        }
                        async_nats::Event::Disconnected => {
                            tracing::warn!("disconnected from NATS; reconnecting")
                        }
                        // Closed is what dropping the client at the end of a command looks like.
                        async_nats::Event::Closed => tracing::debug!("NATS connection closed"),
                        other => tracing::warn!(event = %other, "NATS"),
                    }
                }
            })
            .connect(self.servers())
            .await
            .map_err(|source| Error::Connect { url, source })
    }
}
