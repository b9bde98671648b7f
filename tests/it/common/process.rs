//! The binary as an operator runs it, for the tests that run it: `serve` killed on drop, its log
//! lines read as it writes them.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use truebit_testkit::Reaped;

pub const BIN: &str = env!("CARGO_BIN_EXE_truebit-federation");

pub fn command(url: &str, db: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.env("NATS_URL", url)
        .env("DB_PATH", db)
        .env("PUBLISH_INTERVAL", "200")
        // Tests run in parallel: each serve takes a free port.
        .env("HTTP_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    c
}

/// Starts `serve` and returns it once it logged that it is serving, with its log lines. It is
/// killed when dropped, so that a failed assertion leaves no process behind.
pub fn spawn_serve(url: &str, db: &Path) -> (Reaped, mpsc::Receiver<String>) {
    spawn_serve_with(command(url, db))
}

/// [`spawn_serve`] with a command of the caller's.
pub fn spawn_serve_with(mut command: Command) -> (Reaped, mpsc::Receiver<String>) {
    let mut child = Reaped(
        command
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    loop {
        let line = rx
            .recv_timeout(super::PATIENCE)
            .expect("serve logs that it is serving");
        if line.contains("serving") {
            return (child, rx);
        }
        assert!(
            !line.contains("ERROR") && !line.starts_with("error"),
            "serve failed: {line}"
        );
    }
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap()
}

/// Runs a command that must end by itself (a `serve` that must refuse to start, say): one still
/// running after [`PATIENCE`](super::PATIENCE) fails the test, and is killed, instead of hanging it.
pub fn run_to_exit(cmd: &mut Command) -> Output {
    let mut child = Reaped(
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let read_all = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            pipe.read_to_end(&mut bytes).map(|_| bytes)
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().unwrap()));
    let stderr = read_all(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + super::PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running after {:?}: it should have exited",
            super::PATIENCE
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: stdout.join().unwrap().unwrap(),
        stderr: stderr.join().unwrap().unwrap(),
    }
}

/// Runs `keys ARGS` with `cmd`'s settings, and fails the test if it fails; returns its first line
/// (the public key, where it prints one).
pub fn keys(mut cmd: Command, args: &[&str]) -> String {
    let out = run(cmd.arg("keys").args(args));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "keys {args:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines().next().unwrap_or_default().to_string()
}
