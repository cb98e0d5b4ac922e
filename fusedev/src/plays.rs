//! The open handles of tracks, for what follows from them: plays for the access log
//! (`Recently Played`, `Most Played`) and the file events of the control plane (opened,
//! read progress, closed). A handle to a track that is closed after staying open a while
//! counts as one play. Time held open is what the mount can see for every read mode: with
//! passthrough the reads never reach the daemon, but a player holds the file open while it
//! plays it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use musicfs_core::events::{Event, Events};

/// Where plays go (the daemon's: the catalog, written off the FUSE workers).
pub trait PlayLog: Send + Sync + std::fmt::Debug {
    /// Track `track_id` was played just now. Must not block.
    fn played(&self, track_id: u64);
}

/// An open handle of a track.
#[derive(Clone, Copy)]
struct Opened {
    ino: u64,
    track_id: u64,
    at: Instant,
}

/// The open handles of tracks, the rule that makes a close a play, and the events.
#[derive(Default)]
pub(crate) struct Plays {
    log: Option<(Arc<dyn PlayLog>, Duration)>,
    events: Option<Events>,
    open: Mutex<HashMap<u64, Opened>>,
}

impl Plays {
    pub(crate) fn set_log(&mut self, log: Arc<dyn PlayLog>, after: Duration) {
        self.log = Some((log, after));
    }

    pub(crate) fn set_events(&mut self, events: Events) {
        self.events = Some(events);
    }

    /// Whether anything listens (else nothing needs tracking).
    pub(crate) fn active(&self) -> bool {
        self.log.is_some() || self.events.is_some()
    }

    /// Where events go, if anywhere.
    pub(crate) fn events(&self) -> Option<&Events> {
        self.events.as_ref()
    }

    /// Handle `fh` was opened on track `track_id` (inode `ino`).
    pub(crate) fn opened(&self, fh: u64, ino: u64, track_id: u64) {
        {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            open.insert(
                fh,
                Opened {
                    ino,
                    track_id,
                    at: Instant::now(),
                },
            );
        }
        if let Some(events) = &self.events {
            events.emit(Event::FileOpened { fh, ino, track_id });
        }
    }

    /// Handle `fh` was closed: a play if it was a track's, open long enough.
    pub(crate) fn released(&self, fh: u64) {
        let opened = {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            open.remove(&fh)
        };
        let Some(o) = opened else {
            return;
        };
        let held = o.at.elapsed();
        if let Some(events) = &self.events {
            events.emit(Event::FileClosed {
                fh,
                ino: o.ino,
                track_id: o.track_id,
                held_ms: held.as_millis() as u64,
            });
        }
        if let Some((log, after)) = &self.log {
            if held >= *after {
                log.played(o.track_id);
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

    #[derive(Default, Debug)]
    struct Sink(Mutex<Vec<Event>>);

    impl musicfs_core::events::EventSink for Sink {
        fn emit(&self, event: Event) {
            self.0.lock().unwrap().push(event);
        }
    }

    #[test]
    fn a_close_is_a_play_only_after_the_threshold_and_only_for_tracks() {
        let log = Arc::new(Log::default());
        let mut counted = Plays::default();
        counted.set_log(log.clone(), Duration::ZERO);
        counted.opened(1, 100, 42);
        counted.released(1);
        counted.released(2); // not a track's handle
        let mut never = Plays::default();
        never.set_log(log.clone(), Duration::from_secs(3600));
        never.opened(3, 100, 7);
        never.released(3);
        assert_eq!(*log.0.lock().unwrap(), [42]);
    }

    #[test]
    fn opens_and_closes_are_reported_in_order_with_their_handle() {
        let sink = Arc::new(Sink::default());
        let mut plays = Plays::default();
        plays.set_events(sink.clone());
        assert!(plays.active());
        plays.opened(5, 77, 9);
        plays.released(5);
        plays.released(5); // twice: reported once
        let got = sink.0.lock().unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[0],
            Event::FileOpened {
                fh: 5,
                ino: 77,
                track_id: 9
            }
        );
        assert!(matches!(
            got[1],
            Event::FileClosed {
                fh: 5,
                ino: 77,
                track_id: 9,
                ..
            }
        ));
    }
}
