//! The soak: `cargo bench --bench soak [-- --minutes 60 --nodes 5000 --tasks-per-node-per-minute
//! 1 --out target/soak]`.
//!
//! Runs, for an hour by default, what a small public network runs: two `serve` instances (one
//! leads, one stands by and folds the same stream), a fleet of N nodes heartbeating once a minute
//! at their own offsets and reporting tasks and invoices at real-time rate, and the node agent on
//! a runner that completes one execution a minute. Every minute it samples, for each instance,
//! the resident set and its peak, the consumer's lag and the oldest unfolded message's age, the
//! mean and 99th percentile of the commits of that minute (from `/metrics`' histogram), the
//! database's size, and the agent's resident set, and appends them to `<out>/soak.csv`. It draws
//! them into `<out>/soak.png` every ten minutes and at the end, and prints the last ten minutes
//! against the first ten: the question a soak answers is whether anything grows that should not.
//!
//! It asserts nothing about speed. It exits non-zero when a process died or when, drained at the
//! end, an instance had not folded every stored message.
//!
//! `SOAK_SERVE_BIN=PATH` starts the `serve` instances from another program that takes the same
//! arguments: another build, or `tests/bench/heaptrack.sh`, which runs this build under
//! heaptrack's allocation tracer (`HEAPTRACK_OUT=DIR`) for a profile of where the memory is.

use plotters::prelude::*;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use truebit_testkit::procfs::usage;
use truebit_testkit::runner::{log_entries, write_eventdb};
use truebit_testkit::{publish_realtime, signal, Load, NatsServer, Reaped, SIGTERM};

const BIN: &str = env!("CARGO_BIN_EXE_truebit-federation");
const INSTANCES: [&str; 2] = ["a", "b"];

struct Args {
    minutes: u64,
    nodes: u64,
    tasks_per_node_per_minute: f64,
    out: PathBuf,
}

fn args() -> Args {
    let mut a = Args {
        minutes: 60,
        nodes: 5_000,
        // 5,000 tasks a minute: within the hour the database passes redb's 32 MiB cache and
        // the task index reaches its largest table; the invoices' reaches it at about minute
        // 77, so `--tasks-per-node-per-minute 5` is what shows memory level off in 45 minutes.
        tasks_per_node_per_minute: 1.0,
        out: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/soak"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("a value after {flag}"));
        let number = |v: String| -> f64 {
            v.replace('_', "")
                .parse()
                .unwrap_or_else(|_| panic!("{v:?} is not a number"))
        };
        match flag.as_str() {
            "--minutes" => a.minutes = number(value()) as u64,
            "--nodes" => a.nodes = number(value()) as u64,
            "--tasks-per-node-per-minute" => a.tasks_per_node_per_minute = number(value()),
            "--out" => a.out = PathBuf::from(value()),
            _ => {} // cargo bench passes --bench
        }
    }
    a
}

/// One instance of `serve` and where to reach its `/metrics`.
struct Instance {
    name: &'static str,
    process: Reaped,
    http: String,
}

/// What one instance showed in one minute.
#[derive(Debug, Clone, Copy, Default)]
struct InstanceSample {
    rss_mib: f64,
    peak_mib: f64,
    lag: f64,
    oldest_unfolded_s: f64,
    commit_mean_ms: f64,
    commit_p99_ms: f64,
    commits: f64,
    db_mib: f64,
    folded: f64,
    leader: f64,
}

/// One row of the CSV.
#[derive(Debug, Clone, Default)]
struct Sample {
    minute: u64,
    instances: Vec<InstanceSample>,
    agent_rss_mib: f64,
    agent_peak_mib: f64,
    stream_messages: f64,
}

fn main() {
    let args = args();
    std::fs::create_dir_all(&args.out).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let ok = rt.block_on(run(&server, &args, dir.path()));
    drop((server, dir));
    std::process::exit(if ok { 0 } else { 1 });
}

