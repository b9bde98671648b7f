//! A TCP proxy between clients and a server, for partitions that a closed socket would not
//! show: [`TcpProxy::hold`] stops forwarding both ways while keeping every socket open (as a
//! network that drops packets, or a half-open connection, does), so that a client keeps what it
//! writes and waits for answers; [`TcpProxy::release`] forwards what was held, late, as such a
//! network delivers it when it heals.
//!
//! ```no_run
//! let server = truebit_testkit::NatsServer::start();
//! let proxy = truebit_testkit::TcpProxy::start(&server.url());
//! // connect a client to proxy.url() instead of server.url(), then:
//! proxy.hold();
//! proxy.release();
//! ```

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

/// Forwards every connection made to [`TcpProxy::addr`] to the upstream server. Closing it
/// (dropping) closes every connection through it.
pub struct TcpProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

struct Shared {
    held: Mutex<bool>,
    changed: Condvar,
    closed: AtomicBool,
    /// Both ends of every connection, to close them on drop.
    sockets: Mutex<Vec<TcpStream>>,
}

impl Shared {
    /// Returns once forwarding is allowed; false if the proxy closed meanwhile.
    fn wait_released(&self) -> bool {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        while *held && !self.closed.load(Ordering::SeqCst) {
            held = self
                .changed
                .wait(held)
                .unwrap_or_else(PoisonError::into_inner);
        }
        !self.closed.load(Ordering::SeqCst)
    }
}

impl TcpProxy {
    /// Listens on 127.0.0.1 on a port the kernel picks and forwards to `upstream`: a
    /// `host:port`, or a URL such as `nats://127.0.0.1:4222`.
    pub fn start(upstream: &str) -> Self {
        let upstream = upstream
            .split_once("://")
            .map_or(upstream, |(_, rest)| rest)
            .trim_end_matches('/')
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free port for the proxy");
        let addr = listener.local_addr().expect("a bound address");
        let shared = Arc::new(Shared {
            held: Mutex::new(false),
            changed: Condvar::new(),
            closed: AtomicBool::new(false),
            sockets: Mutex::new(Vec::new()),
        });
        let accepting = shared.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if accepting.closed.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                // A server that is down refuses the client as it would refuse it directly.
                let Ok(server) = TcpStream::connect(&upstream) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (Ok(c2), Ok(s2), Ok(c3), Ok(s3)) = (
                    client.try_clone(),
                    server.try_clone(),
                    client.try_clone(),
                    server.try_clone(),
                ) else {
                    continue;
                };
                accepting
                    .sockets
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .extend([c3, s3]);
                let (up, down) = (accepting.clone(), accepting.clone());
                std::thread::spawn(move || pump(client, server, &up));
                std::thread::spawn(move || pump(s2, c2, &down));
            }
        });
        TcpProxy { addr, shared }
    }

    /// Where clients connect instead of the server.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `nats://` and [`TcpProxy::addr`].
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// Stops forwarding, both ways, on every connection (and on those made while held); the
    /// sockets stay open, and what either side sends waits in the proxy and the kernel's
    /// buffers.
    pub fn hold(&self) {
        *self
            .shared
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = true;
    }

    /// Forwards again, starting with what was held.
    pub fn release(&self) {
        *self
            .shared
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = false;
        self.shared.changed.notify_all();
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.changed.notify_all();
        for s in self
            .shared
            .sockets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            let _ = s.shutdown(Shutdown::Both);
        }
        // Wakes the accepting thread, which then sees `closed` and ends.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Copies `from` to `to` until either closes; each chunk read while held waits to be written
/// until release.
fn pump(mut from: TcpStream, mut to: TcpStream, shared: &Shared) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        if !shared.wait_released() || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// An echo server through the proxy: held bytes arrive only after release, in order.
    #[test]
    fn held_bytes_wait_and_arrive_in_order_on_release() {
        let echo = TcpListener::bind("127.0.0.1:0").unwrap();
        let echo_addr = echo.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = echo.accept().unwrap();
            let mut buf = [0u8; 1024];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => s.write_all(&buf[..n]).unwrap(),
                }
            }
        });
        let proxy = TcpProxy::start(&echo_addr.to_string());
        let mut c = TcpStream::connect(proxy.addr()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = [0u8; 3];
        c.write_all(b"one").unwrap();
        c.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"one");

        proxy.hold();
        c.write_all(b"two").unwrap();
        c.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let silent = c.read(&mut got);
        assert!(
            matches!(&silent, Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
            "nothing comes back while held: {silent:?}"
        );
        proxy.release();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"two");
    }
}
