//! Test helpers: local origins, plain or forced through the generic (listing) code paths.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;

use musicfs_storage::origin::{
    open_origin, ChangeDetection, Health, Listed, Origin, OriginError, OriginSpec, RootIdentity,
    Source, Stat,
};

/// The local origin rooted at `root`.
pub(crate) fn local(root: &Path) -> Arc<dyn Origin> {
    open_origin(&OriginSpec::local(root)).expect("open a local origin")
}

/// The local origin rooted at `root`, hiding that it is local: no local root, no local
/// driver, so the scan walks it with `Origin::list` and reads it with `Origin::open`, as
/// it will a remote origin.
pub(crate) fn listed(root: &Path) -> Arc<dyn Origin> {
    Arc::new(Opaque(local(root)))
}

/// Opens an origin at a root.
pub(crate) type Opener = fn(&Path) -> Arc<dyn Origin>;

/// Both kinds, for tests that must hold for either walk.
pub(crate) const KINDS: [(&str, Opener); 2] = [("local", local), ("listed", listed)];

#[derive(Debug)]
struct Opaque(Arc<dyn Origin>);

impl Origin for Opaque {
    fn spec(&self) -> &OriginSpec {
        self.0.spec()
    }

    fn key(&self) -> &OsStr {
        self.0.key()
    }

    fn list(&self, dir: &Path, each: &mut dyn FnMut(Listed)) -> Result<(), OriginError> {
        self.0.list(dir, each)
    }

    fn stat(&self, rel: &Path) -> Result<Stat, OriginError> {
        self.0.stat(rel)
    }

    fn open(&self, rel: &Path) -> Result<Arc<dyn Source>, OriginError> {
        self.0.open(rel)
    }

    fn change_detection(&self) -> ChangeDetection {
        ChangeDetection::Poll
    }

    fn probe(&self, recorded: Option<&RootIdentity>) -> Health {
        self.0.probe(recorded)
    }

    fn root_identity(&self) -> Option<RootIdentity> {
        self.0.root_identity()
    }
}
