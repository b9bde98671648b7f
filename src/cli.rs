//! The command line of contract §6: each setting a flag with an environment fallback.

use crate::infra::topology::{AckMode, TopologyConfig};
use crate::{Error, NatsConfig, ServeConfig, StatsConfig};
use clap::{Args, Parser, Subcommand};
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;
use truebit_streams::Period;
use truebit_streams::{Mode, Permissions, PublicKey};

#[derive(Debug, Parser)]
#[command(
    name = "truebit-federation",
    version,
    about = "Aggregates TrueBit Monitor federation events from NATS JetStream into network-wide statistics"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// NATS server to use.
    #[arg(
        long,
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        global = true
    )]
    pub nats_url: String,
    /// The projections database (redb).
    #[arg(
        long,
        env = "DB_PATH",
        default_value = "./data/aggregator.redb",
        global = true
    )]
    pub db_path: PathBuf,
    /// NATS user (with --nats-password).
    #[arg(long, env = "NATS_USER", global = true)]
    pub nats_user: Option<String>,
    /// NATS password.
    #[arg(long, env = "NATS_PASSWORD", global = true, hide_env_values = true)]
    pub nats_password: Option<String>,
    /// NATS token.
    #[arg(long, env = "NATS_TOKEN", global = true, hide_env_values = true)]
    pub nats_token: Option<String>,
    /// NATS .creds file (JWT and nkey).
    #[arg(long, env = "NATS_CREDS", global = true)]
    pub nats_creds: Option<PathBuf>,
    /// The root key of the key registry (a public key, U…), as `keys new-admin` printed it.
    #[arg(long, env = "ADMIN_KEY", global = true, value_parser = parse_public_key)]
    pub admin_key: Option<PublicKey>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the topology if missing, catch up, fold live, publish snapshots.
    Serve(ServeArgs),
    /// Print a snapshot, from the database or from the running serve.
    Stats(StatsArgs),
    /// Create or update the JetStream topology and exit.
    Init(InitArgs),
    /// Run the node agent beside a TrueBit runner: publish what it does, show the network's numbers.
    Node(NodeArgs),
    /// Rebuild every projection from TRUEBIT_EVENTS (or verify the database against a rebuild).
    Replay(ReplayArgs),
    /// Check a published snapshot against a rebuild from the streams: its state digest and its
    /// headline figures (contract §11). Needs only read access to the streams.
    Audit(AuditArgs),
    /// Make key pairs, and issue, revoke and list the keys that may publish (contract §7).
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make the root admin key pair: its seed to FILE (mode 0600), its public key printed for ADMIN_KEY.
    NewAdmin {
        #[arg(long)]
        out: PathBuf,
    },
    /// Make a key pair on the machine that will use it: the seed to FILE, the public key printed.
    New {
        #[arg(long)]
        out: PathBuf,
    },
    /// Issue a key: make one (--out) or register the public key a node made (--public-key).
    Issue {
        #[arg(long)]
        name: String,
        /// Bind the key to this nodeId: it may publish as no other.
        #[arg(long)]
        node_id: Option<String>,
        /// Messages per minute.
        #[arg(long, default_value_t = truebit_streams::DEFAULT_RATE_LIMIT, value_parser = clap::value_parser!(u32).range(1..=truebit_streams::MAX_RATE_LIMIT as i64))]
        rate_limit: u32,
        /// An admin key, that may sign operator events (and not publish, unless --publish too).
        #[arg(long)]
        admin: bool,
        /// With --admin: may publish node messages as well.
        #[arg(long, requires = "admin")]
        publish: bool,
        /// Make the key pair here and write its seed to FILE.
        #[arg(
            long,
            conflicts_with = "public_key",
            required_unless_present = "public_key"
        )]
        out: Option<PathBuf>,
        /// Register a key whose seed its node made and kept (`keys new`).
        #[arg(long, value_parser = parse_public_key)]
        public_key: Option<PublicKey>,
        #[command(flatten)]
        seed: AdminSeed,
    },
    /// Revoke a key: its messages are refused from this stream position on (in enforce).
    Revoke {
        #[arg(value_parser = parse_public_key)]
        public_key: PublicKey,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        seed: AdminSeed,
    },
    /// Set the admission mode: open, audit or enforce.
    Mode {
        #[arg(value_parser = |m: &str| Mode::parse(m).ok_or_else(|| format!("{m:?} is not a mode: open, audit or enforce")))]
        mode: Mode,
        #[command(flatten)]
        seed: AdminSeed,
    },
    /// The registry as folded: keys, permissions, rates, what each admitted and refused.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct AdminSeed {
    /// The admin seed file that signs the operator event (mode 0600).
    #[arg(long, env = "ADMIN_SEED")]
    pub admin_seed: Option<PathBuf>,
}

