//! The pipeline benchmark: `cargo bench --bench pipeline [-- --events N]`.
//!
//! Fills a fresh nats-server with a simulated fleet's events (1,000 nodes; about 3.2 events per
//! task: receipts, completions, invoices, heartbeats, republished duplicates) and measures, in
//! one run over that one stream:
//! 1. the raw JetStream consume rate: a pull consumer acking once per 1,000-message batch, and
//!    the same with one ack per message, the ack work `serve`'s explicit-ack consumer does,
//! 2. `serve`'s catch-up fold rate (the release binary, as deployed), its ratio to the raw rate,
//!    and its peak RSS, once with each ack policy (`ACK_POLICY=explicit`: an ack per message;
//!    `all`, the default: an ack per commit), each into a fresh database,
//! 3. `replay`'s rebuild rate and its ratio to the raw rate,
//! 4. on the database `serve` built: its size per task, the time to compute the snapshot of
//!    every period, and the size and write time of one checkpoint.
//!
//! `--no-digest` runs `serve` and `replay` without the state digest of contract §11 (their
//! hidden, benchmark-only `NO_DIGEST`), to measure what keeping it costs.
//!
//! `--events 32000000` folds ten million tasks: about 15 GB of stream and 25 minutes here.
//!
//! `--table` prints the figures of the performance goals as one Markdown table, with the date
//! and the commit: an unsigned stream of `--events` (raw, `serve`, `replay`, peak RSS), the same
//! fleet signed (`serve` in `open` and in `enforce`), then an unsigned stream of `--big-events`
//! (default 32,000,000, ten million tasks; 0 skips it). `--store DIR` keeps that large stream's
//! nats-server store, and a later run with the same `--store` measures it again without filling
//! it (the fill is a quarter of the time).
//!
//! `PIPELINE_BIN=PATH` measures another build of the binary (an older commit, say) over the same
//! streams; `PIPELINE_PERF=DIR` records a CPU profile of each `serve` catch-up (Debian's
//! `linux-perf`) and prints its top frames; with `PIPELINE_PERF_GRAPH=1` it records `serve`'s
//! call graphs instead (`perf report -G -i` the file), to find who calls a hot frame.
//!
//! `--against PATH` measures this build and another turn about on one stream, twice each, each
//! beside a raw rate taken just before it: on a shared host whose speed drifts, the way to
//! compare two builds.
//!
//! `--signed` makes every node sign every message with a key of its own (contract §7), issued
//! and bound to its nodeId by operator events at the head of the stream, which then switch the
//! network to `enforce`. `serve` folds that stream twice: with the `ADMIN_KEY` that signed the
//! operator events (every message checked against the registry, in `enforce`), and with another
//! one (the operator events are refused, so the network stays `open`: no node message's
//! signature is asked for).

use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy};
use futures::StreamExt;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use truebit_projections::Projections;
use truebit_streams::subjects::ADMIN_KEYS;
use truebit_streams::{operator_payload, KeyGrant, Mode, OperatorKind, Permissions, SigningKey};
use truebit_testkit::{signal, Fleet, NatsCluster, NatsServer, Reaped, SIGTERM};

/// Where the benchmark's streams live.
struct Target {
    /// One URL, or the cluster's list.
    url: String,
    replicas: usize,
}

impl Target {
    fn url(&self) -> String {
        self.url.clone()
    }

    fn servers(&self) -> Vec<String> {
        self.url.split(',').map(str::to_string).collect()
    }

    fn topology(&self) -> truebit_federation::topology::TopologyConfig {
        truebit_federation::topology::TopologyConfig {
            replicas: self.replicas,
            ..Default::default()
        }
    }
}

/// Events per simulated task, on average (receipt, completion, invoice, heartbeats, repeats).
const EVENTS_PER_TASK: f64 = 3.2;

struct Args {
    events: u64,
    signed: bool,
    cluster: bool,
    table: bool,
    /// Events of the large run of `--table`; 0 skips it.
    big_events: u64,
    /// Where `--table` keeps the large run's stream, so that a second table run reuses it.
    store: Option<std::path::PathBuf>,
    no_digest: bool,
    /// Another build to measure turn about with this one on the same stream.
    against: Option<std::path::PathBuf>,
}

