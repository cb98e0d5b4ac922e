#![cfg(feature = "e2e")]
//! An SFTP origin end to end: the fixture library (plus a ~30 MB FLAC) served by a real
//! OpenSSH sshd, scanned with `musicfs scan` from a config whose `[[origin]]` table gives
//! the key and known_hosts, mounted with `musicfsd`, every track's bytes compared with the
//! source, the served directory untouched, and a server whose key known_hosts does not hold
//! refused. The scan goes through a counting TCP proxy, so the bytes it moved are measured
//! on the wire (SSH overhead included) and printed against the library's size.
//!
//! Without sshd these tests fail, saying what to install: they never pass silently.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use musicfs_tests::fixtures::build_fixture_library;
use musicfs_tests::harness::{
    audio_md5, binary, checksum_tree, encode_flac, musicfs_tree_long, xxh3_file, MountOptions,
    MountedFs,
};
use musicfs_tests::servers::sftp::SftpServer;

const BIG: &str = "big/Big Artist/Big Album/01 - Big Noise.flac";

/// A TCP proxy from a port of its own to 127.0.0.1:`to`, counting the bytes each way.
struct CountingProxy {
    port: u16,
    down: Arc<AtomicU64>,
    up: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    live: Arc<Mutex<Vec<TcpStream>>>,
}

impl CountingProxy {
    fn start(to: u16) -> io::Result<CountingProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let (down, up) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let stop = Arc::new(AtomicBool::new(false));
        let live = Arc::new(Mutex::new(Vec::new()));
        let accept = {
            let (down, up, stop, live) = (down.clone(), up.clone(), stop.clone(), live.clone());
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(client) = client else { continue };
                    let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else {
                        continue;
                    };
                    pipe(&server, &client, down.clone());
                    pipe(&client, &server, up.clone());
                    if let (Ok(mut live), Ok(c)) = (live.lock(), client.try_clone()) {
                        live.push(c);
                    }
                }
            })
        };
        Ok(CountingProxy {
            port,
            down,
            up,
            stop,
            accept: Some(accept),
            live,
        })
    }

    /// Resets every connection made so far (a network failure, as the client sees it).
    fn cut(&self) {
        if let Ok(mut live) = self.live.lock() {
            for s in live.drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }

    /// Bytes from the server to the client so far.
    fn down(&self) -> u64 {
        self.down.load(Ordering::SeqCst)
    }

    fn up(&self) -> u64 {
        self.up.load(Ordering::SeqCst)
    }
}

/// Copies `from` to `to` on a thread, adding what passed to `count`.
fn pipe(from: &TcpStream, to: &TcpStream, count: Arc<AtomicU64>) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    count.fetch_add(n as u64, Ordering::SeqCst);
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn start_server() -> SftpServer {
    SftpServer::start().unwrap_or_else(|e| panic!("the SFTP tests need sshd: {e:#}"))
}

/// A config file with one SFTP origin.
fn write_config(path: &Path, spec: &str, identity: &Path, known_hosts: &Path) {
    let toml = format!(
        "[[origin]]\npath = '{spec}'\nidentity_file = '{}'\nknown_hosts = '{}'\ntimeout_secs = 30\n",
        identity.display(),
        known_hosts.display()
    );
    fs::write(path, toml).expect("writing the config");
}

fn musicfs_scan_config(config: &Path, state: &Path) -> Output {
    Command::new(binary("musicfs").expect("musicfs binary"))
        .arg("--config")
        .arg(config)
        .arg("--state-dir")
        .arg(state)
        .arg("scan")
        .output()
        .expect("running musicfs scan")
}

/// Sizes of the audio files under `root` (what a library "weighs").
fn library_bytes(root: &Path, tracks: &[PathBuf]) -> u64 {
    tracks
        .iter()
        .map(|t| fs::metadata(root.join(t)).map_or(0, |m| m.len()))
        .sum()
}

/// Every virtual file of the tree with the path (relative to the origin) it is served from.
fn served_tracks(state: &Path, spec: &str) -> BTreeMap<PathBuf, PathBuf> {
    let prefix = format!("{spec}/");
    musicfs_tree_long(state)
        .expect("musicfs tree --long")
        .into_iter()
        .filter_map(|e| {
            let source = e.source?;
            let rel = source
                .as_os_str()
                .as_bytes()
                .strip_prefix(prefix.as_bytes())?;
            Some((e.path, PathBuf::from(std::ffi::OsStr::from_bytes(rel))))
        })
        .collect()
}

