//! A local HTTP server on 127.0.0.1 that answers recorded responses, for plugins that talk
//! to web services (no test touches the internet). Each route is a path prefix and a query
//! substring; every request is logged with when it arrived and its User-Agent.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{Context, Result};

/// One route: requests whose path starts with `path` and whose query contains `query`
/// get `body` (JSON) with status 200.
#[derive(Debug, Clone)]
pub struct Route {
    /// The path prefix.
    pub path: String,
    /// A substring of the query ("" for any).
    pub query: String,
    /// The recorded answer.
    pub body: Vec<u8>,
}

/// One request the server saw.
#[derive(Debug, Clone)]
pub struct Seen {
    /// When it arrived.
    pub at: Instant,
    /// Its path.
    pub path: String,
    /// Its query (after `?`).
    pub query: String,
    /// Its User-Agent header.
    pub user_agent: String,
}

/// The running server; dropping it stops it.
#[derive(Debug)]
pub struct Replay {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Replay {
    /// Starts a server with `routes` on a free port of 127.0.0.1.
    pub fn start(routes: Vec<Route>) -> Result<Replay> {
        let listener = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1")?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (log, halt) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if halt.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(conn) = conn {
                    let _ = answer(conn, &routes, &log);
                }
            }
        });
        Ok(Replay {
            addr,
            seen,
            stop,
            thread: Some(thread),
        })
    }

    /// `host:port` it listens on.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The requests so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for Replay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn answer(conn: TcpStream, routes: &[Route], log: &Mutex<Vec<Seen>>) -> Result<()> {
    let at = Instant::now();
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut first = String::new();
    reader.read_line(&mut first)?;
    let target = first.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut user_agent = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("user-agent") {
                user_agent = v.trim().to_string();
            }
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    log.lock().unwrap_or_else(|p| p.into_inner()).push(Seen {
        at,
        path: path.to_string(),
        query: query.to_string(),
        user_agent,
    });
    let route = routes
        .iter()
        .find(|r| path.starts_with(&r.path) && query.contains(&r.query));
    let (status, body): (&str, &[u8]) = match route {
        Some(r) => ("200 OK", &r.body),
        None => ("404 Not Found", b"{\"error\": \"not found\"}"),
    };
    let mut conn = conn;
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    conn.write_all(body)?;
    Ok(())
}
