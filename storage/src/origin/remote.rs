//! What the network origin drivers (S3, SFTP, SMB) share: the origin runtime, calls with a
//! deadline, retries with exponential backoff and full jitter, a per-origin concurrency
//! limit, and counters of what crossed the wire.
//!
//! The FUSE workers and the scanner are plain threads: they never run an async runtime.
//! A driver's blocking method ([`crate::origin::Origin::list`], [`crate::origin::Source::read_at`])
//! hands its request to [`Remote::call`], which runs it on the origin runtime (threads of
//! its own, named `origin-rt`) and waits for the answer, for at most
//! [`RemoteOptions::timeout`] in all (every attempt and every backoff included): an
//! origin that went away makes a read fail with `ETIMEDOUT` in bounded time, never hang.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How a network origin is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteOptions {
    /// The most one call may take, retries included (default 5 s).
    pub timeout: Duration,
    /// Attempts per call, the first included (default 4).
    pub attempts: u32,
    /// The first backoff's upper bound; each retry doubles it (default 100 ms).
    pub backoff: Duration,
    /// The largest backoff (default 2 s).
    pub max_backoff: Duration,
    /// Requests in flight to this origin at most (default 8).
    pub concurrency: usize,
    /// Payload bytes per second at most, on average (a one-second burst is allowed); `None`
    /// for no limit. A request waits before it is sent until the bytes already received
    /// fit the rate (the wait does not count against `timeout`).
    pub bandwidth: Option<u64>,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        RemoteOptions {
            timeout: Duration::from_secs(5),
            attempts: 4,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            concurrency: 8,
            bandwidth: None,
        }
    }
}

/// A token bucket over [`Traffic::bytes_in`]: one second's worth of bytes at most, spent
/// by what was received, refilled at the rate.
#[derive(Debug)]
struct Pacer {
    /// Bytes that may still be received now (negative: owed).
    tokens: f64,
    /// When the bucket was last brought up to date.
    at: Instant,
    /// `bytes_in` then.
    seen: u64,
}

impl Pacer {
    /// How long to wait before the next request at `rate` bytes/s, with `received` bytes
    /// received so far.
    fn wait(&mut self, rate: u64, received: u64, now: Instant) -> Duration {
        let rate = rate.max(1) as f64;
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * rate;
        self.tokens = (self.tokens + refill).min(rate);
        self.tokens -= received.saturating_sub(self.seen) as f64;
        self.seen = received;
        self.at = now;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / rate)
        }
    }
}

/// How one attempt failed, as the driver judges it.
#[derive(Debug)]
pub enum Attempt {
    /// Worth trying again (a refused or dropped connection, a timeout, a 5xx, a throttle).
    Retry(io::Error),
    /// Trying again cannot help (not found, access denied, a malformed answer).
    Fatal(io::Error),
}

/// The runtime every network origin's requests run on: two worker threads of its own,
/// started at first use.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("origin-rt")
            .enable_all()
            .build()
            // Without it no network origin can work at all; it fails only when the system
            // cannot start threads.
            .expect("start the origin runtime")
    })
}

/// Counters of one origin's traffic.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Requests sent (each attempt counts).
    pub requests: AtomicU64,
    /// Payload bytes received (object or file bytes, not protocol overhead).
    pub bytes_in: AtomicU64,
    /// Attempts that failed and were retried.
    pub retries: AtomicU64,
    /// Connections opened: the first and every reconnect (0 where the client pools them).
    pub connections: AtomicU64,
}

