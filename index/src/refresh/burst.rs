//! Turning triggers into refreshes: coalescing a burst of watch events into one refresh,
//! and the deadlines of periodic refreshes and of retries.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::Trigger;
use crate::scan::Extent;
use crate::watch::Change;

/// Quiet time that ends a burst of changes, and the longest a burst may delay a refresh.
const SETTLE: Duration = Duration::from_millis(150);
const MAX_DELAY: Duration = Duration::from_millis(1000);

/// Drains a burst of triggers: returns the origins to rescan, each with the directories
/// the events named (empty = every origin, whole), or `None` to stop. Waits until the burst
/// has been quiet for [`SETTLE`], at most [`MAX_DELAY`].
pub(super) fn collect_burst(
    first: Trigger,
    rx: &Receiver<Trigger>,
) -> Option<Vec<(usize, Extent)>> {
    let start = Instant::now();
    let mut all = false;
    let mut which: BTreeMap<usize, Extent> = BTreeMap::new();
    let mut add = |t: Trigger| -> bool {
        match t {
            Trigger::Stop => return false,
            Trigger::Rescan(_) | Trigger::Watch(Change::Overflow(_)) => all = true,
            // A refresh publishes from the catalog too; a republish has nothing to add.
            Trigger::Republish(_) | Trigger::Settings | Trigger::Edited { .. } => {}
            Trigger::Watch(Change::Origin(i)) => {
                which.insert(i, Extent::Whole);
            }
            Trigger::Watch(Change::Dir { origin, dir, deep }) => which
                .entry(origin)
                .or_insert_with(|| Extent::Dirs(BTreeMap::new()))
                .add_dir(dir, deep),
        }
        true
    };
    // A rescan of everything (SIGHUP, start-up) has nothing to wait for: only watch events
    // come in bursts worth letting settle.
    let settle = matches!(
        first,
        Trigger::Watch(Change::Origin(_) | Change::Dir { .. })
    );
    if !add(first) {
        return None;
    }
    if !settle {
        // `first` already asked for every origin; only a queued Stop changes the outcome.
        let stop = rx.try_iter().any(|t| t == Trigger::Stop);
        return if stop { None } else { Some(Vec::new()) };
    }
    loop {
        let left = MAX_DELAY.saturating_sub(start.elapsed());
        if left.is_zero() {
            break;
        }
        match rx.recv_timeout(SETTLE.min(left)) {
            Ok(t) => {
                if !add(t) {
                    return None;
                }
            }
            Err(RecvTimeoutError::Timeout) => break,
            Err(RecvTimeoutError::Disconnected) => return None,
        }
    }
    Some(if all {
        Vec::new()
    } else {
        which.into_iter().collect()
    })
}

/// Deadlines of the periodic refreshes (the full refresh interval and each polled origin)
/// and of one-shot retries.
pub(super) struct Timers {
    /// (origins to scan — empty for all, interval, next deadline)
    entries: Vec<(Vec<usize>, Duration, Instant)>,
    /// (origins to scan — empty for all, deadline), dropped once due.
    once: Vec<(Vec<usize>, Instant)>,
}

impl Timers {
    pub(super) fn new(refresh: Option<Duration>, polled: &[(usize, Duration)]) -> Timers {
        let now = Instant::now();
        let mut t = Timers {
            entries: refresh
                .map(|every| (Vec::new(), every, now + every))
                .into_iter()
                .collect(),
            once: Vec::new(),
        };
        t.add(polled);
        t
    }

    pub(super) fn add(&mut self, polled: &[(usize, Duration)]) {
        let now = Instant::now();
        self.entries.extend(
            polled
                .iter()
                .map(|&(i, every)| (vec![i], every, now + every)),
        );
    }

    /// Scans `origins` (empty: all) once, `after` from now; a pending retry of the same
    /// origins keeps the earlier deadline, so repeated refreshes do not pile retries up.
    pub(super) fn once(&mut self, origins: Vec<usize>, after: Duration) {
        let due = Instant::now() + after;
        match self.once.iter_mut().find(|(o, _)| *o == origins) {
            Some(pending) => pending.1 = pending.1.min(due),
            None => self.once.push((origins, due)),
        }
    }

    pub(super) fn until_next(&self) -> Duration {
        let now = Instant::now();
        self.entries
            .iter()
            .map(|e| e.2)
            .chain(self.once.iter().map(|o| o.1))
            .map(|due| due.saturating_duration_since(now))
            .min()
            .unwrap_or(Duration::from_secs(3600))
    }