fn args() -> Args {
    let mut a = Args {
        events: 500_000,
        signed: false,
        cluster: false,
        table: false,
        big_events: 32_000_000,
        store: None,
        no_digest: false,
        against: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .unwrap_or_else(|| panic!("a value after {flag}"))
                .replace('_', "")
        };
        let number = |v: String| {
            v.parse()
                .unwrap_or_else(|_| panic!("{v:?} is not a number"))
        };
        match flag.as_str() {
            "--events" => a.events = number(value()),
            "--big-events" => a.big_events = number(value()),
            "--store" => a.store = Some(value().into()),
            "--against" => a.against = Some(value().into()),
            "--signed" => a.signed = true,
            "--cluster" => a.cluster = true,
            "--table" => a.table = true,
            "--no-digest" => a.no_digest = true,
            _ => {} // cargo bench passes --bench too
        }
    }
    a
}

/// The binary measured: this build's, or `PIPELINE_BIN` to measure another build of it over
/// the same streams (an older commit, say).
fn binary() -> std::path::PathBuf {
    std::env::var_os("PIPELINE_BIN")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_truebit-federation").into())
}

fn main() {
    let args = args();
    if args.no_digest {
        println!("digest     off (NO_DIGEST): serve and replay keep no state digest");
        // Before any thread starts; every binary this run starts inherits it.
        std::env::set_var("NO_DIGEST", "true");
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    if args.table {
        table(&rt, &args);
        return;
    }
    // One server, or a three-server cluster with every stream on all three (REPLICAS=3).
    let (_single, _cluster, url, replicas) = if args.cluster {
        let cluster = NatsCluster::start(3);
        rt.block_on(cluster.wait_for_jetstream(Duration::from_secs(60)));
        let url = cluster.urls();
        (None, Some(cluster), url, 3)
    } else {
        let server = NatsServer::start();
        let url = server.url();
        (Some(server), None, url, 1)
    };
    let server = Target { url, replicas };
    if args.cluster {
        println!("cluster    three nats-servers on 127.0.0.1, REPLICAS=3");
    }
    if let Some(other) = &args.against {
        against(&rt, &server, args.events, other);
    } else if args.signed {
        signed_run(&rt, &server, args.events);
    } else {
        unsigned_run(&rt, &server, args.events, Extras::All);
    }
}

/// A stream of the simulated fleet for `events` events, in the server; its message count.
fn filled(rt: &tokio::runtime::Runtime, server: &Target, events: u64, keys: Option<&Keys>) -> u64 {
    let fleet = Fleet::new(1000, 2026);
    let tasks = (events as f64 / EVENTS_PER_TASK) as u64;
    let (events, publish_secs, bytes) = rt.block_on(fill(server, &fleet, tasks, keys));
    println!(
        "stream     {events} events ({:.0} bytes each) for {tasks} tasks from {} nodes, published in {publish_secs:.1} s{}",
        bytes as f64 / events as f64,
        fleet.nodes,
        if keys.is_some() { ", every message signed, enforce" } else { "" }
    );
    events
}

/// The raw consume rate, one ack per 1,000 messages: the yardstick of every ratio.
fn raw(rt: &tokio::runtime::Runtime, server: &Target, events: u64) -> f64 {
    let raw = rt.block_on(raw_consume(server, events, AckPolicy::All));
    println!("raw        {raw:>9.0} events/s  (pull consumer, one ack per 1000-message batch)");
    raw
}

/// `--against PATH`: this build and another measured turn about, twice each, on one stream,
/// each `serve` and `replay` beside a raw rate taken just before it. On a machine whose speed
/// drifts from minute to minute (a shared host), runs of the two builds minutes apart differ
/// by more than a change does; turns a minute apart, each against its own yardstick, do not.
fn against(rt: &tokio::runtime::Runtime, server: &Target, events: u64, other: &std::path::Path) {
    let events = filled(rt, server, events, None);
    let this = binary();
    let mut ratios: Vec<(&str, f64, f64)> = Vec::new();
    for round in 1..=2 {
        for (name, bin) in [("this", this.as_path()), ("other", other)] {
            let raw = raw(rt, server, events);
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("against.redb");
            let (serve, rss_kib) = serve_catch_up_with(bin, server, events, &path, "all", &[]);
            let replay = replay_rate_with(bin, server, events);
            println!(
                "{name:<6} {round}   serve {serve:>7.0}/s {:.2} x raw, peak RSS {:.1} MiB; replay {replay:>7.0}/s {:.2} x raw  ({})",
                serve / raw,
                rss_kib as f64 / 1024.0,
                replay / raw,
                bin.display()
            );
            ratios.push((name, serve / raw, replay / raw));
        }
    }
    for name in ["this", "other"] {
        let mine: Vec<_> = ratios.iter().filter(|r| r.0 == name).collect();
        let mean =
            |f: fn(&&(&str, f64, f64)) -> f64| mine.iter().map(f).sum::<f64>() / mine.len() as f64;
        println!(
            "{name:<6} mean serve {:.2} x raw, replay {:.2} x raw",
            mean(|r| r.1),
            mean(|r| r.2)
        );
    }
}

/// What a signed run measured.
struct Signed {
    raw: f64,
    open: f64,
    enforce: f64,
    enforce_rss_kib: u64,
}

/// Every message signed: `serve` in `open` (another ADMIN_KEY refuses the operator events) and
/// in `enforce`.
fn signed_run(rt: &tokio::runtime::Runtime, server: &Target, events: u64) -> Signed {
    let keys = Keys::new(1000);
    let events = filled(rt, server, events, Some(&keys));
    let raw = raw(rt, server, events);
    let dir = tempfile::tempdir().unwrap();
    let open_path = dir.path().join("open.redb");
    let stranger = truebit_streams::SigningKey::generate();
    let env = [("ADMIN_KEY", stranger.public_key().to_string())];
    let (open, rss_kib) = serve_catch_up(server, events, &open_path, "all", &env);
    println!(
        "serve      {:>9.0} events/s  catch-up fold, signed stream left open (another ADMIN_KEY), {:.2} x raw; peak RSS {:.1} MiB",
        open,
        open / raw,
        rss_kib as f64 / 1024.0
    );
    std::fs::remove_file(&open_path).unwrap();
    let enforce_path = dir.path().join("enforce.redb");
    let env = [("ADMIN_KEY", keys.root.public_key().to_string())];
    let (enforce, enforce_rss_kib) = serve_catch_up(server, events, &enforce_path, "all", &env);
    println!(
        "serve      {:>9.0} events/s  catch-up fold, signed stream in enforce, {:.2} x raw; peak RSS {:.1} MiB",
        enforce,
        enforce / raw,
        enforce_rss_kib as f64 / 1024.0
    );
    let db = Projections::open_existing(&enforce_path).unwrap();
    let checked = db.admission_counts().unwrap();
    assert!(
        db.rejections().unwrap().is_empty() && checked.len() == 1,
        "every signed message admitted: {checked:?}, refused {:?}",
        db.rejections().unwrap()
    );
    println!("admission  {checked:?}");
    Signed {
        raw,
        open,
        enforce,
        enforce_rss_kib,
    }
}

/// What an unsigned run measures besides `serve` with `ACK_POLICY=all` and `replay`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Extras {
    /// One ack per message, raw and `serve`; the database's size, a snapshot, a checkpoint.
    All,
    None,
}