impl Traffic {
    /// Adds `n` received payload bytes.
    pub fn received(&self, n: u64) {
        self.bytes_in.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a new connection and returns how many there have been, this one included.
    pub fn connected(&self) -> u64 {
        self.connections.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Logs the counters at info level as "`SCHEME` origin traffic", the line tests and
    /// operators read a scan's cost from.
    pub fn log(&self, origin: &str, scheme: &str) {
        tracing::info!(
            origin,
            requests = self.requests.load(Ordering::Relaxed),
            bytes_in = self.bytes_in.load(Ordering::Relaxed),
            retries = self.retries.load(Ordering::Relaxed),
            connections = self.connections.load(Ordering::Relaxed),
            "{scheme} origin traffic"
        );
    }
}

/// One network origin's calling discipline: options, concurrency limit, counters.
#[derive(Debug)]
pub struct Remote {
    opts: RemoteOptions,
    /// The call deadline in force, in ms (starts as `opts.timeout`; [`Remote::set_timeout`]).
    timeout_ms: AtomicU64,
    limit: tokio::sync::Semaphore,
    traffic: Traffic,
    pacer: std::sync::Mutex<Pacer>,
}

impl Remote {
    /// A caller with `opts`.
    pub fn new(opts: RemoteOptions) -> Remote {
        Remote {
            limit: tokio::sync::Semaphore::new(opts.concurrency.max(1)),
            pacer: std::sync::Mutex::new(Pacer {
                tokens: opts.bandwidth.unwrap_or(0) as f64,
                at: Instant::now(),
                seen: 0,
            }),
            timeout_ms: AtomicU64::new(opts.timeout.as_millis().min(u128::from(u64::MAX)) as u64),
            opts,
            traffic: Traffic::default(),
        }
    }

    /// The most one call may take now, retries included.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.load(Ordering::Relaxed))
    }

    /// Changes the call deadline from the next call on (a running daemon's `timeout_secs`
    /// change).
    pub fn set_timeout(&self, timeout: Duration) {
        let ms = timeout.as_millis().clamp(1, u128::from(u64::MAX)) as u64;
        self.timeout_ms.store(ms, Ordering::Relaxed);
    }

    /// Its options.
    pub fn options(&self) -> &RemoteOptions {
        &self.opts
    }

    /// Its counters.
    pub fn traffic(&self) -> &Traffic {
        &self.traffic
    }

    /// Runs `attempt` on the origin runtime until it succeeds, fails with
    /// [`Attempt::Fatal`], runs out of attempts, or the call's deadline passes
    /// (`ErrorKind::TimedOut`). `what` names the request in the error ("GET a/b.flac").
    /// Must not be called from the origin runtime's own threads.
    pub fn call<T, F, Fut>(&self, what: &str, mut attempt: F) -> io::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Attempt>>,
    {
        if let Some(rate) = self.opts.bandwidth {
            let received = self.traffic.bytes_in.load(Ordering::Relaxed);
            let wait = self
                .pacer
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .wait(rate, received, Instant::now());
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
        }
        let limit = self.timeout();
        let deadline = Instant::now() + limit;
        let work = async {
            let mut tries = 0u32;
            loop {
                let outcome = {
                    let _permit = self
                        .limit
                        .acquire()
                        .await
                        .map_err(|_| io::Error::other("origin closed"))?;
                    self.traffic.requests.fetch_add(1, Ordering::Relaxed);
                    attempt().await
                };
                tries += 1;
                match outcome {
                    Ok(v) => return Ok(v),
                    Err(Attempt::Fatal(e)) => return Err(e),
                    Err(Attempt::Retry(e)) if tries >= self.opts.attempts => return Err(e),
                    Err(Attempt::Retry(e)) => {
                        let pause = self.backoff(tries);
                        if Instant::now() + pause >= deadline {
                            return Err(e);
                        }
                        tracing::debug!(%what, error = %e, ?pause, "retrying");
                        self.traffic.retries.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(pause).await;
                    }
                }
            }
        };
        runtime().block_on(async move {
            match tokio::time::timeout(limit, work).await {
                Ok(result) => result,
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{what}: no answer within {} ms", limit.as_millis()),
                )),
            }
        })
    }

    /// The pause before retry `n` (1-based): uniform in [0, min(max, base·2ⁿ⁻¹)] ("full
    /// jitter", so many readers that failed together do not retry together).
    fn backoff(&self, n: u32) -> Duration {
        let cap = self
            .opts
            .backoff
            .saturating_mul(1u32 << (n - 1).min(16))
            .min(self.opts.max_backoff);
        let nanos = cap.as_nanos() as u64;
        if nanos == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(jitter() % (nanos + 1))
    }
}

