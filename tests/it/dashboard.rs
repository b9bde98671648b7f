//! The dashboard in a real browser: headless Chromium (Debian's `chromium`, which `.ci/run`
//! installs) opens the page of a serve that folded a simulated fleet, at 1280 and at 390 pixels
//! wide. From the page's DOM: the headline figures are the published snapshot's, every chart
//! drew data; from the DevTools protocol: the page logged no error and fetched nothing from
//! another host. Screenshots go to `target/artefacts/`.

use crate::common::browser::Browser;
use crate::common::{Served, PATIENCE};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use truebit_testkit::{publish_all, Fleet};

fn artefacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target/tmp has a parent")
        .join("artefacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// What the page shows and drew, read from its DOM and its own record of each chart.
const READ_PAGE: &str = r#"JSON.stringify({
  fields: Object.fromEntries([...document.querySelectorAll('[data-field]')].map(e => [e.dataset.field, e.dataset.value])),
  text: Object.fromEntries([...document.querySelectorAll('[data-field]')].map(e => [e.dataset.field, e.textContent])),
  lastSeq: document.getElementById('last-seq').textContent,
  stale: !document.getElementById('stale').hidden,
  error: document.getElementById('error').textContent,
  charts: window.dashboard.charts,
  canvases: [...document.querySelectorAll('.chart')].map(c => { const k = c.querySelector('canvas'); return k ? k.width : 0; }),
  bars: window.dashboard.bars,
  mapDots: window.dashboard.mapDots,
  scrollWidth: document.documentElement.scrollWidth,
  errors: window.dashboard.errors,
})"#;