/// What an unsigned run measured.
struct Unsigned {
    raw: f64,
    serve: f64,
    serve_rss_kib: u64,
    replay: f64,
}

fn unsigned_run(
    rt: &tokio::runtime::Runtime,
    server: &Target,
    events: u64,
    extras: Extras,
) -> Unsigned {
    let events = filled(rt, server, events, None);
    unsigned_measures(rt, server, events, extras)
}

fn unsigned_measures(
    rt: &tokio::runtime::Runtime,
    server: &Target,
    events: u64,
    extras: Extras,
) -> Unsigned {
    let raw = raw(rt, server, events);
    let dir = tempfile::tempdir().unwrap();
    if extras == Extras::All {
        let raw_explicit = rt.block_on(raw_consume(server, events, AckPolicy::Explicit));
        println!(
            "raw        {raw_explicit:>9.0} events/s  (pull consumer, one ack per message: {:.2} x raw)",
            raw_explicit / raw
        );
        let explicit_path = dir.path().join("explicit.redb");
        let (fold, rss_kib) = serve_catch_up(server, events, &explicit_path, "explicit", &[]);
        println!(
            "serve      {:>9.0} events/s  catch-up fold, ACK_POLICY=explicit, {:.2} x raw, {:.2} x raw with one ack per message; peak RSS {:.1} MiB",
            fold,
            fold / raw,
            fold / raw_explicit,
            rss_kib as f64 / 1024.0
        );
        std::fs::remove_file(&explicit_path).unwrap();
    }
    let db_path = dir.path().join("bench.redb");
    let (serve, serve_rss_kib) = serve_catch_up(server, events, &db_path, "all", &[]);
    println!(
        "serve      {:>9.0} events/s  catch-up fold, ACK_POLICY=all, {:.2} x raw",
        serve,
        serve / raw,
    );
    println!(
        "serve RSS  {:>9.1} MiB peak (VmHWM), ACK_POLICY=all",
        serve_rss_kib as f64 / 1024.0
    );

    let replay = replay_rate(server, events);
    println!(
        "replay     {:>9.0} events/s  rebuild, {:.2} x raw",
        replay,
        replay / raw
    );

    if extras == Extras::All {
        let db = Projections::open_existing(&db_path).unwrap();
        let (held, _, _) = db.record_counts().unwrap();
        let size = std::fs::metadata(&db_path).unwrap().len();
        println!(
            "database   {:>9.1} MiB for {held} tasks: {:.0} bytes per task",
            size as f64 / (1 << 20) as f64,
            size as f64 / held as f64
        );
        let (per_snapshot, checkpoint) = rt.block_on(snapshot_cost(server, &db, dir.path()));
        println!(
            "snapshot   {:>9.2} ms for all four periods with {held} tasks folded",
            per_snapshot.as_secs_f64() * 1e3,
        );
        println!(
            "checkpoint {:>9.1} MiB with {held} tasks: copy {:.1} s, upload to the object store {:.1} s",
            checkpoint.bytes as f64 / (1 << 20) as f64,
            checkpoint.copy.as_secs_f64(),
            checkpoint.upload.as_secs_f64()
        );
    }
    Unsigned {
        raw,
        serve,
        serve_rss_kib,
        replay,
    }
}

