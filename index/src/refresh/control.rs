//! What the control plane asks of the refresh loop and learns from it: refreshes it can
//! wait for ([`RefreshControl::request`] / [`RefreshControl::wait`]), the refresh interval
//! changed at run time, and how the last refresh went.
//!
//! A refresh asked for is covered by the first refresh round that *starts* after the ask:
//! each round notes the last ticket handed out when it starts and, when done, marks every
//! ticket up to it done. An ask made while a round runs is left to the next round, which
//! its trigger (queued meanwhile) starts.

use std::ffi::OsString;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use musicfs_storage::origin::{
    ChangeDetection, Health, Listed, Offline, Origin, OriginError, OriginSpec, RootIdentity,
    Source, Stat,
};

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
    /// Origins to add or remove, in order, each with its ticket.
    origin_changes: Vec<(u64, OriginChange)>,
}

/// An origin added to or removed from a running library.
#[derive(Debug)]
pub enum OriginChange {
    /// Serve this origin too: polled every `poll` (inotify is set up at start only), and
    /// scanned at once. `reader` is how the read path opens it, when that differs (a
    /// remote origin through the chunk cache).
    Add {
        /// The origin, opened.
        origin: Arc<dyn Origin>,
        /// Its reader, if not the origin itself.
        reader: Option<Arc<dyn Origin>>,
        /// How often it is walked for changes.
        poll: Duration,
    },
    /// Stop serving the origin with this catalog key: its tracks leave the tree (the
    /// catalog keeps them, so adding it back shows them at once; `musicfs origin forget`
    /// deletes them).
    Remove {
        /// Its catalog key.
        key: OsString,
    },
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

    /// The loop starts a round: the tickets it covers (not those of origin changes it has
    /// not applied yet: their own round, right after, covers them).
    pub(crate) fn begin(&self) -> u64 {
        let mut s = self.lock();
        s.running = true;
        match s.origin_changes.first() {
            Some((ticket, _)) => ticket - 1,
            None => s.asked,
        }
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

    /// Asks the loop to add or remove an origin; wake it with
    /// [`crate::refresh::Trigger::Settings`] afterwards. Returns the ticket to
    /// [`RefreshControl::wait`] on for the change to be served.
    pub fn change_origin(&self, change: OriginChange) -> u64 {
        let mut s = self.lock();
        s.asked += 1;
        let ticket = s.asked;
        s.origin_changes.push((ticket, change));
        ticket
    }

    /// The next origin change asked for (the others stay queued, so a round begun while
    /// applying this one does not cover theirs).
    pub(crate) fn take_origin_change(&self) -> Option<OriginChange> {
        let mut s = self.lock();
        (!s.origin_changes.is_empty()).then(|| s.origin_changes.remove(0).1)
    }
}

/// What stands in the library's list for an origin removed at run time: it keeps the
/// other origins' indices (watches and timers name origins by index) and matches no
/// catalog key, so the tree leaves its tracks out. The refresh loop never scans it.
#[derive(Debug)]
pub(crate) struct Removed {
    spec: OriginSpec,
    key: OsString,
}

impl Removed {
    pub(crate) fn new(was: &dyn Origin, n: usize) -> Removed {
        let mut key = OsString::from("\0removed/");
        key.push(n.to_string());
        key.push("/");
        key.push(was.key());
        Removed {
            spec: was.spec().clone(),
            key,
        }
    }
}

impl Origin for Removed {
    fn spec(&self) -> &OriginSpec {
        &self.spec
    }

    fn key(&self) -> &std::ffi::OsStr {
        &self.key
    }

    fn list(&self, _: &Path, _: &mut dyn FnMut(Listed)) -> Result<(), OriginError> {
        Ok(())
    }

    fn stat(&self, rel: &Path) -> Result<Stat, OriginError> {
        Err(OriginError::NotAFile {
            origin: self.spec.to_string(),
            rel: rel.into(),
        })
    }

    fn open(&self, rel: &Path) -> Result<Arc<dyn Source>, OriginError> {
        Err(OriginError::NotAFile {
            origin: self.spec.to_string(),
            rel: rel.into(),
        })
    }

    fn change_detection(&self) -> ChangeDetection {
        ChangeDetection::None
    }

    fn probe(&self, _: Option<&RootIdentity>) -> Health {
        Health::Offline(Offline::Missing)
    }

    fn root_identity(&self) -> Option<RootIdentity> {
        None
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
    fn a_round_that_starts_before_an_origin_change_is_applied_does_not_cover_it() {
        let c = RefreshControl::default();
        let before = c.request();
        let change = c.change_origin(OriginChange::Remove { key: "/x".into() });
        let covers = c.begin(); // a round of something else, the change still queued
        c.end(covers, outcome(1));
        assert_eq!(c.wait(before, Duration::from_millis(10)), Some(outcome(1)));
        assert_eq!(c.wait(change, Duration::from_millis(10)), None);
        assert!(c.take_origin_change().is_some());
        assert!(c.take_origin_change().is_none());
        let covers = c.begin(); // the change's own round
        c.end(covers, outcome(2));
        assert_eq!(c.wait(change, Duration::from_millis(10)), Some(outcome(2)));
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