fn check_page(page: &Value, snapshot: &Value, width: u64) {
    let data = &snapshot["data"];
    for field in [
        "activeNodes",
        "totalNodes",
        "totalTasks",
        "tasksLast24h",
        "completedTasks",
        "failedTasks",
        "successRate",
        "cacheHitRate",
        "totalInvoices",
        "invoicesLast24h",
    ] {
        let shown: f64 = page["fields"][field].as_str().unwrap().parse().unwrap();
        assert_eq!(
            shown,
            data[field].as_f64().unwrap(),
            "{field} at {width} px: {page}"
        );
        let digits: String = page["text"][field]
            .as_str()
            .unwrap()
            .chars()
            .filter(|c| c.is_ascii_digit())
            .collect();
        assert!(!digits.is_empty(), "{field} shows no number at {width} px");
    }
    for (id, chart) in page["charts"].as_object().unwrap() {
        assert!(
            chart["points"].as_u64().unwrap() > 0 && chart["values"].as_u64().unwrap() > 0,
            "{id} drew nothing at {width} px: {chart}"
        );
    }
    assert_eq!(
        page["charts"].as_object().unwrap().len(),
        4,
        "four time series: {page}"
    );
    assert!(
        page["canvases"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w.as_u64().unwrap() > 0),
        "{page}"
    );
    for (dist, bars) in page["bars"].as_object().unwrap() {
        assert!(
            bars["total"].as_u64().unwrap() > 0,
            "{dist} drew no bar at {width} px: {bars}"
        );
    }
    assert_eq!(page["bars"].as_object().unwrap().len(), 7, "{page}");
    assert!(
        page["mapDots"].as_u64().unwrap() > 0,
        "no node on the map at {width} px"
    );
    assert_eq!(
        page["stale"],
        json!(false),
        "a fresh snapshot is not stale: {page}"
    );
    assert_eq!(page["error"], json!(""), "{page}");
    assert!(
        page["scrollWidth"].as_u64().unwrap() <= width,
        "wider than {width} px: {page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_snapshot_in_a_real_browser_at_desktop_and_phone_widths() {
    let served = Served::start_with(|c| c.publish_interval = Duration::from_millis(1000)).await;
    let fleet = Fleet {
        span: chrono::Duration::minutes(40),
        ..Fleet::new(30, 5)
    };
    let (messages, _) = fleet.generate(600);
    let last = publish_all(
        &served.js,
        messages
            .iter()
            .map(|m| (m.subject, m.payload.as_slice(), Some(m.msg_id.as_str()))),
    )
    .await;
    served.wait_folded(last).await;
    let base = served.http_url().await;
    let kv = served.js.get_key_value("truebit-stats").await.unwrap();

    let base_for_browser = base.clone();
    let (shots, requests, problems) = tokio::task::spawn_blocking(move || {
        let mut browser = Browser::launch();
        let session = browser.open_page();
        let mut shots = Vec::new();
        for (width, height, mobile) in [(1280u64, 900u64, false), (390, 844, true)] {
            browser.call(Some(&session), "Emulation.setDeviceMetricsOverride",
                json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}));
            let marker = browser.events.len();
            browser.call(Some(&session), "Page.navigate", json!({"url": format!("{base_for_browser}/")}));
            // A fresh load: wait for the new document's first render.
            browser.wait_for(&session, "document.readyState === 'complete' && document.body.dataset.ready === '1' && window.dashboard.mapDots > 0");
            let _ = marker;
            // Read what it shows until it shows the snapshot KV holds (a publish may land between).
            let deadline = Instant::now() + PATIENCE;
            let page = loop {
                let page: Value = serde_json::from_str(browser.eval(&session, READ_PAGE).as_str().unwrap()).unwrap();
                let latest = tokio::runtime::Handle::current().block_on(kv.get("latest")).unwrap().unwrap();
                let snapshot: Value = serde_json::from_slice(&latest).unwrap();
                let matches = ["totalTasks", "activeNodes", "tasksLast24h", "totalInvoices"].iter().all(|f| {
                    page["fields"][f].as_str().and_then(|v| v.parse::<f64>().ok()) == snapshot["data"][f].as_f64()
                });
                if matches {
                    check_page(&page, &snapshot, width);
                    break page;
                }
                assert!(Instant::now() < deadline, "the page never showed the published snapshot: {page}\n{snapshot}");
                std::thread::sleep(Duration::from_millis(200));
            };
            assert!(page["lastSeq"].as_str().unwrap() != "–");
            let png = browser.screenshot(&session);
            assert!(png.starts_with(b"\x89PNG"), "a PNG");
            let path = artefacts().join(format!("dashboard-{width}.png"));
            std::fs::write(&path, &png).unwrap();
            shots.push(path);
        }
        let mut requests = Vec::new();
        let mut problems = Vec::new();
        for e in &browser.events {
            let p = &e["params"];
            match e["method"].as_str().unwrap_or_default() {
                "Network.requestWillBeSent" => requests.push(p["request"]["url"].as_str().unwrap_or_default().to_string()),
                "Runtime.exceptionThrown" => problems.push(format!("exception: {}", p["exceptionDetails"])),
                "Runtime.consoleAPICalled" if matches!(p["type"].as_str(), Some("error" | "assert" | "warning")) => {
                    problems.push(format!("console.{}: {}", p["type"], p["args"]))
                }
                "Log.entryAdded" if matches!(p["entry"]["level"].as_str(), Some("error" | "warning")) => {
                    problems.push(format!("log: {}", p["entry"]))
                }
                "Network.loadingFailed" => problems.push(format!("failed request: {p}")),
                _ => {}
            }
        }
        (shots, requests, problems)
    })
    .await
    .unwrap();

    assert_eq!(problems, Vec::<String>::new(), "the page logged errors");
    assert!(
        requests
            .iter()
            .any(|u| u.ends_with("/api/history?range=24h")),
        "{requests:?}"
    );
    let foreign: Vec<&String> = requests
        .iter()
        .filter(|u| {
            !u.starts_with(&format!("{base}/"))
                && !u.starts_with("data:")
                && u.as_str() != "about:blank"
        })
        .collect();
    assert!(
        foreign.is_empty(),
        "the page fetched from another host: {foreign:?}"
    );
    for shot in shots {
        assert!(
            std::fs::metadata(&shot).unwrap().len() > 10_000,
            "{} is too small to show anything",
            shot.display()
        );
        eprintln!("screenshot: {}", shot.display());
    }
}