/// `--table`: the figures of the performance goals in one run, as a Markdown table: a stream of
/// `--events` unsigned and the same signed, then one of `--big-events` (kept in `--store`
/// when given, and reused by the next run whose stream there has as many messages).
fn table(rt: &tokio::runtime::Runtime, args: &Args) {
    let one = |events: u64| format!("{:.1}M tasks", events as f64 / EVENTS_PER_TASK / 1e6);
    let mut rows: Vec<(String, String)> = Vec::new();
    let with_rss =
        |ratio: f64, kib: u64| format!("**{ratio:.2} ×**, peak RSS {:.1} MiB", kib as f64 / 1024.0);

    println!("== unsigned, {}", one(args.events));
    let server = NatsServer::start();
    let target = Target {
        url: server.url(),
        replicas: 1,
    };
    let u = unsigned_run(rt, &target, args.events, Extras::None);
    drop(server);
    println!("== signed, {}", one(args.events));
    let server = NatsServer::start();
    let target = Target {
        url: server.url(),
        replicas: 1,
    };
    let s = signed_run(rt, &target, args.events);
    drop(server);
    rows.push((
        format!("raw, {}", one(args.events)),
        format!("{:.0}/s unsigned, {:.0}/s signed", u.raw, s.raw),
    ));
    rows.push((
        format!("`serve`, {}", one(args.events)),
        with_rss(u.serve / u.raw, u.serve_rss_kib),
    ));
    rows.push((
        format!("`serve`, signed, `enforce`, {}", one(args.events)),
        with_rss(s.enforce / s.raw, s.enforce_rss_kib),
    ));
    rows.push((
        format!("`serve`, signed, `open`, {}", one(args.events)),
        format!(
            "**{:.2} ×** of the unsigned fold ({:.0}/s against {:.0}/s); {:.2} × its own raw",
            s.open / u.serve,
            s.open,
            u.serve,
            s.open / s.raw
        ),
    ));
    rows.push((
        format!("`replay`, {}", one(args.events)),
        format!("**{:.2} ×**", u.replay / u.raw),
    ));

    if args.big_events > 0 {
        println!("== unsigned, {}", one(args.big_events));
        let kept = args.store.clone();
        let server = match &kept {
            Some(dir) => NatsServer::start_in(dir),
            None => NatsServer::start(),
        };
        let target = Target {
            url: server.url(),
            replicas: 1,
        };
        let held = rt.block_on(stream_messages(&target));
        let whole = held.is_some_and(|n| n as f64 >= args.big_events as f64 * 0.99);
        if held.is_some() && !whole {
            // Left over from a run stopped while filling: start it again.
            rt.block_on(delete_stream(&target));
        }
        let b = if whole {
            let events = held.unwrap_or(0);
            println!(
                "stream     {events} events kept from an earlier run in {}",
                kept.as_ref()
                    .map(|d| d.display().to_string())
                    .unwrap_or_default()
            );
            unsigned_measures(rt, &target, events, Extras::None)
        } else {
            unsigned_run(rt, &target, args.big_events, Extras::None)
        };
        rows.push((
            format!("raw, {}", one(args.big_events)),
            format!("{:.0}/s", b.raw),
        ));
        rows.push((
            format!("`serve`, {}", one(args.big_events)),
            with_rss(b.serve / b.raw, b.serve_rss_kib),
        ));
        rows.push((
            format!("`replay`, {}", one(args.big_events)),
            format!("**{:.2} ×**", b.replay / b.raw),
        ));
    }

    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let date = chrono::Utc::now().format("%Y-%m-%d");
    println!();
    println!("| figure (× raw consume of the same stream, same run) | measured {date}, {commit} |");
    println!("| --- | --- |");
    for (figure, value) in rows {
        println!("| {figure} | {value} |");
    }
}

