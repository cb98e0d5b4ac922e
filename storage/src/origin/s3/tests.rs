use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::creds::{from_ini, resolve, Env};
use super::*;
use crate::origin::open_origin_with;
use crate::origin::remote::RemoteOptions;

const KEYS: &str = "access_key_id=AKIDTEST&secret_access_key=s3cr3t-value";

fn quick() -> OriginSettings {
    OriginSettings {
        remote: RemoteOptions {
            timeout: Duration::from_secs(5),
            attempts: 3,
            backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
            concurrency: 4,
            bandwidth: None,
        },
        ..OriginSettings::default()
    }
}

fn spec(s: &str) -> OriginSpec {
    OriginSpec::parse(s).unwrap()
}

fn s3(s: &str) -> S3Spec {
    match spec(s) {
        OriginSpec::S3(s3) => s3,
        other => panic!("{other:?}"),
    }
}

/// How the fake server answers object requests.
#[derive(Clone, Copy)]
enum Mode {
    /// Ignores `Range`: `200` with the whole object.
    Whole,
    /// `503` to everything.
    Unavailable,
    /// `403` to everything.
    Forbidden,
    /// Ignores `Range` and `If-Match`: `HEAD` answers for `body` (ETag `abc`), `GET` with
    /// the object that replaced it since (ETag `new`), `grown` bytes longer.
    Replaced { grown: usize },
}

/// A one-object S3 server on 127.0.0.1: `HEAD` and `GET` of any key answer for `body`.
/// Counts requests; each connection serves one request.
struct Fake {
    port: u16,
    requests: Arc<AtomicU64>,
}

fn fake(body: Vec<u8>, mode: Mode) -> Fake {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = Arc::new(AtomicU64::new(0));
    let counted = requests.clone();
    let body = Arc::new(body);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            counted.fetch_add(1, Ordering::SeqCst);
            let body = body.clone();
            std::thread::spawn(move || answer(conn, &body, mode));
        }
    });
    Fake { port, requests }
}

fn answer(conn: TcpStream, body: &[u8], mode: Mode) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut first = String::new();
    if reader.read_line(&mut first).is_err() {
        return;
    }
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) if line == "\r\n" => break,
            Ok(_) => {}
        }
    }
    let mut conn = conn;
    let head_tagged = |status: &str, len: usize, etag: &str| {
        format!(
            "HTTP/1.1 {status}\r\nContent-Length: {len}\r\nETag: \"{etag}\"\r\n\
             Last-Modified: Tue, 01 Dec 2026 10:00:00 GMT\r\nConnection: close\r\n\r\n"
        )
    };
    let head = |status: &str, len: usize| head_tagged(status, len, "abc");
    let _ = match mode {
        Mode::Unavailable => conn.write_all(head("503 Service Unavailable", 0).as_bytes()),
        Mode::Forbidden => conn.write_all(head("403 Forbidden", 0).as_bytes()),
        Mode::Whole if first.starts_with("HEAD") => {
            conn.write_all(head("200 OK", body.len()).as_bytes())
        }
        Mode::Whole => conn
            .write_all(head("200 OK", body.len()).as_bytes())
            .and_then(|_| conn.write_all(body)),
        Mode::Replaced { .. } if first.starts_with("HEAD") => {
            conn.write_all(head("200 OK", body.len()).as_bytes())
        }
        Mode::Replaced { grown } => {
            let newer: Vec<u8> = body
                .iter()
                .map(|b| b ^ 0x5a)
                .chain(vec![7; grown])
                .collect();
            conn.write_all(head_tagged("200 OK", newer.len(), "new").as_bytes())
                .and_then(|_| conn.write_all(&newer))
        }
    };
}

fn origin_at(port: u16) -> S3Origin {
    let spec = spec(&format!(
        "s3://bucket/lib?endpoint=http://127.0.0.1:{port}&path_style=true&{KEYS}"
    ));
    S3Origin::open(&spec, &quick()).unwrap()
}

fn object(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 253) as u8).collect()
}

