//! A counting TCP proxy: listens on a free 127.0.0.1 port, forwards every connection to a
//! server's port, and counts the bytes each way, so a test can measure what any protocol
//! moved. Threads only; dropping it closes the listener and every forwarded connection.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::{Context, Result};

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
        }
    }

    /// What moved so far.
    pub fn moved(&self) -> Moved {
        Moved {
            down: self.counters.down.load(Ordering::SeqCst),
            up: self.counters.up.load(Ordering::SeqCst),
            connections: self.counters.connections.load(Ordering::SeqCst),
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

fn pipe(mut from: TcpStream, mut to: TcpStream, c: &Counters, down: bool) {
    let counter = if down { &c.down } else { &c.up };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        counter.fetch_add(n as u64, Ordering::SeqCst);
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
}
