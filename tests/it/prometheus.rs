//! The Grafana dashboard (`deploy/grafana/truebit-federation.json`) and the alert rules
//! (`deploy/prometheus/alerts.yml`) against a real Prometheus (Debian's `prometheus`) scraping a
//! real `serve` every second while it folds a small stream: every panel's query parses and returns
//! data, and every rule's expression evaluates. A panel that names a metric `serve` does not
//! export returns nothing, and fails here.
//!
//! Prometheus loads the rules file itself (`rule_files`), so a file it refuses fails the start;
//! the expressions evaluated are the ones it read from it, as many as the file has rules.

use crate::common::{self, Served, PATIENCE};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use truebit_testkit::{publish_all, Fleet, Reaped};

const DASHBOARD: &str = "deploy/grafana/truebit-federation.json";
const RULES: &str = "deploy/prometheus/alerts.yml";
/// What the dashboard's variables stand for here: every instance, and a rate window that covers
/// the whole fold (Grafana's `$__rate_interval` is at least four scrape intervals).
const VARIABLES: [(&str, &str); 3] = [
    ("${instance}", ".*"),
    ("$instance", ".*"),
    ("$__rate_interval", "2m"),
];

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A Prometheus server of the test's own: a free port, a temporary store, killed on drop.
struct Prometheus {
    base: String,
    log: PathBuf,
    process: Reaped,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn binary() -> PathBuf {
        let path = std::env::var_os("PROMETHEUS_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/bin/prometheus"));
        assert!(
            path.is_file(),
            "no Prometheus at {}: install Debian's `prometheus` package \
             (`apt-get install prometheus`, as .ci/run does) or set PROMETHEUS_BIN",
            path.display()
        );
        path
    }

    /// Starts Prometheus scraping `target` (`host:port`) every second with the rules file
    /// loaded, and returns once it is ready.
    async fn start(binary: &Path, target: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {rules}\n\
                 scrape_configs:\n  - job_name: truebit-federation\n    static_configs:\n      \
                 - targets: ['{target}']\n",
                rules = repo(RULES).display()
            ),
        )
        .unwrap();
        let log = dir.path().join("prometheus.log");
        let process = Reaped(
            Command::new(binary)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display())),
        );
        let mut prometheus = Prometheus {
            base: format!("127.0.0.1:{port}"),
            log,
            process,
            _dir: dir,
        };
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(status) = prometheus.process.try_wait().unwrap() {
                panic!(
                    "Prometheus exited ({status}) before it was ready:\n{}",
                    prometheus.log()
                );
            }
            if let Some((200, _)) = prometheus.get("/-/ready").await {
                return prometheus;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "Prometheus was not ready in time:\n{}",
                prometheus.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET path` as HTTP/1.0, so that the answer is never chunked and ends with the connection;
    /// `None` while nothing listens.
    async fn get(&mut self, path: &str) -> Option<(u16, String)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut socket = tokio::net::TcpStream::connect(&self.base).await.ok()?;
        socket
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", self.base).as_bytes())
            .await
            .ok()?;
        let mut raw = Vec::new();
        tokio::time::timeout(PATIENCE, socket.read_to_end(&mut raw))
            .await
            .expect("Prometheus answers in time")
            .ok()?;
        let text = String::from_utf8(raw).expect("UTF-8 answer");
        let (head, body) = text.split_once("\r\n\r\n")?;
        let status = head.split(' ').nth(1)?.parse().ok()?;
        Some((status, body.to_string()))
    }

    /// The API's answer to `path` as JSON, whatever its status (an error is JSON too).
    async fn api(&mut self, path: &str) -> Value {
        let (_, body) = self
            .get(path)
            .await
            .unwrap_or_else(|| panic!("Prometheus stopped answering:\n{}", self.log()));
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {body}"))
    }

    /// `expr` evaluated now through `/api/v1/query`.
    async fn query(&mut self, expr: &str) -> Value {
        self.api(&format!("/api/v1/query?query={}", encode(expr)))
            .await
    }

    /// The value of a query that must return exactly one sample (`None` while it returns none).
    async fn scalar(&mut self, expr: &str) -> Option<f64> {
        let answer = self.query(expr).await;
        assert_eq!(answer["status"], "success", "{expr}: {answer}");
        let result = answer["data"]["result"].as_array().unwrap();
        result.first().map(|r| sample_value(r).unwrap())
    }
}

/// Percent-encodes a query parameter: everything but RFC 3986's unreserved characters.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value of one element of an instant vector, `[time, "value"]`.
fn sample_value(element: &Value) -> Option<f64> {
    element["value"][1].as_str()?.parse().ok()
}

/// Every query target of the dashboard, with its panel's title, rows' panels included.
fn panel_targets(panels: &[Value], out: &mut Vec<(String, Value)>) {
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or("?").to_string();
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push((title.clone(), target.clone()));
        }
        if let Some(nested) = panel["panels"].as_array() {
            panel_targets(nested, out);
        }
    }
}

/// The `truebit_…` metric names an expression reads.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names: Vec<String> = expr
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|word| word.starts_with("truebit_"))
        .map(str::to_string)
        .collect();
    names.sort();
    names.dedup();
    names
}

fn substitute(expr: &str) -> String {
    VARIABLES
        .iter()
        .fold(expr.to_string(), |e, (name, value)| e.replace(name, value))
}

#[tokio::test]
async fn every_dashboard_panel_returns_data_and_every_alert_rule_evaluates() {
    let started = std::time::Instant::now();
    let binary = Prometheus::binary();
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(repo(DASHBOARD)).unwrap())
        .expect("the dashboard is JSON");

    let mut served = Served::start().await;
    let target = served.http_url().await.replace("http://", "");
    let mut prometheus = Prometheus::start(&binary, &target).await;

    // Scraping before the stream arrives, so that the counters' rates see the fold.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while prometheus
        .scalar(r#"count_over_time(up{job="truebit-federation"}[1m]) >= 2 and up == 1"#)
        .await
        .is_none()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "Prometheus never scraped serve at {target}:\n{}",
            prometheus.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A small stream, and a refusal of two reasons for the dead-letter panel.
    let (messages, _) = Fleet::new(8, 20).generate(150);
    publish_all(
        &served.js,
        messages
            .iter()
            .map(|m| (m.subject, m.payload.as_slice(), Some(m.msg_id.as_str()))),
    )
    .await;
    let last = common::publish(
        &served.js,
        &[
            ("truebit.heartbeat".to_string(), b"{not json".to_vec()),
            common::msg("truebit.heartbeat", serde_json::json!({"version": "1.0"})),
        ],
    )
    .await;
    served.wait_folded(last).await;

    // Prometheus has scraped the folded stream, and the dead letters stored.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let applied = prometheus
            .scalar("max(truebit_last_applied_sequence)")
            .await;
        let letters = prometheus.scalar("sum(truebit_dead_letters_total)").await;
        if applied >= Some(last as f64) && letters >= Some(2.0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Prometheus saw applied {applied:?} of {last}, dead letters {letters:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let mut failures = Vec::new();

    // The variables: a Prometheus data source, and instances read from a series serve exports.
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    let variable = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no variable {name} in {DASHBOARD}"))
    };
    let datasource = variable("datasource");
    assert_eq!(
        (datasource["type"].as_str(), datasource["query"].as_str()),
        (Some("datasource"), Some("prometheus"))
    );
    let instances = variable("instance")["query"]["query"].as_str().unwrap();
    let (metric, label) = instances
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
        .and_then(|q| q.split_once(", "))
        .unwrap_or_else(|| panic!("{instances} is not label_values(metric, label)"));
    let answer = prometheus
        .query(&format!("count by ({label}) ({metric})"))
        .await;
    let found: Vec<&str> = answer["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["metric"][label].as_str())
        .collect();
    if found != [target.as_str()] {
        failures.push(format!(
            "variable instance ({instances}) finds {found:?}, not [{target}]"
        ));
    }

    // Every panel target: its data source is the variable, and it returns a finite sample.
    let mut targets = Vec::new();
    panel_targets(dashboard["panels"].as_array().unwrap(), &mut targets);
    assert!(targets.len() >= 10, "{} targets only", targets.len());
    for (title, t) in &targets {
        if t["datasource"]["uid"] != "${datasource}" {
            failures.push(format!("{title}: data source {}", t["datasource"]));
        }
        let raw = t["expr"].as_str().unwrap_or_default();
        let expr = substitute(raw);
        if expr.contains('$') {
            failures.push(format!(
                "{title}: a variable the test does not know in {raw}"
            ));
            continue;
        }
        let answer = prometheus.query(&expr).await;
        if answer["status"] != "success" {
            failures.push(format!("{title}: {expr}: {}", answer["error"]));
            continue;
        }
        let result = answer["data"]["result"].as_array().unwrap();
        if !result
            .iter()
            .any(|r| sample_value(r).is_some_and(f64::is_finite))
        {
            failures.push(format!("{title}: {expr}: no data ({result:?})"));
        }
    }

    // Every rule of the file, as Prometheus loaded it: evaluated, empty or not, without error.
    let file = std::fs::read_to_string(repo(RULES)).unwrap();
    let in_file = file
        .lines()
        .filter(|l| {
            let l = l.trim_start();
            l.starts_with("- alert:") || l.starts_with("- record:")
        })
        .count();
    let rules: Vec<Value> = prometheus.api("/api/v1/rules").await["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .collect();
    assert_eq!(
        rules.len(),
        in_file,
        "Prometheus loaded {} of the {in_file} rules of {RULES}",
        rules.len()
    );
    for rule in &rules {
        let (name, expr) = (
            rule["name"].as_str().unwrap(),
            rule["query"].as_str().unwrap(),
        );
        let answer = prometheus.query(expr).await;
        if answer["status"] != "success" || !answer["data"]["result"].is_array() {
            failures.push(format!("rule {name}: {expr}: {}", answer["error"]));
        }
        // An empty answer is fine, a metric serve does not export is not: it would never fire.
        for metric in metric_names(expr) {
            let selector = format!("count({{__name__=\"{metric}\"}})");
            if prometheus.scalar(&selector).await.is_none() {
                failures.push(format!("rule {name}: serve exports no {metric}"));
            }
        }
    }
    // Prometheus's own evaluations of them, once each has run.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let rules = loop {
        let rules: Vec<Value> = prometheus.api("/api/v1/rules").await["data"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap().clone())
            .collect();
        if rules.iter().all(|r| r["health"] != "unknown") {
            break rules;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Prometheus never evaluated every rule"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for rule in rules.iter().filter(|r| r["health"] != "ok") {
        failures.push(format!(
            "rule {}: health {}: {}",
            rule["name"], rule["health"], rule["lastError"]
        ));
    }

    assert!(
        failures.is_empty(),
        "{} of {} panel targets and {} rules failed:\n{}",
        failures.len(),
        targets.len(),
        rules.len(),
        failures.join("\n")
    );
    drop(prometheus);
    served.stop().await.unwrap();
    eprintln!(
        "{} panel targets and {} rules checked in {:.1?}",
        targets.len(),
        rules.len(),
        started.elapsed()
    );
}