/// An instance name becomes part of a consumer's name: 1-32 characters of `[A-Za-z0-9_-]`.
fn parse_instance(s: &str) -> Result<String, String> {
    let ok = (1..=32).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not an instance name: 1-32 characters of letters, digits, '_' and '-'"
        ))
    }
}

fn parse_public_key(s: &str) -> Result<PublicKey, String> {
    PublicKey::parse(s.trim()).ok_or_else(|| {
        format!("{s:?} is not an nkey user public key: 56 characters starting with U, as `keys new` or `keys new-admin` prints (never the seed, which starts with SU)")
    })
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Write the rebuilt database here and replace nothing (safe beside a running serve); with
    /// --verify, keep the verified rebuild here.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Stop at this stream sequence.
    #[arg(long)]
    pub to_seq: Option<u64>,
    /// Rebuild up to the database's last sequence and compare every record; exit 1 on a difference.
    #[arg(long, conflicts_with = "to_seq")]
    pub verify: bool,
    /// Rebuild even when neither the stream nor a checkpoint covers its beginning.
    #[arg(long)]
    pub allow_gap: bool,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Audit the state at this stream sequence: the history record of it, else the digest
    /// point published there (default: the newest history record).
    #[arg(long, conflicts_with = "at")]
    pub seq: Option<u64>,
    /// Audit the newest history record at or before this RFC 3339 time.
    #[arg(long, value_parser = parse_at)]
    pub at: Option<i64>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Milliseconds between snapshots.
    #[arg(long, env = "PUBLISH_INTERVAL", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(100..))]
    pub publish_interval: u64,
    /// Most messages folded in one database transaction.
    #[arg(long, env = "BATCH_SIZE", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=20_000))]
    pub batch_size: u64,
    /// How often to store a checkpoint of the projections (e.g. 1h); 0 never.
    #[arg(long, env = "CHECKPOINT_INTERVAL", default_value = "1h", value_parser = parse_duration)]
    pub checkpoint_interval: Duration,
    /// How many checkpoints to keep.
    #[arg(long, env = "CHECKPOINTS_KEPT", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=100))]
    pub checkpoints_kept: u64,
    /// How the durable consumer is acked after each commit: `all` (one ack per commit) or
    /// `explicit` (one per message); both only after the commit.
    #[arg(long, env = "ACK_POLICY", default_value = "all", value_parser = |s: &str| AckMode::parse(s).ok_or_else(|| format!("{s:?} is not an ack policy; write all or explicit")))]
    pub ack_policy: AckMode,
    /// This instance's name, when several serve (contract §9): its consumer is
    /// aggregator-NAME, and it needs a database of its own.
    #[arg(long, env = "INSTANCE", value_parser = parse_instance)]
    pub instance: Option<String>,
    /// Where to serve HTTP (dashboard, /metrics, /healthz, /readyz, /api/…): host:port, or `off`.
    #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:8480", value_parser = parse_http_addr)]
    pub http_addr: HttpAddr,
    /// Stream sequences between two digest points (contract §11); one value per network, kept
    /// in the truebit-config KV bucket: a value that disagrees with the network's is an error.
    #[arg(long, env = "DIGEST_EVERY", value_parser = clap::value_parser!(u64).range(1..))]
    pub digest_every: Option<u64>,
    /// For benchmarks only: fold without keeping the state digest, to measure what it costs.
    /// Such an instance records and publishes no digest; its database gets its digest by one
    /// scan when next opened without this flag.
    #[arg(long, env = "NO_DIGEST", hide = true)]
    pub no_digest: bool,
    #[command(flatten)]
    pub topology: TopologyArgs,
}

/// `HTTP_ADDR`: an address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpAddr(pub Option<std::net::SocketAddr>);