#[test]
fn sftp_origin_scans_mounts_and_serves_every_byte_unchanged() {
    let server = start_server();
    let work = tempfile::tempdir().unwrap();
    let fixture = build_fixture_library(work.path()).expect("building the fixture library");
    let root = fixture.root.clone();
    let big = root.join(BIG);
    fs::create_dir_all(big.parent().unwrap()).unwrap();
    // White noise does not compress: ~88 KB per second of mono FLAC.
    encode_flac(
        &big,
        240.0,
        7,
        true,
        &[
            ("ARTIST", "Big Artist"),
            ("ALBUM", "Big Album"),
            ("TITLE", "Big Noise"),
            ("TRACKNUMBER", "1"),
        ],
    )
    .expect("encoding the big FLAC");
    let mut tracks: Vec<PathBuf> = fixture.tracks.iter().map(|t| t.rel_path.clone()).collect();
    tracks.push(PathBuf::from(BIG));
    let before = checksum_tree(&root).unwrap();
    let weight = library_bytes(&root, &tracks);
    assert!(
        fs::metadata(&big).unwrap().len() > 25_000_000,
        "the big FLAC is too small"
    );

    let proxy = CountingProxy::start(server.port()).unwrap();
    let known_hosts = server.dir().join("known_hosts_proxy");
    fs::write(
        &known_hosts,
        server.known_hosts_line(proxy.port, "host_key.pub").unwrap(),
    )
    .unwrap();
    let spec = server.spec(proxy.port, &root);
    let config = work.path().join("musicfs.toml");
    write_config(&config, &spec, &server.identity_file(), &known_hosts);
    let state = work.path().join("state");
    fs::create_dir(&state).unwrap();

    let started = Instant::now();
    let scan = musicfs_scan_config(&config, &state);
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&scan.stderr);
    assert!(
        scan.status.success(),
        "scan failed:\n{stderr}\nsshd log:\n{}",
        server.log()
    );
    let (down, up) = (proxy.down(), proxy.up());
    let payload = stderr
        .lines()
        .find(|l| l.contains("sftp origin traffic"))
        .and_then(|l| l.split("bytes_in=").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok());
    println!(
        "sftp scan: {} tracks, library {weight} bytes; wire {down} bytes down + {up} up \
         (ratio {:.4}), file payload read {payload:?} bytes, in {:.2}s",
        tracks.len(),
        down as f64 / weight as f64,
        took.as_secs_f64()
    );
    assert!(
        down < weight / 4,
        "the scan moved {down} bytes for a {weight}-byte library: it reads whole files"
    );

    let served = served_tracks(&state, &spec);
    // A track may also be an alternate of one shown (the fixture's symlink is the track it
    // points to).
    let prefix = format!("{spec}/");
    let alternates: Vec<PathBuf> = musicfs_tree_long(&state)
        .expect("musicfs tree --long")
        .into_iter()
        .flat_map(|e| e.alternates)
        .filter_map(|(source, _)| {
            let rel = source
                .as_os_str()
                .as_bytes()
                .strip_prefix(prefix.as_bytes())?;
            Some(PathBuf::from(std::ffi::OsStr::from_bytes(rel)))
        })
        .collect();
    for t in &tracks {
        assert!(
            served.values().any(|rel| rel == t) || alternates.contains(t),
            "{} is not in the tree; scan stderr:\n{stderr}",
            t.display()
        );
    }

    let mut opts = MountOptions::new(Vec::<PathBuf>::new());
    opts.config = Some(config.clone());
    opts.state_dir = Some(state.clone());
    let fs_ = MountedFs::start(opts).unwrap_or_else(|e| panic!("mounting: {e:#}"));
    for (virt, rel) in &served {
        let through = fs_.path(virt);
        let got =
            xxh3_file(&through).unwrap_or_else(|e| panic!("{e:#}\ndaemon log:\n{}", fs_.log()));
        let want = xxh3_file(&root.join(rel)).unwrap();
        assert_eq!(
            got,
            want,
            "{} differs from {}",
            through.display(),
            rel.display()
        );
    }
    for rel in [BIG, "mp3/id3v23.mp3", "m4a/itunes.m4a", "ogg/vorbis.ogg"] {
        let Some((virt, _)) = served.iter().find(|(_, r)| r.as_path() == Path::new(rel)) else {
            // The fixture's names are its own: compare whatever of each format is there.
            continue;
        };
        assert_eq!(
            audio_md5(&fs_.path(virt)).unwrap(),
            audio_md5(&root.join(rel)).unwrap(),
            "decoded audio of {rel}"
        );
    }
    for ext in ["flac", "mp3", "m4a", "ogg"] {
        let (virt, rel) = served
            .iter()
            .find(|(_, r)| r.extension().is_some_and(|e| e == ext))
            .unwrap_or_else(|| panic!("no .{ext} track served"));
        assert_eq!(
            audio_md5(&fs_.path(virt)).unwrap(),
            audio_md5(&root.join(rel)).unwrap(),
            "decoded audio of {}",
            rel.display()
        );
    }
    let (virt, _) = served.iter().next().unwrap();
    let write = OpenOptions::new().write(true).open(fs_.path(virt));
    assert_eq!(write.unwrap_err().raw_os_error(), Some(libc::EROFS));
    let create = fs::File::create(fs_.mountpoint().join("new.flac"));
    assert_eq!(create.unwrap_err().raw_os_error(), Some(libc::EROFS));
    drop(fs_);

    assert_eq!(
        checksum_tree(&root).unwrap(),
        before,
        "the served directory changed"
    );
}

