//! A counting TCP proxy: listens on a free 127.0.0.1 port, forwards every connection to a
//! server's port, and counts the bytes each way, so a test can measure what any protocol
//! moved. Threads only; dropping it closes the listener and every forwarded connection.
//! It can also cut the server off ([`CountingProxy::set_down`]) or freeze its answers
//! after a number of bytes ([`CountingProxy::cap_down`]), or put a round trip's latency
//! on every request ([`CountingProxy::set_latency`]).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Bytes moved through a [`CountingProxy`] so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    /// From the server to the clients.
    pub down: u64,
    /// From the clients to the server.
    pub up: u64,
    /// Connections accepted.
    pub connections: u64,
}

#[derive(Debug, Default)]
struct Counters {
    down: AtomicU64,
    up: AtomicU64,
    connections: AtomicU64,
    stop: AtomicBool,
    /// Cut off: new connections are closed at once (as if the server were gone).
    cut: AtomicBool,
    /// Both ends of every forwarded connection, to close them on drop.
    open: Mutex<Vec<TcpStream>>,
    /// The most `down` may reach (`None`: no cap); the server-to-client pipes wait on
    /// `lifted` while it is reached.
    cap: Mutex<Option<u64>>,
    lifted: Condvar,
    /// Milliseconds each piece of a request waits before it is forwarded (an injected
    /// round trip: the server sees every request that much later).
    latency_ms: AtomicU64,
}