fn parse_http_addr(s: &str) -> Result<HttpAddr, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(HttpAddr(None));
    }
    s.parse().map(|a| HttpAddr(Some(a))).map_err(|_| {
        format!("{s:?} is not an address to listen on; write host:port with a numeric host, e.g. 127.0.0.1:8480 or 0.0.0.0:8480, or off")
    })
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Write the federation salt to the truebit-config KV bucket when it holds none (never over
    /// another).
    #[arg(long, env = "FEDERATION_SALT", hide_env_values = true)]
    pub federation_salt: Option<String>,
    /// Stream sequences between two digest points (contract §11), written to truebit-config
    /// when the network has none (default 10000); never over another value.
    #[arg(long, env = "DIGEST_EVERY", value_parser = clap::value_parser!(u64).range(1..))]
    pub digest_every: Option<u64>,
    #[command(flatten)]
    pub topology: TopologyArgs,
}

/// Contract §10: every setting a flag with an environment fallback.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// The runner's EventDB: the `*-eventDB.json` file, or the folder that holds it.
    #[arg(long, env = "EVENTDB")]
    pub eventdb: Option<PathBuf>,
    /// The runner's debug log folder (`*.log` followed, `*.log.gz` read once).
    #[arg(long, env = "RUNNER_LOGS")]
    pub logs: Option<PathBuf>,
    /// The network's salt; without it, the key `salt` of the truebit-config KV bucket.
    #[arg(long, env = "FEDERATION_SALT", hide_env_values = true)]
    pub federation_salt: Option<String>,
    /// The node's seed file (mode 0600, from `keys new`); without it messages go unsigned.
    #[arg(long, env = "NODE_KEY_SEED")]
    pub key_seed: Option<PathBuf>,
    /// The node's pseudonym; default `node-<uuid>`, made once and kept in the state directory.
    #[arg(long, env = "NODE_ID", value_parser = parse_node_id)]
    pub node_id: Option<String>,
    /// The outbox, what was read and the last snapshot.
    #[arg(long, env = "STATE_DIR", default_value = "./data/node")]
    pub state_dir: PathBuf,
    /// Where GET /api/federation/network-stats answers; `off` for nowhere.
    #[arg(long, env = "NODE_HTTP_ADDR", default_value = "127.0.0.1:8481", value_parser = parse_http_addr)]
    pub http_addr: HttpAddr,
    /// The aggregator's publish interval (ms): a snapshot older than two is stale.
    #[arg(long, env = "PUBLISH_INTERVAL", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(100..))]
    pub publish_interval: u64,
    /// Seconds between heartbeats.
    #[arg(long, env = "HEARTBEAT_INTERVAL", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub heartbeat_interval: u64,
    /// Seconds an event waits for a better source of its time or figures (see deploy/README.md, "Which events wait for `--grace`").
    #[arg(long, env = "NODE_GRACE", default_value_t = 60)]
    pub grace: u64,
    /// Most events the outbox keeps while NATS is away.
    #[arg(long, env = "OUTBOX_MAX", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub outbox_max: u64,
    /// How often the runner's files are looked at (ms).
    #[arg(long, env = "NODE_POLL_INTERVAL", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..))]
    pub poll_interval: u64,
    /// The rateLimit the operator issued this node's key with (messages per minute): never more
    /// go out in any minute, so that an enforcing aggregator refuses none.
    #[arg(long, env = "NODE_RATE_LIMIT", default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit: u32,
    /// Print the nodeId (which an operator needs to bind a key) and exit.
    #[arg(long)]
    pub show_id: bool,
}

fn parse_node_id(s: &str) -> Result<String, String> {
    let ok = (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
    ok.then(|| s.to_string())
        .ok_or_else(|| format!("{s:?} is not a nodeId: 1–128 characters of A-Z a-z 0-9 . _ : -"))
}

#[derive(Debug, Args)]
pub struct TopologyArgs {
    /// Replicas of every stream (1 on one server, 3 on a cluster).
    #[arg(long, env = "REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=5))]
    pub replicas: u64,
    /// How long TRUEBIT_EVENTS keeps raw events (e.g. 90d); 0 keeps them forever.
    #[arg(long, env = "EVENTS_MAX_AGE", default_value = "0", value_parser = parse_duration)]
    pub events_max_age: Duration,
    /// How long TRUEBIT_DLQ keeps dead letters.
    #[arg(long, env = "DLQ_MAX_AGE", default_value = "30d", value_parser = parse_duration)]
    pub dlq_max_age: Duration,
    /// How long TRUEBIT_STATS keeps the published history (e.g. 400d); 0 keeps it forever.
    #[arg(long, env = "STATS_MAX_AGE", default_value = "400d", value_parser = parse_duration)]
    pub stats_max_age: Duration,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// 1h, 24h, 7d or all.
    #[arg(long, default_value = "all")]
    pub period: Period,
    /// Evaluate the windows at this RFC 3339 time instead of now.
    #[arg(long, value_parser = parse_at)]
    pub at: Option<i64>,
    /// Print the exact object stored under period.<P>.
    #[arg(long)]
    pub json: bool,
}

/// `0`, or a number with a unit: `s`, `m`, `h`, `d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a duration; write e.g. 90d, 12h, 30m or 0"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "{s:?} has no unit; write e.g. 90d, 12h, 30m, 45s, or 0 for unlimited"
            ))
        }
    };
    Ok(Duration::from_secs(n * secs))
}