#[test]
fn sftp_origin_whose_host_key_is_not_known_is_refused() {
    let server = start_server();
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("music");
    fs::create_dir(&root).unwrap();
    encode_flac(&root.join("a.flac"), 1.0, 440, false, &[("TITLE", "A")]).unwrap();
    let fingerprint = server.host_key_fingerprint().unwrap();
    let spec = server.spec(server.port(), &root);
    let host = format!("[127.0.0.1]:{}", server.port());

    // known_hosts has another key for the host: changed. An empty one: unknown.
    let changed = work.path().join("known_hosts_changed");
    fs::write(
        &changed,
        server
            .known_hosts_line(server.port(), "other_host_key.pub")
            .unwrap(),
    )
    .unwrap();
    let empty = work.path().join("known_hosts_empty");
    fs::write(&empty, "").unwrap();
    for (known_hosts, says) in [(&changed, "CHANGED"), (&empty, "is not in")] {
        let config = work.path().join("musicfs.toml");
        write_config(&config, &spec, &server.identity_file(), known_hosts);
        let state = tempfile::tempdir().unwrap();
        let scan = musicfs_scan_config(&config, state.path());
        let stderr = String::from_utf8_lossy(&scan.stderr);
        assert!(
            !scan.status.success(),
            "a scan with an unknown host key succeeded:\n{stderr}"
        );
        for needle in [host.as_str(), fingerprint.as_str(), says] {
            assert!(
                stderr.contains(needle),
                "the refusal does not say {needle:?}:\n{stderr}"
            );
        }
        if let Some(line) = stderr.lines().find(|l| l.contains(&fingerprint)) {
            println!("refused: {line}");
        }
        let tree = musicfs_tree_long(state.path()).unwrap_or_default();
        assert!(
            tree.iter().all(|e| e.source.is_none()),
            "tracks of a refused origin are in the tree: {tree:?}"
        );
    }
}

#[test]
fn sftp_origin_reconnects_after_the_connection_is_cut() {
    use musicfs_storage::origin::{open_origin_with, OriginSettings, OriginSpec};
    let server = start_server();
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("music");
    fs::create_dir(&root).unwrap();
    let file = root.join("noise.flac");
    encode_flac(&file, 5.0, 3, true, &[("TITLE", "Noise")]).unwrap();
    let want = fs::read(&file).unwrap();
    let proxy = CountingProxy::start(server.port()).unwrap();
    let known_hosts = work.path().join("known_hosts");
    fs::write(
        &known_hosts,
        server.known_hosts_line(proxy.port, "host_key.pub").unwrap(),
    )
    .unwrap();
    let spec = OriginSpec::parse(&server.spec(proxy.port, &root)).unwrap();
    let settings = OriginSettings {
        identity_file: Some(server.identity_file()),
        known_hosts: Some(known_hosts),
        ..OriginSettings::default()
    };
    let origin = open_origin_with(&spec, &settings).unwrap();
    let source = origin.open(Path::new("noise.flac")).unwrap();
    assert_eq!(source.len(), want.len() as u64);
    let mut buf = vec![0u8; 300_000];
    let n = source.read_at(&mut buf, 1000).unwrap();
    assert_eq!(&buf[..n], &want[1000..1000 + n]);

    proxy.cut();
    // The same source reads on: a new connection, the file opened again on it.
    let n = source.read_at(&mut buf, 5000).unwrap();
    assert_eq!(n, buf.len().min(want.len() - 5000));
    assert_eq!(&buf[..n], &want[5000..5000 + n]);
    let tail = source.read_at(&mut buf, want.len() as u64 - 10).unwrap();
    assert_eq!(
        &buf[..tail],
        &want[want.len() - 10..],
        "a read across the end is short"
    );
    let shown = format!("{origin:?}");
    assert!(shown.contains("connections: 2"), "{shown}");
    let listed = std::cell::Cell::new(0);
    origin
        .list(Path::new(""), &mut |_| listed.set(listed.get() + 1))
        .unwrap();
    assert_eq!(listed.get(), 1);
}