#[test]
fn a_server_answering_a_ranged_get_with_the_whole_object_serves_only_the_asked_bytes() {
    let body = object(4 << 20);
    let server = fake(body.clone(), Mode::Whole);
    let origin = origin_at(server.port);
    let source = origin.open(Path::new("a/b.flac")).unwrap();
    assert_eq!(source.len(), body.len() as u64);
    for (offset, len) in [
        (0usize, 100usize),
        (1_000_000, 70_000),
        (body.len() - 128, 128),
    ] {
        let mut buf = vec![0u8; len];
        assert_eq!(source.read_at(&mut buf, offset as u64).unwrap(), len);
        assert_eq!(buf, body[offset..offset + len], "at {offset}");
    }
    let mut past = [0u8; 64];
    assert_eq!(
        source.read_at(&mut past, body.len() as u64 - 10).unwrap(),
        10
    );
    assert!(origin.ignores_range(), "the origin was warned about");
    // A read of the head stops taking the answer once it has its bytes.
    let before = origin.remote().traffic().bytes_in.load(Ordering::Relaxed);
    let mut head = [0u8; 100];
    source.read_at(&mut head, 0).unwrap();
    let taken = origin.remote().traffic().bytes_in.load(Ordering::Relaxed) - before;
    assert!(taken < body.len() as u64 / 2, "took {taken} bytes for 100");
}

#[test]
fn an_answer_of_another_version_than_the_one_opened_is_refused_not_served() {
    // A server that ignores `If-Match` (s3s-fs does) answers a read of an object replaced
    // since it was opened with the new version's bytes: of the same size (a tag edited in
    // place) or not. Neither may be served as the version opened.
    for grown in [0usize, 1] {
        let body = object(64 << 10);
        let server = fake(body.clone(), Mode::Replaced { grown });
        let origin = origin_at(server.port);
        let source = origin.open(Path::new("a/b.flac")).unwrap();
        assert_eq!(source.len(), body.len() as u64);
        let mut buf = vec![0u8; 4096];
        let err = source.read_at(&mut buf, 1000).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StaleNetworkFileHandle, "{err}");
        let said = err.to_string();
        assert!(said.contains("another version"), "{said}");
        assert!(!said.contains("s3cr3t"), "{said}");
        assert_eq!(
            buf,
            vec![0u8; 4096],
            "nothing of the other version is handed out"
        );
    }
}