impl TopologyArgs {
    fn config(&self) -> TopologyConfig {
        TopologyConfig {
            replicas: self.replicas as usize,
            events_max_age: self.events_max_age,
            dlq_max_age: self.dlq_max_age,
            stats_max_age: self.stats_max_age,
        }
    }
}

impl Global {
    fn nats(&self) -> NatsConfig {
        NatsConfig {
            url: self.nats_url.clone(),
            user: self.nats_user.clone(),
            password: self.nats_password.clone(),
            token: self.nats_token.clone(),
            creds: self.nats_creds.clone(),
        }
    }
}

/// Runs a parsed command line; returns what to print on standard output.
pub async fn run(
    cli: Cli,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<String, Error> {
    let nats = cli.global.nats();
    match cli.command {
        Command::Serve(args) => {
            let config = ServeConfig {
                nats,
                db_path: cli.global.db_path,
                publish_interval: Duration::from_millis(args.publish_interval),
                topology: args.topology.config(),
                batch_size: args.batch_size as usize,
                checkpoint_interval: args.checkpoint_interval,
                checkpoints_kept: args.checkpoints_kept as usize,
                ack_mode: args.ack_policy,
                admin_key: cli.global.admin_key,
                instance: args.instance,
                http_addr: args.http_addr.0,
                http_bound: Default::default(),
                digest_every: args.digest_every,
                digest: !args.no_digest,
            };
            crate::serve(config, shutdown).await?;
            Ok(String::new())
        }
        Command::Stats(args) => {
            let config = StatsConfig {
                nats,
                db_path: cli.global.db_path,
                period: args.period,
                at: args.at,
                json: args.json,
            };
            let snapshot = crate::stats(&config).await?;
            Ok(if config.json {
                format!(
                    "{}\n",
                    serde_json::to_string_pretty(&snapshot).expect("JSON values serialize")
                )
            } else {
                crate::render(&snapshot)
            })
        }
        Command::Init(args) => {
            crate::init(
                &nats,
                &args.topology.config(),
                args.federation_salt.as_deref(),
                args.digest_every,
            )
            .await
        }
        Command::Node(args) => {
            if args.show_id {
                let id = crate::node::show_id(&args.state_dir, args.node_id.as_deref())?;
                return Ok(format!("{id}\n"));
            }
            let config = crate::NodeConfig {
                nats,
                eventdb: args.eventdb,
                logs: args.logs,
                salt: args.federation_salt,
                key_seed: args.key_seed,
                node_id: args.node_id,
                state_dir: args.state_dir,
                http_addr: args.http_addr.0,
                publish_interval: Duration::from_millis(args.publish_interval),
                heartbeat_interval: Duration::from_secs(args.heartbeat_interval),
                poll_interval: Duration::from_millis(args.poll_interval),
                grace: Duration::from_secs(args.grace),
                outbox_max: args.outbox_max,
                rate_limit: args.rate_limit,
            };
            crate::node(config, shutdown).await?;
            Ok(String::new())
        }
        Command::Replay(args) => {
            let config = crate::ReplayConfig {
                nats,
                db_path: cli.global.db_path,
                output: args.output,
                to_seq: args.to_seq,
                verify: args.verify,
                allow_gap: args.allow_gap,
                admin_key: cli.global.admin_key,
            };
            crate::replay(&config).await
        }
        Command::Audit(args) => {
            let config = crate::AuditConfig {
                nats,
                seq: args.seq,
                at: args.at,
                admin_key: cli.global.admin_key,
            };
            crate::audit(&config).await
        }
        Command::Keys(command) => keys(&nats, &cli.global.db_path, command).await,
    }
}

async fn keys(
    nats: &NatsConfig,
    db_path: &std::path::Path,
    command: KeysCommand,
) -> Result<String, Error> {
    use crate::commands::keys::{Change, KeySource};
    let (seed, change) = match command {
        KeysCommand::NewAdmin { out } => {
            let key = crate::infra::seed::new_key(&out)?;
            return Ok(format!(
                "{key}\nthe admin seed is in {} (mode 0600); set ADMIN_KEY={key} for serve and replay, and sign operator events with --admin-seed {}\n",
                out.display(),
                out.display()
            ));
        }
        KeysCommand::New { out } => {
            let key = crate::infra::seed::new_key(&out)?;
            return Ok(format!(
                "{key}\nthe seed is in {} (mode 0600) and never leaves this machine; give the operator this public key and your nodeId (`node --show-id`)\n",
                out.display()
            ));
        }
        KeysCommand::List { json } => {
            let registry = crate::commands::keys::list(nats, db_path).await?;
            return Ok(if json {
                format!(
                    "{}\n",
                    serde_json::to_string_pretty(&registry).expect("JSON values serialize")
                )
            } else {
                crate::commands::keys::render(&registry)
            });
        }
        KeysCommand::Issue {
            name,
            node_id,
            rate_limit,
            admin,
            publish,
            out,
            public_key,
            seed,
        } => {
            let key = match (out, public_key) {
                (Some(out), _) => KeySource::New(out),
                (None, Some(k)) => KeySource::Public(k),
                (None, None) => unreachable!("clap requires one"),
            };
            (
                seed,
                Change::Issue {
                    name,
                    node_id,
                    rate_limit,
                    permissions: Permissions {
                        publish: !admin || publish,
                        admin,
                    },
                    key,
                },
            )
        }
        KeysCommand::Revoke {
            public_key,
            reason,
            seed,
        } => (
            seed,
            Change::Revoke {
                key: public_key,
                reason,
            },
        ),
        KeysCommand::Mode { mode, seed } => (seed, Change::Mode(mode)),
    };
    crate::commands::keys::publish_change(nats, seed.admin_seed.as_deref(), change).await
}

/// `--at`: an RFC 3339 time, floored to the minute.
fn parse_at(at: &str) -> Result<truebit_streams::Minute, String> {
    truebit_streams::parse_minute(at).map_err(|e| format!("--at {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("90d"), Ok(Duration::from_secs(90 * 86_400)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert!(parse_duration("90").unwrap_err().contains("no unit"));
        assert!(parse_duration("d").is_err());
        assert!(parse_duration("1w").is_err());
    }

    #[test]
    fn the_command_line_parses_as_the_contract_says() {
        Cli::command_for_tests().debug_assert();
        let cli = Cli::try_parse_from([
            "truebit-federation",
            "stats",
            "--period",
            "7d",
            "--json",
            "--db-path",
            "x.redb",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Stats(StatsArgs {
                period: Period::Week,
                json: true,
                ..
            })
        ));
        assert_eq!(cli.global.db_path, PathBuf::from("x.redb"));
        let bad =
            Cli::try_parse_from(["truebit-federation", "stats", "--period", "2h"]).unwrap_err();
        assert!(bad.to_string().contains("1h, 24h, 7d, all"), "{bad}");
        let bad =
            Cli::try_parse_from(["truebit-federation", "stats", "--at", "yesterday"]).unwrap_err();
        assert!(bad.to_string().contains("RFC 3339"), "{bad}");
        let both = Cli::try_parse_from([
            "truebit-federation",
            "audit",
            "--seq",
            "10",
            "--at",
            "2026-11-25T10:30:00Z",
        ])
        .unwrap_err();
        assert!(both.to_string().contains("cannot be used with"), "{both}");
        let cli = Cli::try_parse_from(["truebit-federation", "audit", "--seq", "20000"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Audit(AuditArgs {
                seq: Some(20000),
                at: None
            })
        ));
        let zero = Cli::try_parse_from(["truebit-federation", "serve", "--digest-every", "0"])
            .unwrap_err();
        assert!(zero.to_string().contains("digest-every"), "{zero}");
    }

    impl Cli {
        fn command_for_tests() -> clap::Command {
            <Cli as clap::CommandFactory>::command()
        }
    }
}
