//! A faulty HTTP origin for fault-injection tests: an HTTP/1.1 proxy in front of a server
//! (s3s-fs) that, request by request and at the rates a test sets, answers with an error,
//! sends a short body under a matching `Content-Length` (a server that lies about a range),
//! cuts the connection in the middle of a body, flips the `ETag` (the object seemingly
//! changed), or answers late. Faults are drawn from a seeded generator, so a failing run
//! can be repeated with its seed; every injected fault is counted, so a test can show the
//! faults happened.
//!
//! Each request goes to the server on a connection of its own (`Connection: close`), the
//! whole answer is read, then forwarded (possibly damaged) with `Content-Length` framing on
//! the client's kept-alive connection.
//!
//! [`FaultyHttpProxy::start_gated`] also makes the server atomic for a test that changes
//! the files it serves: s3s-fs answers a request in steps (a GET opens the object's file,
//! then reads or computes its ETag), so a file replaced in between gets the bytes of one
//! version under the ETag of another — which no real S3 does. Each request holds a shared
//! lock while the server answers it; the test's writer takes it exclusively to change a
//! file, so changes fall between answers, as on S3.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

/// How often each fault is injected: each a probability per request, drawn independently
/// (an error answer excludes the others).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Faults {
    /// Answered `503 SlowDown` without asking the server.
    pub error: f64,
    /// A `2xx` body cut short, with `Content-Length` saying the short length.
    pub short: f64,
    /// The connection closed half-way through a `2xx` body.
    pub cut: f64,
    /// The `ETag` header replaced by another value.
    pub etag_flip: f64,
    /// The answer held back by [`Faults::delay`].
    pub slow: f64,
    /// How long a slow answer waits.
    pub delay: Duration,
}

/// Faults injected so far, by kind, and requests seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Injected {
    pub requests: u64,
    pub errors: u64,
    pub shorts: u64,
    pub cuts: u64,
    pub etag_flips: u64,
    pub slows: u64,
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    errors: AtomicU64,
    shorts: AtomicU64,
    cuts: AtomicU64,
    etag_flips: AtomicU64,
    slows: AtomicU64,
}

#[derive(Debug)]
struct State {
    target: u16,
    faults: Mutex<Faults>,
    rng: Mutex<u64>,
    counters: Counters,
    stop: AtomicBool,
    open: Mutex<Vec<TcpStream>>,
    /// Held shared while the server answers a request ([`FaultyHttpProxy::start_gated`]).
    gate: Option<Arc<RwLock<()>>>,
}

impl State {
    /// A uniform draw in [0, 1) from the seeded generator (splitmix64).
    fn draw(&self) -> f64 {
        let mut s = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        *s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    fn hit(&self, p: f64) -> bool {
        p > 0.0 && self.draw() < p
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct FaultyHttpProxy {
    port: u16,
    state: Arc<State>,
    accept: Option<JoinHandle<()>>,
}

impl FaultyHttpProxy {
    /// A proxy to the HTTP server on `127.0.0.1:target`, injecting nothing until
    /// [`FaultyHttpProxy::set`]; `seed` fixes the sequence of draws.
    pub fn start(target: u16, seed: u64) -> Result<FaultyHttpProxy> {
        FaultyHttpProxy::start_with(target, seed, None)
    }

    /// As [`FaultyHttpProxy::start`], and the server answers each request while holding
    /// `gate` shared: a writer holding it exclusively changes the served files between
    /// answers (see the module documentation).
    pub fn start_gated(target: u16, seed: u64, gate: Arc<RwLock<()>>) -> Result<FaultyHttpProxy> {
        FaultyHttpProxy::start_with(target, seed, Some(gate))
    }

    fn start_with(
        target: u16,
        seed: u64,
        gate: Option<Arc<RwLock<()>>>,
    ) -> Result<FaultyHttpProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the faulty proxy")?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(State {
            target,
            faults: Mutex::new(Faults::default()),
            rng: Mutex::new(seed),
            counters: Counters::default(),
            stop: AtomicBool::new(false),
            open: Mutex::new(Vec::new()),
            gate,
        });
        let st = state.clone();
        let accept = std::thread::Builder::new()
            .name("faulty-accept".into())
            .spawn(move || {
                for client in listener.incoming() {
                    if st.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(client) = client else { continue };
                    if let Ok(c) = client.try_clone() {
                        st.open.lock().unwrap_or_else(|p| p.into_inner()).push(c);
                    }
                    let st = st.clone();
                    let _ = std::thread::Builder::new()
                        .name("faulty-conn".into())
                        .spawn(move || {
                            let _ = serve(client, &st);
                        });
                }
            })?;
        Ok(FaultyHttpProxy {
            port,
            state,
            accept: Some(accept),
        })
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Injects `faults` from the next request on (`Faults::default()`: none).
    pub fn set(&self, faults: Faults) {
        *self.state.faults.lock().unwrap_or_else(|p| p.into_inner()) = faults;
    }

    /// What was injected so far.
    pub fn injected(&self) -> Injected {
        let c = &self.state.counters;
        Injected {
            requests: c.requests.load(Ordering::SeqCst),
            errors: c.errors.load(Ordering::SeqCst),
            shorts: c.shorts.load(Ordering::SeqCst),
            cuts: c.cuts.load(Ordering::SeqCst),
            etag_flips: c.etag_flips.load(Ordering::SeqCst),
            slows: c.slows.load(Ordering::SeqCst),
        }
    }
}

impl Drop for FaultyHttpProxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        for s in self
            .state
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// An HTTP message head: the first line and the header fields, in order.
#[derive(Debug)]
struct Head {
    line: String,
    fields: Vec<(String, String)>,
}

impl Head {
    fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn remove(&mut self, name: &str) {
        self.fields.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }

