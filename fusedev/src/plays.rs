//! Counting plays for the access log (`Recently Played`, `Most Played`): a handle to a
//! track that is closed after staying open a while counts as one play. Time held open is
//! what the mount can see for every read mode: with passthrough the reads never reach the
//! daemon, but a player holds the file open while it plays it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where plays go (the daemon's: the catalog, written off the FUSE workers).
pub trait PlayLog: Send + Sync + std::fmt::Debug {
    /// Track `track_id` was played just now. Must not block.
    fn played(&self, track_id: u64);
}

/// The open handles of tracks, and the rule that makes a close a play.
pub(crate) struct Plays {
    log: Arc<dyn PlayLog>,
    after: Duration,
    open: Mutex<HashMap<u64, (u64, Instant)>>,
}

impl Plays {
    pub(crate) fn new(log: Arc<dyn PlayLog>, after: Duration) -> Plays {
        Plays {
            log,
            after,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Handle `fh` was opened on track `track_id`.
    pub(crate) fn opened(&self, fh: u64, track_id: u64) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.insert(fh, (track_id, Instant::now()));
    }

    /// Handle `fh` was closed: a play if it was a track's, open long enough.
    pub(crate) fn released(&self, fh: u64) {
        let opened = {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            open.remove(&fh)
        };
        if let Some((track_id, at)) = opened {
            if at.elapsed() >= self.after {
                self.log.played(track_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default, Debug)]
    struct Log(Mutex<Vec<u64>>);

    impl PlayLog for Log {
        fn played(&self, track_id: u64) {
            self.0.lock().unwrap().push(track_id);
        }
    }

    #[test]
    fn a_close_is_a_play_only_after_the_threshold_and_only_for_tracks() {
        let log = Arc::new(Log::default());
        let counted = Plays::new(log.clone(), Duration::ZERO);
        counted.opened(1, 42);
        counted.released(1);
        counted.released(2); // not a track's handle
        let never = Plays::new(log.clone(), Duration::from_secs(3600));
        never.opened(3, 7);
        never.released(3);
        assert_eq!(*log.0.lock().unwrap(), [42]);
    }
}