async fn delete_stream(server: &Target) {
    let js = jetstream::new(async_nats::connect(server.servers()).await.unwrap());
    js.delete_stream("TRUEBIT_EVENTS").await.unwrap();
}

/// How many messages `TRUEBIT_EVENTS` holds, if it exists.
async fn stream_messages(server: &Target) -> Option<u64> {
    let js = jetstream::new(async_nats::connect(server.servers()).await.ok()?);
    let mut stream = js.get_stream("TRUEBIT_EVENTS").await.ok()?;
    Some(stream.info().await.ok()?.state.messages)
}

/// A key per node, and the root key that issues them.
struct Keys {
    root: SigningKey,
    nodes: Vec<SigningKey>,
}

impl Keys {
    fn new(nodes: u64) -> Self {
        Keys {
            root: SigningKey::generate(),
            nodes: (0..nodes).map(|_| SigningKey::generate()).collect(),
        }
    }

    /// The operator events that admit every node, bound to its nodeId, then `enforce`.
    fn registry(&self, fleet: &Fleet) -> Vec<(String, Vec<u8>, async_nats::HeaderMap)> {
        let now = chrono::Utc::now();
        let mut kinds: Vec<OperatorKind> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(n, key)| {
                OperatorKind::KeyIssued(KeyGrant {
                    key: key.public_key().clone(),
                    name: format!("node {n}"),
                    node_id: Some(fleet.node_id(n as u64)),
                    permissions: Permissions {
                        publish: true,
                        admin: false,
                    },
                    // A simulated node publishes its whole history in about a minute.
                    rate_limit: truebit_streams::MAX_RATE_LIMIT,
                })
            })
            .collect();
        kinds.push(OperatorKind::AdmissionSet {
            mode: Mode::Enforce,
        });
        kinds
            .iter()
            .map(|kind| {
                let payload = operator_payload(kind, now);
                let headers = headers(&self.root, ADMIN_KEYS, &payload, None);
                (ADMIN_KEYS.to_string(), payload, headers)
            })
            .collect()
    }
}

fn headers(
    key: &SigningKey,
    subject: &str,
    payload: &[u8],
    msg_id: Option<&str>,
) -> async_nats::HeaderMap {
    let mut headers = async_nats::HeaderMap::new();
    for (name, value) in key.sign(subject, payload) {
        headers.insert(name, value.as_str());
    }
    if let Some(id) = msg_id {
        headers.insert("Nats-Msg-Id", id);
    }
    headers
}