    fn set(&mut self, name: &str, value: String) {
        self.remove(name);
        self.fields.push((name.to_string(), value));
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!("{}\r\n", self.line);
        for (n, v) in &self.fields {
            out.push_str(&format!("{n}: {v}\r\n"));
        }
        out.push_str("\r\n");
        out.into_bytes()
    }
}

/// Reads a head up to its blank line; `None` at a clean end of stream.
fn read_head(r: &mut impl BufRead) -> io::Result<Option<Head>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let first = line.trim_end().to_string();
    let mut fields = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (n, v) = l
            .split_once(':')
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad header"))?;
        fields.push((n.trim().to_string(), v.trim().to_string()));
    }
    Ok(Some(Head {
        line: first,
        fields,
    }))
}

/// The body of a message framed by `Content-Length` or chunked encoding; without either, a
/// request has none and a response runs to the end of the stream.
fn read_body(r: &mut impl BufRead, head: &Head, request: bool) -> io::Result<Vec<u8>> {
    let chunked = head
        .get("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            r.read_line(&mut size)?;
            let hex = size.trim().split(';').next().unwrap_or("");
            let n = usize::from_str_radix(hex, 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            if n == 0 {
                // Trailers, up to the blank line.
                loop {
                    let mut t = String::new();
                    if r.read_line(&mut t)? == 0 || t.trim().is_empty() {
                        break;
                    }
                }
                return Ok(body);
            }
            let start = body.len();
            body.resize(start + n, 0);
            r.read_exact(&mut body[start..])?;
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf)?;
        }
    }
    match head.get("content-length") {
        Some(n) => {
            let n: usize = n
                .parse()
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad length"))?;
            body.resize(n, 0);
            r.read_exact(&mut body)?;
        }
        None if request => {}
        None => {
            r.read_to_end(&mut body)?;
        }
    }
    Ok(body)
}