    /// The origins whose deadline passed (empty = all), re-armed.
    pub(super) fn take_due(&mut self) -> Vec<usize> {
        let now = Instant::now();
        let mut which = Vec::new();
        let mut all = false;
        for (origins, every, due) in &mut self.entries {
            if *due <= now {
                *due = now + *every;
                all |= origins.is_empty();
                which.extend(origins.iter().copied());
            }
        }
        self.once.retain(|(origins, due)| {
            if *due > now {
                return true;
            }
            all |= origins.is_empty();
            which.extend(origins.iter().copied());
            false
        });
        which.sort_unstable();
        which.dedup();
        if all {
            Vec::new()
        } else {
            which
        }
    }
}

/// The wait before retry number `n` (from 0): 1 s, 2 s, 4 s, ... at most
/// [`MAX_RETRY`](super::MAX_RETRY).
pub(super) fn backoff(n: u32) -> Duration {
    Duration::from_secs(1u64 << n.min(6)).min(super::MAX_RETRY)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(origin: usize, dir: &str, deep: bool) -> Trigger {
        Trigger::Watch(Change::Dir {
            origin,
            dir: dir.as_bytes().to_vec(),
            deep,
        })
    }

    #[test]
    fn a_burst_of_changes_becomes_one_refresh_of_the_changed_origins() {
        let (tx, rx) = crossbeam_channel::unbounded();
        for i in [2, 0, 2, 2] {
            tx.send(Trigger::Watch(Change::Origin(i))).unwrap();
        }
        let which = collect_burst(Trigger::Watch(Change::Origin(0)), &rx).unwrap();
        assert_eq!(which, vec![(0, Extent::Whole), (2, Extent::Whole)]);
    }

    #[test]
    fn a_burst_of_directory_changes_becomes_one_refresh_of_those_directories() {
        let (tx, rx) = crossbeam_channel::unbounded();
        for t in [
            dir(1, "a/b", false),
            dir(0, "x", false),
            dir(1, "a/b", true),
        ] {
            tx.send(t).unwrap();
        }
        tx.send(dir(1, "c", false)).unwrap();
        let which = collect_burst(dir(0, "x", false), &rx).unwrap();
        let mut one = Extent::dir(b"a/b".to_vec(), true);
        one.add_dir(b"c".to_vec(), false);
        assert_eq!(
            which,
            vec![(0, Extent::dir(b"x".to_vec(), false)), (1, one)],
            "deep wins over shallow for the same directory"
        );
        tx.send(Trigger::Watch(Change::Origin(0))).unwrap();
        let which = collect_burst(dir(0, "x", false), &rx).unwrap();
        assert_eq!(
            which,
            vec![(0, Extent::Whole)],
            "an unknown place: whole origin"
        );
    }

    #[test]
    fn overflow_or_sighup_rescans_everything() {
        let (tx, rx) = crossbeam_channel::unbounded();
        tx.send(Trigger::Watch(Change::Overflow("q".into())))
            .unwrap();
        let which = collect_burst(dir(1, "d", false), &rx).unwrap();
        assert!(which.is_empty());
        assert_eq!(collect_burst(Trigger::Rescan("SIGHUP"), &rx), Some(vec![]));
    }

    #[test]
    fn stop_ends_the_burst() {
        let (tx, rx) = crossbeam_channel::unbounded();
        tx.send(Trigger::Stop).unwrap();
        assert_eq!(collect_burst(Trigger::Watch(Change::Origin(0)), &rx), None);
    }

    #[test]
    fn due_timers_name_their_origins_and_rearm() {
        let mut t = Timers::new(None, &[(1, Duration::ZERO), (3, Duration::from_secs(999))]);
        assert_eq!(t.take_due(), vec![1]);
        assert!(t.until_next() <= Duration::from_secs(999));
    }

    #[test]
    fn retries_of_the_same_origins_do_not_pile_up() {
        let mut t = Timers::new(None, &[]);
        t.once(vec![1], Duration::from_secs(30));
        t.once(vec![1], Duration::from_secs(60));
        t.once(vec![1], Duration::ZERO);
        assert_eq!(t.take_due(), vec![1]);
        assert_eq!(
            t.until_next(),
            Duration::from_secs(3600),
            "one retry was pending"
        );
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(30), super::super::MAX_RETRY);
    }

    #[test]
    fn a_retry_fires_once_for_its_origins() {
        let mut t = Timers::new(Some(Duration::from_secs(3600)), &[]);
        t.once(vec![2, 0], Duration::ZERO);
        assert_eq!(t.until_next(), Duration::ZERO);
        assert_eq!(t.take_due(), vec![0, 2]);
        assert!(
            t.until_next() > Duration::from_secs(3000),
            "fired once only"
        );
        t.once(Vec::new(), Duration::ZERO);
        assert_eq!(t.take_due(), Vec::<usize>::new(), "empty = every origin");
    }
}