/// Publishes the fleet's messages for `tasks` tasks, a million tasks' worth at a time so that
/// a ten-million-task stream never sits in memory whole; signed by each node's key if `keys`.
async fn fill(server: &Target, fleet: &Fleet, tasks: u64, keys: Option<&Keys>) -> (u64, f64, u64) {
    const CHUNK: u64 = 1_000_000;
    let client = async_nats::connect(server.servers()).await.unwrap();
    let js = jetstream::new(client);
    truebit_federation::topology::ensure(&js, &server.topology())
        .await
        .unwrap();
    let started = Instant::now();
    let (mut bytes, mut last) = (0u64, 0u64);
    if let Some(keys) = keys {
        last = truebit_testkit::publish_all_with_headers(&js, keys.registry(fleet)).await;
    }
    let mut first = 0;
    while first < tasks {
        let chunk = Fleet {
            first_task: first,
            ..fleet.clone()
        };
        let (messages, _) = chunk.generate(CHUNK.min(tasks - first));
        bytes += messages.iter().map(|m| m.payload.len() as u64).sum::<u64>();
        last = match keys {
            None => {
                truebit_testkit::publish_all(
                    &js,
                    messages
                        .iter()
                        .map(|m| (m.subject, m.payload.as_slice(), Some(m.msg_id.as_str()))),
                )
                .await
            }
            Some(keys) => {
                truebit_testkit::publish_all_with_headers(
                    &js,
                    messages.into_iter().map(|m| {
                        let key = &keys.nodes[m.node as usize];
                        let h = headers(key, m.subject, &m.payload, Some(&m.msg_id));
                        (m.subject.to_string(), m.payload, h)
                    }),
                )
                .await
            }
        };
        first += CHUNK;
    }
    (last, started.elapsed().as_secs_f64(), bytes)
}

async fn raw_consume(server: &Target, events: u64, policy: AckPolicy) -> f64 {
    let client = async_nats::connect(server.servers()).await.unwrap();
    let js = jetstream::new(client);
    let stream = js.get_stream("TRUEBIT_EVENTS").await.unwrap();
    let mut consumer = stream
        .create_consumer(pull::Config {
            ack_policy: policy,
            max_ack_pending: 20_000,
            ..Default::default()
        })
        .await
        .unwrap();
    let started = Instant::now();
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(1000)
        .messages()
        .await
        .unwrap();
    let mut seen = 0u64;
    while seen < events {
        // A stall must not pass for a slow machine: name where it stopped, as the server sees it.
        let Ok(next) = tokio::time::timeout(Duration::from_secs(60), messages.next()).await else {
            let info = consumer.info().await.map(|i| {
                format!(
                    "delivered up to stream sequence {}, acked up to {}, {} pending, {} awaiting ack",
                    i.delivered.stream_sequence,
                    i.ack_floor.stream_sequence,
                    i.num_pending,
                    i.num_ack_pending
                )
            });
            panic!("raw consume ({policy:?}) stalled for 60 s after {seen} of {events} messages; the server says: {info:?}");
        };
        let m = next.unwrap().unwrap();
        seen += 1;
        if policy == AckPolicy::Explicit || seen.is_multiple_of(1000) || seen == events {
            m.ack().await.unwrap();
        }
    }
    events as f64 / started.elapsed().as_secs_f64()
}

/// Runs the release `serve` over the full stream with an ack policy; its catch-up rate (from its
/// own log) and peak RSS.
fn serve_catch_up(
    server: &Target,
    events: u64,
    db_path: &std::path::Path,
    ack_policy: &str,
    env: &[(&str, String)],
) -> (f64, u64) {
    serve_catch_up_with(&binary(), server, events, db_path, ack_policy, env)
}