#[test]
fn server_errors_are_retried_and_refusals_are_not() {
    let busy = fake(Vec::new(), Mode::Unavailable);
    let e = origin_at(busy.port).stat(Path::new("x.flac")).unwrap_err();
    assert!(matches!(e, OriginError::Io { .. }), "{e}");
    assert_eq!(
        busy.requests.load(Ordering::SeqCst),
        3,
        "every attempt was made"
    );

    let refused = fake(Vec::new(), Mode::Forbidden);
    let origin = origin_at(refused.port);
    assert!(origin.stat(Path::new("x.flac")).is_err());
    assert_eq!(refused.requests.load(Ordering::SeqCst), 1, "a 4xx is final");
    match origin.probe(None) {
        Health::Offline(Offline::Unreadable { .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_unreachable_server_probes_offline_without_panicking() {
    // A port nobody listens on: bind one, then close it.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let origin = origin_at(port);
    assert!(matches!(origin.probe(None), Health::Offline(_)));
    let e = origin.list(Path::new(""), &mut |_| {}).unwrap_err();
    assert!(!e.is_vanished(), "{e}");
}

#[test]
fn bad_endpoints_fail_at_open_with_a_clear_error_and_no_secret() {
    for endpoint in [
        "not a url",
        "ftp://host",
        "http://",
        "http://h:9000/path",
        "://x",
    ] {
        let given = format!(
            "s3://bucket?endpoint={}&{KEYS}",
            endpoint.replace(' ', "%20")
        );
        let e = S3Origin::open(&spec(&given), &quick()).unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(e, OriginError::BadSpec { .. }),
            "{endpoint}: {msg}"
        );
        assert!(msg.contains("endpoint"), "{msg}");
        assert!(!msg.contains("s3cr3t"), "{msg}");
    }
}

#[test]
fn the_origin_opens_through_the_seam_and_its_debug_shows_no_secret() {
    let origin = open_origin_with(
        &spec(&format!("s3://bucket/p?endpoint=http://127.0.0.1:1&{KEYS}")),
        &quick(),
    )
    .unwrap();
    assert_eq!(origin.change_detection(), ChangeDetection::Poll);
    assert!(origin.local_root().is_none());
    let debug = format!("{origin:?}");
    assert!(
        !debug.contains("s3cr3t") && !debug.contains("AKIDTEST"),
        "{debug}"
    );
    assert!(matches!(
        origin.stat(Path::new("../x")),
        Err(OriginError::BadRelPath { .. })
    ));
}

const INI: &str = "\
# comment
[default]
aws_access_key_id = DEFAULTID
aws_secret_access_key = defaultsecret

[profile work]
; another comment
AWS_ACCESS_KEY_ID=WORKID
aws_secret_access_key= worksecret
aws_session_token = worktoken

[broken]
aws_access_key_id = ONLYID
";

#[test]
fn credentials_files_are_read_by_profile_and_errors_show_no_secret() {
    let file = Path::new("/creds");
    let d = from_ini(INI, "default", file).unwrap();
    assert_eq!(
        (d.key_id.expose(), d.secret.expose(), d.token),
        ("DEFAULTID", "defaultsecret", None)
    );
    let w = from_ini(INI, "work", file).unwrap();
    assert_eq!(
        (w.key_id.expose(), w.secret.expose()),
        ("WORKID", "worksecret")
    );
    assert_eq!(w.token.as_ref().map(|t| t.expose()), Some("worktoken"));
    assert!(!format!("{w:?}").contains("worksecret"));
    let e = from_ini(INI, "broken", file).unwrap_err();
    assert!(e.contains("[broken]") && !e.contains("ONLYID"), "{e}");
    let e = from_ini(INI, "nope", file).unwrap_err();
    assert!(e.contains("no profile [nope]"), "{e}");
    assert!(from_ini("garbage\n[[[\n=\n", "default", file).is_err());
}

#[test]
fn credentials_come_from_the_spec_then_the_environment_then_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(home.join(".aws")).unwrap();
    std::fs::write(home.join(".aws/credentials"), INI).unwrap();
    let configured = dir.path().join("configured");
    std::fs::write(
        &configured,
        "[default]\naws_access_key_id=FILEID\naws_secret_access_key=f\n",
    )
    .unwrap();
    let no_env = |_: &str| None;
    let with_env = |k: &str| match k {
        "AWS_ACCESS_KEY_ID" => Some("ENVID".to_string()),
        "AWS_SECRET_ACCESS_KEY" => Some("envsecret".to_string()),
        "AWS_PROFILE" => Some("work".to_string()),
        _ => None,
    };
    let profile_env = |k: &str| (k == "AWS_PROFILE").then(|| "work".to_string());
    fn env<'a>(var: &'a dyn Fn(&str) -> Option<String>, home: &Path) -> Env<'a> {
        Env {
            var,
            home: Some(home.to_path_buf()),
        }
    }
    let plain = OriginSettings::default();
    let id = |r: Result<creds::Credentials, String>| r.unwrap().key_id.expose().to_owned();

    let in_spec = s3(&format!("s3://b?{KEYS}"));
    assert_eq!(
        id(resolve(&in_spec, &plain, &env(&with_env, &home))),
        "AKIDTEST"
    );
    let bare = s3("s3://b");
    assert_eq!(id(resolve(&bare, &plain, &env(&with_env, &home))), "ENVID");
    let file = OriginSettings {
        credentials_file: Some(configured.clone()),
        ..OriginSettings::default()
    };
    assert_eq!(id(resolve(&bare, &file, &env(&no_env, &home))), "FILEID");
    assert_eq!(
        id(resolve(&bare, &plain, &env(&no_env, &home))),
        "DEFAULTID"
    );
    assert_eq!(
        id(resolve(&bare, &plain, &env(&profile_env, &home))),
        "WORKID"
    );
    let chosen = OriginSettings {
        profile: Some("default".into()),
        ..OriginSettings::default()
    };
    assert_eq!(
        id(resolve(&bare, &chosen, &env(&profile_env, &home))),
        "DEFAULTID"
    );

    let nowhere = Env {
        var: &no_env,
        home: Some(dir.path().join("nobody")),
    };
    let e = resolve(&bare, &plain, &nowhere).unwrap_err();
    assert!(e.contains("no S3 credentials"), "{e}");
    let missing = OriginSettings {
        credentials_file: Some(dir.path().join("missing")),
        ..OriginSettings::default()
    };
    assert!(resolve(&bare, &missing, &env(&no_env, &home))
        .unwrap_err()
        .contains("cannot read credentials file"));
    let half = s3("s3://b?access_key_id=X");
    assert!(resolve(&half, &plain, &env(&no_env, &home)).is_err());
}

#[test]
fn range_headers_parse_only_in_the_form_the_driver_sends() {
    let p = |s: &str| super::http::parse_range_header(&::http::HeaderValue::from_str(s).unwrap());
    assert_eq!(p("bytes=0-99"), Some((0, 99)));
    assert_eq!(p("bytes=5-5"), Some((5, 5)));
    assert_eq!(p("bytes=9-5"), None);
    assert_eq!(p("bytes=-5"), None);
    assert_eq!(p("items=0-1"), None);
}
