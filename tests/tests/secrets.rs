#![cfg(feature = "e2e")]
//! Credentials never leak (docs/SECURITY.md): a daemon serving an S3 bucket with its secret
//! key set is run through reads, every CLI view, a failing origin, the metrics endpoint and
//! every extended attribute; then the secret is looked for in its command line, its log,
//! everything those printed, the access log and every file of the state dir. It must be in
//! none of them.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use musicfs_tests::harness::{musicfs_cmd, walk_files, MountedFs};
use musicfs_tests::remote::{generate, S3Library, Track};
use musicfs_tests::servers::s3::SECRET_KEY;

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn http_get(port: u16, path: &str) -> Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(text)
}

/// Every extended attribute of `path`, names and values.
fn all_xattrs(path: &std::path::Path) -> Result<Vec<u8>> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let mut names = vec![0u8; 64 << 10];
    // SAFETY: NUL-terminated path and a buffer of the length given.
    let n = unsafe { libc::listxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    ensure!(n >= 0, "listxattr: {}", std::io::Error::last_os_error());
    let mut out = names[..n as usize].to_vec();
    for name in names[..n as usize]
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
    {
        let cname = std::ffi::CString::new(name)?;
        let mut value = vec![0u8; 64 << 10];
        // SAFETY: as above.
        let got = unsafe {
            libc::getxattr(
                c.as_ptr(),
                cname.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        if got > 0 {
            out.extend_from_slice(&value[..got as usize]);
        }
    }
    Ok(out)
}

#[test]
fn the_secret_key_is_in_no_output_log_xattr_or_state_file() -> Result<()> {
    let lib = S3Library::start(|dir| {
        generate(
            dir,
            &[Track {
                rel: "Band/Record/one.flac",
                input: "sine=frequency=440:sample_rate=44100:duration=2",
                codec: &["-c:a", "flac"],
                title: "One",
            }],
        )
    })?;
    let http = free_port()?;
    let config = lib.work_dir().join("musicfs.toml");
    fs::write(&config, format!("metrics_listen = \"127.0.0.1:{http}\"\n"))?;
    let mut opts = lib.mount_options();
    opts.config = Some(config.clone());
    opts.log_level = Some("debug,tantivy=warn".into());
    let (mount, _) = MountedFs::start_watching(opts, Duration::from_secs(60))?;

    let mut seen: Vec<(String, Vec<u8>)> = Vec::new();
    for f in walk_files(mount.mountpoint())? {
        fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
        seen.push((format!("xattrs of {}", f.display()), all_xattrs(&f)?));
    }
    seen.push(("xattrs of the root".into(), all_xattrs(mount.mountpoint())?));
    let state = lib.state.clone();
    let config_arg = config.to_str().unwrap_or_default().to_string();
    let bad_origin = "s3://nobucket/x?endpoint=http://127.0.0.1:1&region=us-east-1&path_style=true";
    for args in [
        vec!["status"],
        vec!["status", "--json"],
        vec!["config", "show"],
        vec!["cache", "stats"],
        vec!["search", "One"],
        vec!["tree"],
        vec!["origin", "add", bad_origin],
        vec!["refresh"],
    ] {
        let mut all = args.clone();
        all.extend(["--config", &config_arg]);
        let out = musicfs_cmd(&state, &all)?;
        seen.push((format!("musicfs {args:?} stdout"), out.stdout));
        seen.push((format!("musicfs {args:?} stderr"), out.stderr));
    }
    seen.push(("/metrics".into(), http_get(http, "/metrics")?.into_bytes()));
    seen.push(("/health".into(), http_get(http, "/health")?.into_bytes()));
    let pid = mount.pid();
    seen.push((
        "the daemon's command line".into(),
        fs::read(format!("/proc/{pid}/cmdline"))?,
    ));
    seen.push(("the daemon's log".into(), mount.log().into_bytes()));
    drop(mount);
    for f in walk_files(&state)? {
        seen.push((format!("state file {}", f.display()), fs::read(&f)?));
    }
    ensure!(seen.len() > 20, "too little looked at: {}", seen.len());
    // The views are real ones: the origin's spec is in them, the failing origin's error too.
    let text = |what: &str| -> String {
        seen.iter()
            .filter(|(w, _)| w.contains(what))
            .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
            .collect()
    };
    for (what, want) in [
        ("[\"status\"] stdout", "s3://"),
        ("\"add\"", "nobucket"),
        ("/metrics", "musicfs_"),
        ("daemon's log", "s3://"),
    ] {
        ensure!(
            text(what).contains(want),
            "{what} lacks {want:?}: {}",
            text(what)
        );
    }
    let secret = SECRET_KEY.as_bytes();
    for (what, bytes) in &seen {
        ensure!(
            !bytes.windows(secret.len()).any(|w| w == secret),
            "the secret key is in {what}"
        );
    }
    println!("secret looked for in {} places: absent", seen.len());
    Ok(())
}