async fn run(server: &NatsServer, args: &Args, dir: &Path) -> bool {
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let mut instances: Vec<Instance> = INSTANCES
        .iter()
        .map(|name| start_serve(name, &server.url(), dir, &args.out))
        .collect();
    for instance in &instances {
        wait_for_metrics(&instance.http).await;
    }
    let (mut agent, runner) = start_agent(&server.url(), dir, &args.out);
    println!(
        "soak       {} nodes heartbeating every minute, {} tasks per node per minute, two serve instances and the node agent, for {} min; CSV and plot in {}",
        args.nodes,
        args.tasks_per_node_per_minute,
        args.minutes,
        args.out.display()
    );

    let load = Load {
        nodes: args.nodes,
        tasks_per_node_per_minute: args.tasks_per_node_per_minute,
        duration: Duration::from_secs(args.minutes * 60),
    };
    let fleet = {
        let client = client.clone();
        tokio::spawn(async move { publish_realtime(&client, &load).await })
    };

    let csv_path = args.out.join("soak.csv");
    let mut csv = std::fs::File::create(&csv_path).unwrap();
    writeln!(csv, "{}", header()).unwrap();
    let mut samples: Vec<Sample> = Vec::new();
    let mut previous: Vec<Option<Histogram>> = vec![None; instances.len()];
    let started = Instant::now();
    let mut alive = true;
    for minute in 1..=args.minutes {
        tokio::time::sleep_until((started + Duration::from_secs(minute * 60)).into()).await;
        runner.complete_one(minute);
        let mut sample = Sample {
            minute,
            ..Default::default()
        };
        for (instance, previous) in instances.iter_mut().zip(previous.iter_mut()) {
            if let Ok(Some(status)) = instance.process.try_wait() {
                println!("instance {} exited: {status}", instance.name);
                alive = false;
            }
            let (s, histogram) = sample_instance(instance, previous.as_ref()).await;
            if histogram.is_some() {
                *previous = histogram;
            }
            sample.instances.push(s);
        }
        if let Ok(Some(status)) = agent.try_wait() {
            println!("the node agent exited: {status}");
            alive = false;
        }
        let a = usage(agent.id());
        sample.agent_rss_mib = a.rss_kib as f64 / 1024.0;
        sample.agent_peak_mib = a.peak_kib as f64 / 1024.0;
        sample.stream_messages = js
            .get_stream("TRUEBIT_EVENTS")
            .await
            .map(|mut s| async move { s.info().await.map(|i| i.state.messages as f64) })
            .unwrap()
            .await
            .unwrap_or(0.0);
        writeln!(csv, "{}", row(&sample)).unwrap();
        println!("minute {minute:>3}  {}", row(&sample));
        samples.push(sample);
        if minute % 10 == 0 {
            plot(&samples, &args.out.join("soak.png"));
        }
        if !alive {
            break;
        }
    }
    let published = fleet.await.unwrap();
    println!(
        "published  {} events in {:.0} s: {} heartbeats, {} tasks, {} invoices",
        published.events,
        published.seconds,
        published.heartbeats,
        published.tasks,
        published.invoices
    );
    plot(&samples, &args.out.join("soak.png"));
    summary(&samples);

    // Drained, both instances hold every stored message.
    let stored = js
        .get_stream("TRUEBIT_EVENTS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .last_sequence as f64;
    let mut ok = alive;
    for instance in &instances {
        let deadline = Instant::now() + Duration::from_secs(120);
        let applied = loop {
            let applied = metrics(&instance.http)
                .await
                .map(|m| gauge(&m, "truebit_last_applied_sequence"))
                .unwrap_or(0.0);
            if applied >= stored || Instant::now() > deadline {
                break applied;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        println!(
            "drained    instance {}: applied {applied} of {stored} stored",
            instance.name
        );
        ok &= applied >= stored;
    }
    signal(&agent, SIGTERM);
    let _ = agent.wait();
    for instance in &mut instances {
        signal(&instance.process, SIGTERM);
        ok &= instance
            .process
            .wait()
            .map(|s| s.success())
            .unwrap_or(false);
    }
    println!("result     {}", if ok { "ok" } else { "FAILED" });
    ok
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_serve(name: &'static str, url: &str, dir: &Path, out: &Path) -> Instance {
    let http = format!("127.0.0.1:{}", free_port());
    let db = dir.join(format!("{name}.redb"));
    let bin = std::env::var_os("SOAK_SERVE_BIN").unwrap_or_else(|| BIN.into());
    let process = Reaped(
        Command::new(bin)
            .arg("serve")
            .env("NATS_URL", url)
            .env("DB_PATH", &db)
            .env("INSTANCE", name)
            .env("HTTP_ADDR", &http)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(out.join(format!("serve-{name}.log"))).unwrap())
            .spawn()
            .unwrap(),
    );
    Instance {
        name,
        process,
        http,
    }
}

/// A runner whose EventDB gains an execution a minute, rewritten whole as the runner does, and
/// whose debug log tells of it.
struct Runner {
    eventdb: PathBuf,
    log: PathBuf,
    first: u64,
    base_ms: i64,
}

impl Runner {
    fn complete_one(&self, minute: u64) {
        let n = self.first + minute;
        let tmp = self.eventdb.with_extension("tmp");
        write_eventdb(&tmp, n, self.base_ms).unwrap();
        std::fs::rename(&tmp, &self.eventdb).unwrap();
        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .unwrap();
        log.write_all(log_entries(n - 1, chrono::Utc::now().timestamp()).as_bytes())
            .unwrap();
    }
}

fn start_agent(url: &str, dir: &Path, out: &Path) -> (Reaped, Runner) {
    let runner_dir = dir.join("runner");
    let logs = runner_dir.join("debug");
    std::fs::create_dir_all(&logs).unwrap();
    let now = chrono::Utc::now().timestamp();
    let runner = Runner {
        eventdb: runner_dir.join("node-eventDB.json"),
        log: logs.join("worker-runner-node.log"),
        first: 100,
        base_ms: (now - 3600) * 1000,
    };
    write_eventdb(&runner.eventdb, runner.first, runner.base_ms).unwrap();
    let mut log = std::fs::File::create(&runner.log).unwrap();
    for i in 0..runner.first {
        log.write_all(log_entries(i, now - 3600 + i as i64).as_bytes())
            .unwrap();
    }
    let agent = Reaped(
        Command::new(BIN)
            .arg("node")
            .env("NATS_URL", url)
            .env("FEDERATION_SALT", "a-soak-salt")
            .env("STATE_DIR", dir.join("agent"))
            .env("NODE_ID", "node-soak")
            .env("NODE_HTTP_ADDR", "off")
            .env("EVENTDB", &runner.eventdb)
            .env("RUNNER_LOGS", &logs)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(out.join("agent.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    (agent, runner)
}

/// `GET /metrics`, parsed. A bench has no HTTP client of its own: one request over a socket.
async fn metrics(addr: &str) -> Option<prometheus_parse::Scrape> {
    let addr = addr.to_string();
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(&addr).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .ok()?;
        write!(
            stream,
            "GET /metrics HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).ok()?;
        let body = text.split_once("\r\n\r\n")?.1.to_string();
        prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).ok()
    })
    .await
    .ok()
    .flatten()
}

async fn wait_for_metrics(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while metrics(addr).await.is_none() {
        assert!(Instant::now() < deadline, "serve at {addr} never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn gauge(scrape: &prometheus_parse::Scrape, name: &str) -> f64 {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name)
        .map(|s| match &s.value {
            prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            _ => 0.0,
        })
        .unwrap_or(0.0)
}

/// The commit-duration histogram at one scrape: `(upper bound, cumulative count)`, sum, count.
#[derive(Debug, Clone, Default)]
struct Histogram {
    buckets: Vec<(f64, f64)>,
    sum: f64,
    count: f64,
}

fn histogram(scrape: &prometheus_parse::Scrape, name: &str) -> Histogram {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name)
        .and_then(|s| match &s.value {
            prometheus_parse::Value::Histogram(buckets) => Some(buckets),
            _ => None,
        })
        .map(|buckets| Histogram {
            buckets: buckets.iter().map(|b| (b.less_than, b.count)).collect(),
            sum: gauge(scrape, &format!("{name}_sum")),
            count: gauge(scrape, &format!("{name}_count")),
        })
        .unwrap_or_default()
}

/// The mean and the 99th percentile (the upper bound of the bucket it falls in) of what was
/// observed between two scrapes.
fn minute_of(now: &Histogram, before: Option<&Histogram>) -> (f64, f64, f64) {
    let zero = Histogram::default();
    let before = before.unwrap_or(&zero);
    let count = now.count - before.count;
    if count <= 0.0 {
        return (0.0, 0.0, 0.0);
    }
    let mean = (now.sum - before.sum) / count;
    let below = |bound: f64| {
        before
            .buckets
            .iter()
            .find(|(b, _)| *b == bound)
            .map(|(_, c)| *c)
            .unwrap_or(0.0)
    };
    let p99 = now
        .buckets
        .iter()
        .find(|(bound, c)| c - below(*bound) >= 0.99 * count)
        .map(|(bound, _)| *bound)
        .unwrap_or(f64::INFINITY);
    (mean, p99, count)
}

async fn sample_instance(
    instance: &Instance,
    previous: Option<&Histogram>,
) -> (InstanceSample, Option<Histogram>) {
    let u = usage(instance.process.id());
    // A scrape that failed leaves NaN in its row's cells rather than a made-up zero.
    let m = metrics(&instance.http).await;
    let g = |name: &str| m.as_ref().map(|m| gauge(m, name)).unwrap_or(f64::NAN);
    let commits = m
        .as_ref()
        .map(|m| histogram(m, "truebit_commit_duration_seconds"));
    let (mean, p99, count) =
        commits
            .as_ref()
            .map(|c| minute_of(c, previous))
            .unwrap_or((f64::NAN, f64::NAN, f64::NAN));
    let s = InstanceSample {
        rss_mib: u.rss_kib as f64 / 1024.0,
        peak_mib: u.peak_kib as f64 / 1024.0,
        lag: g("truebit_consumer_pending_messages"),
        oldest_unfolded_s: g("truebit_oldest_unfolded_age_seconds"),
        commit_mean_ms: mean * 1e3,
        commit_p99_ms: p99 * 1e3,
        commits: count,
        db_mib: g("truebit_database_bytes") / (1 << 20) as f64,
        folded: g("truebit_events_folded_total"),
        leader: g("truebit_leader"),
    };
    (s, commits)
}

const INSTANCE_COLUMNS: [&str; 10] = [
    "rss_mib",
    "peak_rss_mib",
    "lag",
    "oldest_unfolded_s",
    "commit_mean_ms",
    "commit_p99_ms",
    "commits",
    "db_mib",
    "folded",
    "leader",
];

fn header() -> String {
    let mut columns = vec!["minute".to_string()];
    for name in INSTANCES {
        columns.extend(INSTANCE_COLUMNS.iter().map(|c| format!("{name}_{c}")));
    }
    columns.extend(["agent_rss_mib", "agent_peak_rss_mib", "stream_messages"].map(String::from));
    columns.join(",")
}

fn values(s: &InstanceSample) -> [f64; 10] {
    [
        s.rss_mib,
        s.peak_mib,
        s.lag,
        s.oldest_unfolded_s,
        s.commit_mean_ms,
        s.commit_p99_ms,
        s.commits,
        s.db_mib,
        s.folded,
        s.leader,
    ]
}

fn row(s: &Sample) -> String {
    let mut cells = vec![s.minute.to_string()];
    for i in &s.instances {
        cells.extend(values(i).iter().map(|v| format!("{v:.2}")));
    }
    cells.extend(
        [s.agent_rss_mib, s.agent_peak_mib, s.stream_messages]
            .iter()
            .map(|v| format!("{v:.2}")),
    );
    cells.join(",")
}

/// The last ten minutes against the first ten, column by column (means).
fn summary(samples: &[Sample]) {
    if samples.len() < 20 {
        println!("summary    fewer than 20 minutes: no comparison of the first and last ten");
        return;
    }
    let first = &samples[..10];
    let last = &samples[samples.len() - 10..];
    let mean = |rows: &[Sample], f: &dyn Fn(&Sample) -> f64| {
        rows.iter().map(f).sum::<f64>() / rows.len() as f64
    };
    println!("summary    mean of minutes 1–10 → mean of the last ten");
    for (i, name) in INSTANCES.iter().enumerate() {
        for (c, column) in INSTANCE_COLUMNS.iter().enumerate() {
            let f = |s: &Sample| values(&s.instances[i])[c];
            println!(
                "  {name}_{column:<20} {:>12.2} → {:>12.2}",
                mean(first, &f),
                mean(last, &f)
            );
        }
    }
    let per_message = |rows: &[Sample]| {
        let s = rows.last().unwrap();
        s.instances[0].db_mib * (1 << 20) as f64 / s.stream_messages.max(1.0)
    };
    println!(
        "  database bytes per stored message, at minute {} → at minute {}: {:.1} → {:.1}",
        first.last().unwrap().minute,
        last.last().unwrap().minute,
        per_message(first),
        per_message(last)
    );
    for (column, f) in [
        (
            "agent_rss_mib",
            &(|s: &Sample| s.agent_rss_mib) as &dyn Fn(&Sample) -> f64,
        ),
        ("agent_peak_rss_mib", &|s: &Sample| s.agent_peak_mib),
    ] {
        println!(
            "  {column:<22} {:>12.2} → {:>12.2}",
            mean(first, f),
            mean(last, f)
        );
    }
}

/// The font the plot is written in: DejaVu Sans from Debian's `fonts-dejavu-core`.
fn load_font() -> bool {
    const FONTS: [&str; 2] = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    ];
    for path in FONTS {
        if let Ok(bytes) = std::fs::read(path) {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return true;
            }
        }
    }
    eprintln!(
        "no font for the plot's text at {}: install Debian's fonts-dejavu-core; the CSV is whole without it",
        FONTS[0]
    );
    false
}

/// Six panels over the minutes: memory, lag, oldest unfolded age, commit time, database size,
/// events folded per minute.
fn plot(samples: &[Sample], path: &Path) {
    static FONT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if !*FONT.get_or_init(load_font) || samples.is_empty() {
        return;
    }
    let (w, h) = (1500u32, 1000u32);
    let mut buffer = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (w, h)).into_drawing_area();
        root.fill(&WHITE).unwrap();
        let panels = root.split_evenly((3, 2));
        let colors = [BLUE, RED];
        type Series = Vec<(String, RGBAColor, Vec<(f64, f64)>)>;
        let per_instance = |f: &dyn Fn(&InstanceSample) -> f64| -> Series {
            INSTANCES
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    (
                        format!("serve {name}"),
                        colors[i].to_rgba(),
                        samples
                            .iter()
                            .map(|s| (s.minute as f64, f(&s.instances[i])))
                            .collect(),
                    )
                })
                .collect()
        };
        // The resident set now and its peak so far (paler): a peak that keeps rising is growth.
        let mut memory = per_instance(&|s| s.rss_mib);
        memory.push((
            "node agent".into(),
            GREEN.to_rgba(),
            samples
                .iter()
                .map(|s| (s.minute as f64, s.agent_rss_mib))
                .collect(),
        ));
        for (name, color, points) in per_instance(&|s| s.peak_mib) {
            memory.push((format!("{name}, peak"), color.mix(0.35).to_rgba(), points));
        }
        memory.push((
            "node agent, peak".into(),
            GREEN.mix(0.35).to_rgba(),
            samples
                .iter()
                .map(|s| (s.minute as f64, s.agent_peak_mib))
                .collect(),
        ));
        let mut folded = per_instance(&|s| s.folded);
        for (_, _, points) in &mut folded {
            let mut last = 0.0;
            for p in points.iter_mut() {
                let total = p.1;
                p.1 = total - last;
                last = total;
            }
        }
        let charts: [(&str, Series); 6] = [
            ("resident set (MiB)", memory),
            ("consumer lag (messages)", per_instance(&|s| s.lag)),
            (
                "oldest unfolded message (s)",
                per_instance(&|s| s.oldest_unfolded_s),
            ),
            (
                "commit time, mean of the minute (ms)",
                per_instance(&|s| s.commit_mean_ms),
            ),
            ("database (MiB)", per_instance(&|s| s.db_mib)),
            ("events folded per minute", folded),
        ];
        let minutes = samples.last().map(|s| s.minute).unwrap_or(1) as f64;
        for (area, (title, series)) in panels.iter().zip(charts) {
            let top = series
                .iter()
                .flat_map(|(_, _, p)| p.iter().map(|(_, y)| *y))
                .filter(|y| y.is_finite())
                .fold(0.0f64, f64::max)
                .max(1e-3)
                * 1.15;
            let mut chart = ChartBuilder::on(area)
                .caption(title, ("sans-serif", 20))
                .margin(12)
                .x_label_area_size(32)
                .y_label_area_size(60)
                .build_cartesian_2d(0.0..minutes.max(1.0), 0.0..top)
                .unwrap();
            chart
                .configure_mesh()
                .x_desc("minute")
                .label_style(("sans-serif", 13))
                .draw()
                .unwrap();
            for (name, color, points) in series {
                chart
                    .draw_series(LineSeries::new(points, color.stroke_width(2)))
                    .unwrap()
                    .label(name)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                    });
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .label_font(("sans-serif", 13))
                .position(SeriesLabelPosition::LowerRight)
                .draw()
                .unwrap();
        }
        root.present().unwrap();
    }
    let file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut encoder = png::Encoder::new(file, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder
        .write_header()
        .unwrap()
        .write_image_data(&buffer)
        .unwrap();
}
