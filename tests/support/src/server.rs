//! A `nats-server` of the test's own: a free port, a temporary store, killed on drop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tempfile::TempDir;

const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running JetStream server. It keeps its store across [`NatsServer::restart`].
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: PathBuf,
    /// The temporary store, removed on drop; `None` for a store the caller keeps.
    _owned: Option<TempDir>,
    config: Option<PathBuf>,
}

impl NatsServer {
    /// Starts a JetStream server on a port the kernel picks.
    pub fn start() -> Self {
        Self::launch(None)
    }

    /// Starts a server with this configuration text (accounts, users…); JetStream, the port and
    /// the store dir are still set on the command line.
    pub fn start_with_config(config: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("nats-conf")
            .tempdir()
            .expect("temp dir");
        let path = dir.keep().join("nats-server.conf");
        std::fs::write(&path, config).expect("write config");
        Self::launch(Some(path))
    }

    /// Starts a server over the store in `dir`, which outlives it: for a benchmark that fills a
    /// stream once and measures it in several runs.
    pub fn start_in(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("the store dir");
        let mut server = NatsServer {
            child: None,
            port: 0,
            store: dir.to_path_buf(),
            _owned: None,
            config: None,
        };
        server.spawn();
        server
    }

    fn launch(config: Option<PathBuf>) -> Self {
        let owned = tempfile::Builder::new()
            .prefix("nats-store")
            .tempdir()
            .expect("temp dir");
        let mut server = NatsServer {
            child: None,
            port: 0,
            store: owned.path().to_path_buf(),
            _owned: Some(owned),
            config,
        };
        server.spawn();
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL) and starts it again on the same port over the same store.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Kills the server (SIGKILL), keeping its port and store for [`NatsServer::start_again`].
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Starts a stopped server again on the same port over the same store.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the server is running");
        self.spawn();
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn spawn(&mut self) {
        let port = if self.port == 0 {
            "-1".to_string()
        } else {
            self.port.to_string()
        };
        let mut cmd = Command::new(nats_server_binary());
        if let Some(config) = &self.config {
            cmd.arg("-c").arg(config);
        }
        cmd.args(["-js", "-a", "127.0.0.1", "-p", &port, "-sd"])
            .arg(&self.store)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start {}: {e}; install nats-server or set NATS_SERVER_BIN",
                nats_server_binary().display()
            )
        });
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        // Drains the log for the server's whole life, so that it never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut log = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = line.split("Listening for client connections on ").nth(1) {
                        self.port = addr
                            .rsplit(':')
                            .next()
                            .and_then(|p| p.trim().parse().ok())
                            .expect("a port in the log");
                    }
                    let ready = line.contains("Server is ready");
                    log.push(line);
                    if ready {
                        break;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!("nats-server did not become ready:\n{}", log.join("\n"));
                }
            }
        }
        self.child = Some(child);
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        if let Some(config) = &self.config {
            if let Some(dir) = config.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

/// `NATS_SERVER_BIN`, else `nats-server` on `PATH`, else Debian's `/usr/sbin/nats-server`.
/// The `nats-server` the tests run: `NATS_SERVER_BIN`, else `PATH`, else `/usr/sbin`.
pub fn nats_server_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("NATS_SERVER_BIN") {
        return bin.into();
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.is_file());
    on_path.unwrap_or_else(|| "nats-server".into())
}

/// A child process that is killed and reaped when dropped, so that a test that fails half-way
/// leaves no `serve` behind it.
#[derive(Debug)]
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Reaped {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

/// Sends `signal` (e.g. `libc::SIGTERM`) to a child process.
pub fn signal(child: &Child, signal: i32) {
    // SAFETY: kill(2) takes a pid and a signal number and touches no memory of ours.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    assert_eq!(rc, 0, "kill({}, {signal}) failed", child.id());
}

pub use libc::{SIGCONT, SIGINT, SIGKILL, SIGSTOP, SIGTERM};