fn serve_catch_up_with(
    bin: &std::path::Path,
    server: &Target,
    events: u64,
    db_path: &std::path::Path,
    ack_policy: &str,
    env: &[(&str, String)],
) -> (f64, u64) {
    let mut child = Reaped(
        Command::new(bin)
            .arg("serve")
            .env("NATS_URL", server.url())
            .env("DB_PATH", db_path)
            .env("ACK_POLICY", ack_policy)
            .env("REPLICAS", server.replicas.to_string())
            .envs(env.iter().map(|(k, v)| (k, v)))
            // Beside an aggregator already on 8480 (the quick start's), on a free port.
            .env("HTTP_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // PIPELINE_PERF=DIR records where the machine's CPU time goes while serve catches up
    // (Debian's linux-perf), a flat profile of every process at 999 Hz, and prints the share of
    // each process and serve's top frames. The whole machine, because serve starts its reading
    // threads after it starts, and so that nats-server's share shows.
    let profile = std::env::var_os("PIPELINE_PERF").map(|dir| {
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        let name = db_path.file_stem().unwrap().to_string_lossy().to_string();
        let data = dir.join(format!("{name}.perf.data"));
        // PIPELINE_PERF_GRAPH=1 records serve's call graphs instead (DWARF unwinding, at a
        // lower rate: each sample copies a stack), to find who calls a hot frame.
        let graph = std::env::var_os("PIPELINE_PERF_GRAPH").is_some();
        let mut perf = Command::new("perf");
        if graph {
            perf.args(["record", "--call-graph", "dwarf,32768", "-F", "199"])
                .args(["-p", &child.id().to_string()]);
        } else {
            perf.args(["record", "-a", "-F", "999"]);
        }
        let perf = Reaped(
            perf.arg("-o")
                .arg(&data)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("perf (Debian's linux-perf) runs"),
        );
        (perf, data)
    });
    let stderr = child.stderr.take().unwrap();
    let mut rate = None;
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        if line.contains("catching up") {
            eprintln!("  {}", line.split("INFO").last().unwrap_or(&line).trim());
        }
        if line.contains("caught up") {
            let field = |name: &str| {
                line.split(&format!("{name}="))
                    .nth(1)
                    .and_then(|v| v.split_whitespace().next())
                    .map(str::to_string)
            };
            let folded: f64 = field("folded").and_then(|v| v.parse().ok()).unwrap_or(0.0);
            let seconds: f64 = field("seconds")
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN);
            assert_eq!(folded as u64, events, "serve folded the whole stream");
            rate = Some(folded / seconds);
            break;
        }
    }
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if let Some((mut perf, data)) = profile {
        signal(&perf, truebit_testkit::SIGINT);
        perf.wait().unwrap();
        let report = |args: &[&str]| {
            let out = Command::new("perf")
                .args(["report", "--no-children", "--stdio", "-i"])
                .arg(&data)
                .args(args)
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                .take(25)
                .map(|l| format!("  {l}\n"))
                .collect::<String>()
        };
        println!(
            "profile    {} (perf report -i that file for all of it); by process:\n{}serve's top frames:\n{}",
            data.display(),
            report(&["--sort", "comm", "--percent-limit", "2"]),
            report(&["--pid", &child.id().to_string(), "--percentage", "relative", "--percent-limit", "1.5"])
        );
    }
    signal(&child, SIGTERM);
    child.wait().unwrap();
    (rate.expect("serve logged that it caught up"), rss)
}

/// Runs the release `replay --output` over the full stream; its rate as it reports it.
fn replay_rate(server: &Target, events: u64) -> f64 {
    replay_rate_with(&binary(), server, events)
}

fn replay_rate_with(bin: &std::path::Path, server: &Target, events: u64) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("rebuilt.redb");
    let out = Command::new(bin)
        .args(["replay", "--output"])
        .arg(&output)
        .env("NATS_URL", server.url())
        .env("DB_PATH", dir.path().join("unused.redb"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "replay failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("rebuilt {events} messages")),
        "{text}"
    );
    text.split(" events/s")
        .next()
        .and_then(|t| t.rsplit('(').next())
        .and_then(|r| r.parse().ok())
        .expect("a rate in the summary")
}

/// What one checkpoint of the big database cost.
struct CheckpointCost {
    bytes: u64,
    copy: Duration,
    upload: Duration,
}

/// Times snapshots over `db`, and one checkpoint of it (the copy, and its upload to the object
/// store).
async fn snapshot_cost(
    server: &Target,
    db: &Projections,
    dir: &std::path::Path,
) -> (Duration, CheckpointCost) {
    let at = chrono::Utc::now().timestamp() / 60;
    db.snapshots(at).unwrap(); // warm the page cache
    let rounds = 20;
    let started = Instant::now();
    for _ in 0..rounds {
        std::hint::black_box(db.snapshots(at).unwrap());
    }
    let per_snapshot = started.elapsed() / rounds;

    let path = dir.join("checkpoint.redb");
    let started = Instant::now();
    db.checkpoint_to(&path).unwrap();
    let copy = started.elapsed();
    let bytes = std::fs::metadata(&path).unwrap().len();
    let js = jetstream::new(async_nats::connect(server.servers()).await.unwrap());
    let store = truebit_federation::topology::ensure(&js, &server.topology())
        .await
        .unwrap()
        .checkpoints;
    let started = Instant::now();
    let mut file = tokio::fs::File::open(&path).await.unwrap();
    store.put("bench", &mut file).await.unwrap();
    let upload = started.elapsed();
    (
        per_snapshot,
        CheckpointCost {
            bytes,
            copy,
            upload,
        },
    )
}