/// A cheap random number (xorshift on a per-thread state seeded from the clock and the
/// thread): spreading retries needs no cryptographic quality.
fn jitter() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0x9e37_79b9, |d| d.as_nanos() as u64);
            let here = &t as *const u64 as u64;
            (t ^ here.rotate_left(32)) | 1
        });
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    fn quick() -> RemoteOptions {
        RemoteOptions {
            timeout: Duration::from_millis(500),
            attempts: 3,
            backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
            concurrency: 2,
            bandwidth: None,
        }
    }

    #[test]
    fn the_pacer_lets_a_second_s_worth_through_then_holds_to_the_rate() {
        let t0 = Instant::now();
        let mut p = Pacer {
            tokens: 1000.0,
            at: t0,
            seen: 0,
        };
        assert_eq!(p.wait(1000, 500, t0), Duration::ZERO);
        assert_eq!(p.wait(1000, 1000, t0), Duration::ZERO);
        // 500 bytes over: half a second at 1000 B/s.
        assert_eq!(p.wait(1000, 1500, t0), Duration::from_millis(500));
        // Half a second later the debt is paid.
        assert_eq!(
            p.wait(1000, 1500, t0 + Duration::from_millis(500)),
            Duration::ZERO
        );
        // A long idle stretch refills one second's worth, not more.
        let later = t0 + Duration::from_secs(100);
        assert_eq!(p.wait(1000, 2500, later), Duration::ZERO);
        assert_eq!(p.wait(1000, 3500, later), Duration::from_secs(1));
    }

    #[test]
    fn a_failing_attempt_is_retried_until_it_succeeds() {
        let remote = Remote::new(quick());
        let n = AtomicU32::new(0);
        let got = remote.call("GET x", || {
            let k = n.fetch_add(1, Ordering::SeqCst);
            async move {
                if k < 2 {
                    Err(Attempt::Retry(io::Error::other("flaky")))
                } else {
                    Ok(k)
                }
            }
        });
        assert_eq!(got.unwrap(), 2);
        assert_eq!(remote.traffic().retries.load(Ordering::Relaxed), 2);
        assert_eq!(remote.traffic().requests.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn a_fatal_error_is_not_retried_and_attempts_are_bounded() {
        let remote = Remote::new(quick());
        let n = AtomicU32::new(0);
        let fatal: io::Result<()> = remote.call("GET x", || {
            n.fetch_add(1, Ordering::SeqCst);
            async { Err(Attempt::Fatal(io::Error::from(io::ErrorKind::NotFound))) }
        });
        assert_eq!(fatal.unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(n.load(Ordering::SeqCst), 1);
        let n = AtomicU32::new(0);
        let flaky: io::Result<()> = remote.call("GET x", || {
            n.fetch_add(1, Ordering::SeqCst);
            async { Err(Attempt::Retry(io::Error::other("down"))) }
        });
        assert_eq!(flaky.unwrap_err().to_string(), "down");
        assert_eq!(n.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn a_call_that_hangs_fails_at_its_deadline() {
        let remote = Remote::new(quick());
        let started = Instant::now();
        let hung: io::Result<()> = remote.call("GET x", || async { std::future::pending().await });
        let e = hung.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("GET x"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(30));
    }

    #[test]
    fn backoff_is_capped() {
        let remote = Remote::new(quick());
        for n in 1..40 {
            assert!(remote.backoff(n) <= Duration::from_millis(5));
        }
    }
}
