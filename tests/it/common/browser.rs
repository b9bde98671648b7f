//! Headless Chromium driven over its DevTools protocol on a pipe (`--remote-debugging-pipe`:
//! commands on fd 3, answers and events on fd 4, each a JSON object ending in a NUL byte), so
//! that a test sees what a person's browser would: console messages, exceptions, every request,
//! the DOM, and screenshots. Debian's `chromium`; `.ci/run` installs it.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use truebit_testkit::Reaped;

pub struct Browser {
    _child: Reaped,
    commands: std::fs::File,
    answers: mpsc::Receiver<Value>,
    next_id: u64,
    /// Every event received so far, in order.
    pub events: Vec<Value>,
    _profile: tempfile::TempDir,
}

/// `CHROMIUM_BIN`, else Debian's `/usr/bin/chromium`.
fn binary() -> PathBuf {
    std::env::var_os("CHROMIUM_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/bin/chromium".into())
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened and are owned by nothing else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

impl Browser {
    pub fn launch() -> Browser {
        let bin = binary();
        assert!(
            bin.is_file(),
            "{} is missing: the browser tests need Debian's chromium, which `.ci/run` installs (apt-get install chromium); or set CHROMIUM_BIN",
            bin.display()
        );
        let profile = tempfile::Builder::new()
            .prefix("chromium")
            .tempdir()
            .unwrap();
        let (cmd_read, cmd_write) = pipe();
        let (ans_read, ans_write) = pipe();
        let (child_in, child_out) = (cmd_read.as_raw_fd(), ans_write.as_raw_fd());
        let mut command = Command::new(&bin);
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--hide-scrollbars",
                "--mute-audio",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: between fork and exec only async-signal-safe calls (fcntl, dup2) are made.
        unsafe {
            command.pre_exec(move || {
                // Out of the way first, so that neither lands on the other's target.
                let a = libc::fcntl(child_in, libc::F_DUPFD, 10);
                let b = libc::fcntl(child_out, libc::F_DUPFD, 10);
                if a < 0 || b < 0 || libc::dup2(a, 3) < 0 || libc::dup2(b, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = Reaped(
            command
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display())),
        );
        drop((cmd_read, ans_write));
        let (tx, answers) = mpsc::channel();
        let reader = std::fs::File::from(ans_read);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(reader);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(0, &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if buf.last() == Some(&0) {
                            buf.pop();
                        }
                        if let Ok(v) = serde_json::from_slice::<Value>(&buf) {
                            if tx.send(v).is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        Browser {
            _child: child,
            commands: std::fs::File::from(cmd_write),
            answers,
            next_id: 0,
            events: Vec::new(),
            _profile: profile,
        }
    }

    /// Sends a command (to a page's session, if given) and waits for its result.
    pub fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            message["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.commands
            .write_all(&bytes)
            .expect("chromium reads its pipe");
        let deadline = Instant::now() + super::PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = self
                .answers
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("chromium did not answer {method}"));
            if m["id"] == json!(id) {
                if let Some(e) = m.get("error") {
                    panic!("{method} failed: {e}");
                }
                return m["result"].clone();
            }
            if m.get("method").is_some() {
                self.events.push(m);
            }
        }
    }

    /// Opens a tab and attaches to it; returns its session.
    pub fn open_page(&mut self) -> String {
        let target = self.call(None, "Target.createTarget", json!({"url": "about:blank"}));
        let attached = self.call(
            None,
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        );
        let session = attached["sessionId"].as_str().unwrap().to_string();
        for domain in ["Runtime", "Log", "Network", "Page"] {
            self.call(Some(&session), &format!("{domain}.enable"), json!({}));
        }
        session
    }

    /// Evaluates `expression` in the page and returns its value.
    pub fn eval(&mut self, session: &str, expression: &str) -> Value {
        let r = self.call(
            Some(session),
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expression} threw: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Waits until `expression` is truthy in the page.
    pub fn wait_for(&mut self, session: &str, expression: &str) {
        let deadline = Instant::now() + super::PATIENCE;
        loop {
            let v = self.eval(session, expression);
            if !(v.is_null() || v == json!(false) || v == json!(0) || v == json!("")) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "never true in the page: {expression}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A PNG of the page as laid out, down to its end.
    pub fn screenshot(&mut self, session: &str) -> Vec<u8> {
        let shot = self.call(
            Some(session),
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true}),
        );
        data_encoding::BASE64
            .decode(shot["data"].as_str().unwrap().as_bytes())
            .expect("base64 PNG")
    }
}
