#![cfg(feature = "e2e")]
//! Owners and modes follow the origin, and the kernel enforces them: a track only its
//! owner may read stays unreadable to another local user through an `allow_other` mount,
//! and `--uid`/`--gid`/`--umask` change what is shown and enforced.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;

use std::time::Duration;

use musicfs_tests::harness::{encode_flac, wait_for_log_line, MountOptions, MountedFs, RunAs};
use tempfile::TempDir;

/// An origin holding `Secret.flac` (root's, 0600) and `Open.flac` (1234:4321, 0644).
struct Origin {
    _dir: TempDir,
    root: PathBuf,
}

fn origin() -> Origin {
    let dir = TempDir::new().expect("tempdir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod tempdir");
    let root = dir.path().join("origin");
    fs::create_dir(&root).expect("origin");
    for (name, freq, mode, owner) in [
        ("Secret", 440, 0o600, None),
        ("Open", 660, 0o644, Some((1234, 4321))),
    ] {
        let path = root.join(format!("{name}.flac"));
        encode_flac(&path, 0.5, freq, false, &[("title", name)]).expect("encode_flac");
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).expect("chown");
        }
    }
    Origin { _dir: dir, root }
}

/// Mounts `origin` flat (`$title.$format`) for every user, with `extra` flags.
fn mount(origin: &Origin, extra: &[&str]) -> MountedFs {
    let mut opts = MountOptions::new([origin.root.clone()]);
    opts.template = Some("$title.$format".into());
    opts.extra_args = ["--allow-other"]
        .iter()
        .chain(extra)
        .map(Into::into)
        .collect();
    MountedFs::start(opts).expect("mount")
}

/// `cat path` as nobody:nogroup with no supplementary groups.
fn cat_as_nobody(path: &Path) -> Output {
    RunAs::nobody()
        .command("cat")
        .arg(path)
        .env("LC_ALL", "C")
        .output()
        .expect("run setpriv cat")
}

fn mode_owner(path: &Path) -> (u32, u32, u32) {
    let md = fs::metadata(path).expect("stat");
    (md.mode() & 0o7777, md.uid(), md.gid())
}

fn super_options(mountpoint: &Path) -> String {
    let table = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let mp = mountpoint.to_str().expect("utf-8 mountpoint");
    table
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(mp))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn another_user_reads_a_world_readable_track_but_gets_eacces_on_an_owner_only_one() {
    let origin = origin();
    let fs = mount(&origin, &[]);
    let (secret, open) = (fs.path("Secret.flac"), fs.path("Open.flac"));

    assert!(
        super_options(fs.mountpoint()).contains("default_permissions"),
        "the kernel must check modes: {}",
        super_options(fs.mountpoint())
    );
    assert_eq!(
        mode_owner(&secret),
        (0o400, 0, 0),
        "0600 root → r-------- root"
    );
    assert_eq!(mode_owner(&open), (0o444, 1234, 4321), "0644 → r--r--r--");
    // Its mirror under /.prefetch carries the same owner and mode: the kernel lets through
    // there exactly who may look in the tree.
    let mirror = fs
        .mountpoint()
        .join(".prefetch")
        .join(secret.strip_prefix(fs.mountpoint()).expect("in the mount"));
    assert_eq!(mode_owner(&mirror), (0o400, 0, 0), "the /.prefetch mirror");
    let (root_mode, root_uid, _) = mode_owner(fs.mountpoint());
    assert_eq!(root_mode, 0o555, "read bits of the files below, as r-x");
    assert_eq!(root_uid, 0, "mixed owners: the daemon's user");

    let denied = cat_as_nobody(&secret);
    assert!(!denied.status.success(), "nobody read a 0600 root track");
    let err = String::from_utf8_lossy(&denied.stderr);
    assert!(err.contains("Permission denied"), "{err}");
    let allowed = cat_as_nobody(&open);
    assert!(
        allowed.status.success(),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
    assert_eq!(
        allowed.stdout,
        fs::read(origin.root.join("Open.flac")).expect("source")
    );
    assert_eq!(
        fs::read(&secret).expect("the owner (root) reads it"),
        fs::read(origin.root.join("Secret.flac")).expect("source")
    );
}

#[test]
fn uid_gid_and_umask_flags_override_what_stat_shows_and_the_kernel_enforces() {
    let origin = origin();
    let fs = mount(
        &origin,
        &["--uid", "65534", "--gid", "65534", "--umask", "027"],
    );
    let (secret, open) = (fs.path("Secret.flac"), fs.path("Open.flac"));

    assert_eq!(mode_owner(&secret), (0o400, 65534, 65534));
    assert_eq!(
        mode_owner(&open),
        (0o440, 65534, 65534),
        "umask 027 clears o+r"
    );
    assert_eq!(mode_owner(fs.mountpoint()), (0o550, 65534, 65534));

    let now_owner = cat_as_nobody(&secret);
    assert!(
        now_owner.status.success(),
        "--uid 65534 makes nobody the owner: {}",
        String::from_utf8_lossy(&now_owner.stderr)
    );
    assert_eq!(
        now_owner.stdout,
        fs::read(origin.root.join("Secret.flac")).expect("source")
    );
}

#[test]
fn a_umask_022_leaves_read_only_modes_as_the_origin_gives_them() {
    let origin = origin();
    let fs = mount(&origin, &["--umask", "022"]);

    assert_eq!(mode_owner(&fs.path("Secret.flac")).0, 0o400);
    assert_eq!(mode_owner(&fs.path("Open.flac")).0, 0o444);
    let denied = cat_as_nobody(&fs.path("Secret.flac"));
    assert!(!denied.status.success(), "nobody read a 0600 root track");
}

#[test]
fn a_chmod_of_a_source_shows_and_is_enforced_without_a_restart() {
    let origin = origin();
    let state = TempDir::new().expect("state dir");
    let mut opts = MountOptions::live(&origin.root, state.path());
    opts.template = Some("$title.$format".into());
    opts.extra_args.push("--allow-other".into());
    let timeout = Duration::from_secs(20);
    let (fs, _) = MountedFs::start_watching(opts, timeout).expect("mount");
    let open = fs.path("Open.flac");
    assert_eq!(mode_owner(&open).0, 0o444);
    assert_eq!(mode_owner(fs.mountpoint()).0, 0o555);
    assert!(cat_as_nobody(&open).status.success());
    let from = fs::metadata(fs.log_path()).expect("log").len() as usize;

    fs::set_permissions(
        origin.root.join("Open.flac"),
        fs::Permissions::from_mode(0o600),
    )
    .expect("chmod 0600");
    wait_for_log_line(fs.log_path(), from, &["swapped in the new tree"], timeout)
        .expect("the chmod is republished");

    assert_eq!(mode_owner(&open), (0o400, 1234, 4321), "long attr timeouts");
    assert_eq!(
        mode_owner(fs.mountpoint()).0,
        0o500,
        "no file below is readable by group or others any more"
    );
    let denied = cat_as_nobody(&open);
    assert!(
        !denied.status.success(),
        "nobody read a track chmod'ed to 0600"
    );
    let err = String::from_utf8_lossy(&denied.stderr);
    assert!(err.contains("Permission denied"), "{err}");
}