/// Serves one client connection, request by request.
fn serve(client: TcpStream, st: &State) -> io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut out = client;
    while let Some(mut req) = read_head(&mut reader)? {
        if st.stop.load(Ordering::SeqCst) {
            break;
        }
        let body = read_body(&mut reader, &req, true)?;
        st.counters.requests.fetch_add(1, Ordering::SeqCst);
        let faults = *st.faults.lock().unwrap_or_else(|p| p.into_inner());
        let head_only = req.line.starts_with("HEAD ");
        if st.hit(faults.error) {
            st.counters.errors.fetch_add(1, Ordering::SeqCst);
            let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code>\
                       <Message>injected</Message></Error>";
            let mut head = Head {
                line: "HTTP/1.1 503 Slow Down".into(),
                fields: vec![("Content-Type".into(), "application/xml".into())],
            };
            head.set("Content-Length", xml.len().to_string());
            out.write_all(&head.to_bytes())?;
            if !head_only {
                out.write_all(xml.as_bytes())?;
            }
            continue;
        }
        // The server's whole answer, on a connection of its own (and, gated, with no
        // change to what it serves meanwhile).
        let held = st
            .gate
            .as_ref()
            .map(|g| g.read().unwrap_or_else(|p| p.into_inner()));
        let mut server = TcpStream::connect(("127.0.0.1", st.target))?;
        req.set("Connection", "close".into());
        server.write_all(&req.to_bytes())?;
        server.write_all(&body)?;
        let mut sr = BufReader::new(server);
        let mut resp = read_head(&mut sr)?.ok_or(io::ErrorKind::UnexpectedEof)?;
        let status: u16 = resp
            .line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut rbody = if head_only || status == 204 || status == 304 {
            Vec::new()
        } else {
            read_body(&mut sr, &resp, false)?
        };
        drop(held);
        resp.remove("Transfer-Encoding");
        resp.set("Connection", "keep-alive".into());
        if !head_only {
            resp.set("Content-Length", rbody.len().to_string());
        }
        if st.hit(faults.slow) {
            st.counters.slows.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(faults.delay);
        }
        if resp.get("etag").is_some() && st.hit(faults.etag_flip) {
            st.counters.etag_flips.fetch_add(1, Ordering::SeqCst);
            resp.set("ETag", "\"f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1\"".into());
        }
        let damageable = (200..300).contains(&status) && rbody.len() > 1;
        if damageable && st.hit(faults.cut) {
            st.counters.cuts.fetch_add(1, Ordering::SeqCst);
            out.write_all(&resp.to_bytes())?;
            out.write_all(&rbody[..rbody.len() / 2])?;
            let _ = out.shutdown(Shutdown::Both);
            return Ok(());
        }
        if damageable && st.hit(faults.short) {
            st.counters.shorts.fetch_add(1, Ordering::SeqCst);
            let keep = ((rbody.len() as f64) * st.draw()) as usize;
            rbody.truncate(keep.clamp(1, rbody.len() - 1));
            resp.set("Content-Length", rbody.len().to_string());
        }
        out.write_all(&resp.to_bytes())?;
        out.write_all(&rbody)?;
    }
    let _ = out.shutdown(Shutdown::Both);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-answer HTTP server: answers every request on a connection with `body`.
    fn server(body: &'static [u8]) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let mut s = s.unwrap();
                let mut r = BufReader::new(s.try_clone().unwrap());
                let head = read_head(&mut r).unwrap().unwrap();
                let _ = read_body(&mut r, &head, true).unwrap();
                let h = format!(
                    "HTTP/1.1 200 OK\r\nETag: \"abc\"\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
                    body.len()
                );
                s.write_all(h.as_bytes()).unwrap();
                s.write_all(body).unwrap();
                s.write_all(b"\r\n0\r\n\r\n").unwrap();
            }
        });
        port
    }

    fn get(port: u16, conn: &mut Option<BufReader<TcpStream>>) -> io::Result<(Head, Vec<u8>)> {
        let r = match conn {
            Some(r) => r,
            None => conn.insert(BufReader::new(TcpStream::connect(("127.0.0.1", port))?)),
        };
        r.get_mut()
            .write_all(b"GET /b/k HTTP/1.1\r\nHost: x\r\n\r\n")?;
        let head = read_head(r)?.ok_or(io::ErrorKind::UnexpectedEof)?;
        let body = read_body(r, &head, false)?;
        Ok((head, body))
    }

    #[test]
    fn without_faults_answers_pass_unchanged_on_a_kept_connection() {
        let proxy = FaultyHttpProxy::start(server(b"0123456789"), 1).unwrap();
        let mut conn = None;
        for _ in 0..3 {
            let (head, body) = get(proxy.port(), &mut conn).unwrap();
            assert_eq!(body, b"0123456789");
            assert_eq!(head.get("etag"), Some("\"abc\""));
        }
        assert_eq!(
            proxy.injected(),
            Injected {
                requests: 3,
                ..Injected::default()
            }
        );
    }

    #[test]
    fn each_fault_is_injected_and_counted() {
        let proxy = FaultyHttpProxy::start(server(b"0123456789"), 7).unwrap();
        let mut conn = None;
        proxy.set(Faults {
            error: 1.0,
            ..Faults::default()
        });
        let (head, _) = get(proxy.port(), &mut conn).unwrap();
        assert!(head.line.contains(" 503 "), "{head:?}");
        proxy.set(Faults {
            short: 1.0,
            etag_flip: 1.0,
            ..Faults::default()
        });
        let (head, body) = get(proxy.port(), &mut conn).unwrap();
        assert!(!body.is_empty() && body.len() < 10 && b"0123456789".starts_with(&body));
        assert_ne!(head.get("etag"), Some("\"abc\""));
        proxy.set(Faults {
            cut: 1.0,
            ..Faults::default()
        });
        assert!(
            get(proxy.port(), &mut conn).is_err(),
            "a cut answer read whole"
        );
        let got = proxy.injected();
        assert_eq!(
            (got.errors, got.shorts, got.etag_flips, got.cuts),
            (1, 1, 1, 1)
        );
    }
}