impl Counters {
    /// How many of the next `want` bytes from the server may go to the client now, counted
    /// as moved; waits while the cap is reached. 0 once the proxy stops or is cut off.
    fn allow_down(&self, want: u64) -> u64 {
        let mut cap = self.cap.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if self.stop.load(Ordering::SeqCst) || self.cut.load(Ordering::SeqCst) {
                return 0;
            }
            let down = self.down.load(Ordering::SeqCst);
            let room = cap.map_or(want, |c| c.saturating_sub(down).min(want));
            if room > 0 {
                self.down.fetch_add(room, Ordering::SeqCst);
                return room;
            }
            // Timed so that a stop without a notification still ends the wait.
            cap = self
                .lifted
                .wait_timeout(cap, Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn wake(&self) {
        let _cap = self.cap.lock().unwrap_or_else(|p| p.into_inner());
        self.lifted.notify_all();
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct CountingProxy {
    port: u16,
    counters: Arc<Counters>,
    accept: Option<JoinHandle<()>>,
}

impl CountingProxy {
    /// A proxy to `127.0.0.1:target`.
    pub fn start(target: u16) -> Result<CountingProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the proxy")?;
        let port = listener.local_addr()?.port();
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        let accept = std::thread::Builder::new()
            .name("proxy-accept".into())
            .spawn(move || accept_loop(listener, target, c))?;
        Ok(CountingProxy {
            port,
            counters,
            accept: Some(accept),
        })
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Cuts the server off (`true`: every open connection is closed and new ones are
    /// closed at once, as when a server goes away) or brings it back (`false`).
    pub fn set_down(&self, down: bool) {
        self.counters.cut.store(down, Ordering::SeqCst);
        if down {
            let mut open = self.counters.open.lock().unwrap_or_else(|p| p.into_inner());
            for s in open.drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
            self.counters.wake();
        }
    }

    /// Lets the server's answers through only until [`Moved::down`] reaches `cap` bytes;
    /// past it the connections stay open but nothing more arrives (a fetch frozen in the
    /// middle), until `None` lifts the cap.
    pub fn cap_down(&self, cap: Option<u64>) {
        *self.counters.cap.lock().unwrap_or_else(|p| p.into_inner()) = cap;
        self.counters.lifted.notify_all();
    }

    /// Delays every request by `rtt` before the server sees it (a remote origin `rtt`
    /// away, as far as request/response round trips go).
    pub fn set_latency(&self, rtt: Duration) {
        self.counters
            .latency_ms
            .store(rtt.as_millis() as u64, Ordering::SeqCst);
    }

    /// What moved so far.
    pub fn moved(&self) -> Moved {
        Moved {
            down: self.counters.down.load(Ordering::SeqCst),
            up: self.counters.up.load(Ordering::SeqCst),
            connections: self.counters.connections.load(Ordering::SeqCst),
        }
    }

    /// Waits until nothing has crossed the proxy for `still` (a daemon's start-up listing
    /// or prefetch has ended), failing after `deadline`; returns what moved by then.
    pub fn wait_quiet(&self, still: Duration, deadline: Duration) -> Result<Moved> {
        let started = Instant::now();
        let mut last = (self.moved(), Instant::now());
        loop {
            // The poll interval: the counters only move when bytes do.
            std::thread::sleep(Duration::from_millis(100));
            let now = self.moved();
            if now != last.0 {
                last = (now, Instant::now());
            } else if last.1.elapsed() >= still {
                return Ok(now);
            }
            if started.elapsed() > deadline {
                bail!("bytes kept crossing the proxy for {deadline:?}");
            }
        }
    }
}

fn accept_loop(listener: TcpListener, target: u16, c: Arc<Counters>) {
    for client in listener.incoming() {
        if c.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        if c.cut.load(Ordering::SeqCst) {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        c.connections.fetch_add(1, Ordering::SeqCst);
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        if let (Ok(a), Ok(b)) = (client.try_clone(), server.try_clone()) {
            let mut open = c.open.lock().unwrap_or_else(|p| p.into_inner());
            open.push(a);
            open.push(b);
        }
        for (from, to, down) in [
            (server.try_clone(), client.try_clone(), true),
            (client.try_clone(), server.try_clone(), false),
        ] {
            let (Ok(from), Ok(to)) = (from, to) else {
                continue;
            };
            let c = c.clone();
            let _ = std::thread::Builder::new()
                .name("proxy-pipe".into())
                .spawn(move || pipe(from, to, &c, down));
        }
    }
}

/// Asks the kernel to acknowledge what `s` receives at once. A server that writes a
/// response's header and body apart without `TCP_NODELAY` (s3s-fs) holds the body until
/// the header is acknowledged; the proxy only reads that socket, so its delayed ACK
/// would add ~40 ms to every small response the measured clients would not see without
/// the proxy. Linux clears the flag again on its own: set before every read.
fn quickack(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: setsockopt on a socket we own, with a c_int option of its size.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream, c: &Counters, down: bool) {
    let mut buf = vec![0u8; 64 * 1024];
    'conn: loop {
        quickack(&from);
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if !down {
            let delay = c.latency_ms.load(Ordering::SeqCst);
            if delay > 0 {
                std::thread::sleep(Duration::from_millis(delay));
            }
            // Counted before it is forwarded: once the server has it, an answer (and a
            // test reading the counters after it) can come before this thread runs again.
            c.up.fetch_add(n as u64, Ordering::SeqCst);
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
            continue;
        }
        let mut sent = 0;
        while sent < n {
            let room = c.allow_down((n - sent) as u64) as usize;
            if room == 0 || to.write_all(&buf[sent..sent + room]).is_err() {
                break 'conn;
            }
            sent += room;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.counters.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which then sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        self.counters.wake();
        let open = self.counters.open.lock().unwrap_or_else(|p| p.into_inner());
        for s in open.iter() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_forwarded_and_counted_both_ways() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = server.local_addr().unwrap().port();
        let echo = std::thread::spawn(move || {
            let (mut s, _) = server.accept().unwrap();
            let mut got = [0u8; 5];
            s.read_exact(&mut got).unwrap();
            s.write_all(&[7u8; 1000]).unwrap();
            got
        });
        let proxy = CountingProxy::start(target).unwrap();
        let mut c = TcpStream::connect(("127.0.0.1", proxy.port())).unwrap();
        c.write_all(b"hello").unwrap();
        let mut back = vec![0u8; 1000];
        c.read_exact(&mut back).unwrap();
        assert_eq!(&echo.join().unwrap(), b"hello");
        assert!(back.iter().all(|&b| b == 7));
        let moved = proxy.moved();
        assert_eq!((moved.up, moved.down, moved.connections), (5, 1000, 1));
        drop(proxy);
    }

    #[test]
    fn a_capped_proxy_holds_the_answer_at_the_cap_until_lifted() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = server.local_addr().unwrap().port();
        let sender = std::thread::spawn(move || {
            let (mut s, _) = server.accept().unwrap();
            s.write_all(&[9u8; 5000]).unwrap();
        });
        let proxy = CountingProxy::start(target).unwrap();
        proxy.cap_down(Some(1200));
        let mut c = TcpStream::connect(("127.0.0.1", proxy.port())).unwrap();
        let mut first = vec![0u8; 1200];
        c.read_exact(&mut first).unwrap();
        c.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut more = [0u8; 1];
        let held = c.read(&mut more);
        assert!(
            matches!(&held, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
                || e.kind() == std::io::ErrorKind::TimedOut),
            "a byte past the cap arrived: {held:?}"
        );
        assert_eq!(proxy.moved().down, 1200);
        proxy.cap_down(None);
        c.set_read_timeout(None).unwrap();
        let mut rest = vec![0u8; 3800];
        c.read_exact(&mut rest).unwrap();
        assert!(first.iter().chain(&rest).all(|&b| b == 9));
        sender.join().unwrap();
        assert_eq!(proxy.moved().down, 5000);
    }
}
