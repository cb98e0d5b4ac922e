//! What the control plane asks of the refresh loop and learns from it: refreshes it can
//! wait for ([`RefreshControl::request`] / [`RefreshControl::wait`]), the refresh interval
//! changed at run time, and how the last refresh went.
//!
//! A refresh asked for is covered by the first refresh round that *starts* after the ask:
//! each round notes the last ticket handed out when it starts and, when done, marks every
//! ticket up to it done. An ask made while a round runs is left to the next round, which
//! its trigger (queued meanwhile) starts.

use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::scan::Progress;

/// How a refresh round ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoundOutcome {
    /// The generation served afterwards.
    pub generation: u64,
    /// Whether it published a new tree.
    pub published: bool,
    /// Tracks added, changed and removed.
    pub added: u64,
    /// See `added`.
    pub changed: u64,
    /// See `added`.
    pub removed: u64,
    /// Why it failed (the previous tree is still served).
    pub error: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    asked: u64,
    done: u64,
    running: bool,
    last: Option<RoundOutcome>,
    progress: Option<Progress>,
    /// A new refresh interval for the loop to take (`Some(None)`: no periodic refresh).
    interval: Option<Option<Duration>>,
}

/// Shared between the refresh loop and the control plane.
#[derive(Debug, Default)]
pub struct RefreshControl {
    state: Mutex<State>,
    cv: Condvar,
}

impl RefreshControl {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A ticket for a refresh about to be triggered (send the trigger after taking it).
    pub fn request(&self) -> u64 {
        let mut s = self.lock();
        s.asked += 1;
        s.asked
    }

    /// Waits until a round covering `ticket` ended, at most `limit`: its outcome, or `None`
    /// on timeout.
    pub fn wait(&self, ticket: u64, limit: Duration) -> Option<RoundOutcome> {
        let deadline = Instant::now() + limit;
        let mut s = self.lock();
        while s.done < ticket {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            s = self
                .cv
                .wait_timeout(s, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        s.last.clone()
    }

    /// The loop starts a round: the tickets it covers.
    pub(crate) fn begin(&self) -> u64 {
        let mut s = self.lock();
        s.running = true;
        s.asked
    }

    /// The round that began at `covers` ended with `outcome`.
    pub(crate) fn end(&self, covers: u64, outcome: RoundOutcome) {
        let mut s = self.lock();
        s.running = false;
        s.done = s.done.max(covers);
        s.last = Some(outcome);
        s.progress = None;
        self.cv.notify_all();
    }

    /// A scan's running totals (what the scan-progress call shows).
    pub fn set_progress(&self, p: Progress) {
        let mut s = self.lock();
        s.progress = (!p.done).then_some(p);
    }

    /// Whether a refresh round is running, its scan's running totals, and how the last
    /// round ended.
    pub fn status(&self) -> (bool, Option<Progress>, Option<RoundOutcome>) {
        let s = self.lock();
        (s.running, s.progress, s.last.clone())
    }

    /// Asks the loop to refresh every `interval` from now on (`None`: only on changes);
    /// wake it with a trigger afterwards.
    pub fn set_interval(&self, interval: Option<Duration>) {
        self.lock().interval = Some(interval);
    }

    /// A new interval asked for, once.
    pub(crate) fn take_interval(&self) -> Option<Option<Duration>> {
        self.lock().interval.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(generation: u64) -> RoundOutcome {
        RoundOutcome {
            generation,
            published: true,
            added: 0,
            changed: 0,
            removed: 0,
            error: None,
        }
    }

    #[test]
    fn a_ticket_is_done_only_by_a_round_that_started_after_it() {
        let c = RefreshControl::default();
        let covers = c.begin(); // a round already running
        let t = c.request();
        c.end(covers, outcome(1));
        assert_eq!(c.wait(t, Duration::from_millis(10)), None);
        let covers = c.begin();
        c.end(covers, outcome(2));
        assert_eq!(c.wait(t, Duration::from_millis(10)), Some(outcome(2)));
    }

    #[test]
    fn a_waiter_wakes_when_the_round_ends() {
        let c = std::sync::Arc::new(RefreshControl::default());
        let t = c.request();
        let c2 = c.clone();
        let waiter = std::thread::spawn(move || c2.wait(t, Duration::from_secs(30)));
        let covers = c.begin();
        c.end(covers, outcome(7));
        assert_eq!(waiter.join().unwrap(), Some(outcome(7)));
    }
}
