use proptest::prelude::*;

use super::*;

fn parse(s: &str) -> OriginSpec {
    OriginSpec::parse(s).unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
}

fn error(s: &str) -> String {
    match OriginSpec::parse(s) {
        Ok(spec) => panic!("{s:?} should not parse, got {spec:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn an_absolute_path_is_a_local_origin_taken_verbatim_even_with_colons() {
    for p in ["/music", "/mnt/a:b/c", "/x/s3://y", "/we%20ird?#@x", "/"] {
        assert_eq!(parse(p), OriginSpec::local(p), "{p}");
        assert_eq!(parse(p).to_string(), p);
    }
}

#[test]
fn a_file_url_is_a_local_origin_with_escapes_decoded() {
    assert_eq!(parse("file:///music"), OriginSpec::local("/music"));
    assert_eq!(
        parse("FILE://localhost/a%20b:c"),
        OriginSpec::local("/a b:c")
    );
    let raw = parse("file:///caf%E9");
    let OriginSpec::Local(l) = raw else {
        panic!("not local")
    };
    assert_eq!(l.root.as_os_str().as_bytes(), b"/caf\xe9");
    assert!(error("file://nas/music").contains("localhost"));
    assert!(error("file:///a?b").contains("%3F"));
    assert!(error("file:///a%zz").contains("%XX"));
    assert!(error("file:///a%00b").contains("NUL"));
}

#[test]
fn relative_paths_and_unknown_schemes_are_refused_with_typed_errors() {
    for rel in ["music", "./music", "a:b", "s3:/bucket", "foo/bar://x"] {
        assert!(
            matches!(
                OriginSpec::parse(rel),
                Err(OriginError::RelativePath { .. })
            ),
            "{rel}"
        );
    }
    match OriginSpec::parse("http://example.com/x") {
        Err(OriginError::UnknownScheme { scheme, .. }) => assert_eq!(scheme, "http"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        OriginSpec::parse(""),
        Err(OriginError::BadSpec { .. })
    ));
}

#[test]
fn an_s3_spec_is_parsed_into_bucket_prefix_and_parameters() {
    let spec = parse(
        "s3://lib/music/flac/?endpoint=http://127.0.0.1:9000&region=eu-1&path_style=true\
         &access_key_id=AK&secret_access_key=s%26cret&session_token=tok",
    );
    let OriginSpec::S3(s3) = &spec else {
        panic!("{spec:?}")
    };
    assert_eq!(
        (s3.bucket.as_str(), s3.prefix.as_str()),
        ("lib", "music/flac")
    );
    assert_eq!(s3.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
    assert_eq!(s3.region.as_deref(), Some("eu-1"));
    assert!(s3.path_style);
    assert_eq!(s3.access_key_id.as_ref().map(Secret::expose), Some("AK"));
    assert_eq!(
        s3.secret_access_key.as_ref().map(Secret::expose),
        Some("s&cret")
    );
    assert_eq!(s3.session_token.as_ref().map(Secret::expose), Some("tok"));
    assert_eq!(parse("s3://lib"), parse("s3://lib/"));
    assert!(error("s3://lib?colour=red").contains("colour"));
    assert!(error("s3://lib?region=a&region=b").contains("twice"));
    assert!(error("s3://ak:sk@lib").contains("query"));
    assert!(error("s3://").contains("bucket"));
}

#[test]
fn sftp_and_smb_specs_are_parsed_into_server_and_path() {
    let spec = parse("sftp://bob@nas.local:2222/srv/music");
    let OriginSpec::Sftp(sftp) = &spec else {
        panic!("{spec:?}")
    };
    assert_eq!(sftp.server.user.as_deref(), Some("bob"));
    assert_eq!(sftp.server.host, "nas.local");
    assert_eq!(sftp.server.port, Some(2222));
    assert_eq!(sftp.path, "/srv/music");
    let OriginSpec::Sftp(bare) = parse("sftp://[fe80::1]") else {
        panic!("not sftp")
    };
    assert_eq!(
        (bare.server.host.as_str(), bare.path.as_str()),
        ("[fe80::1]", "/")
    );

    let spec = parse("smb://alice:pw@10.0.0.2/Media/Music/Lossless/");
    let OriginSpec::Smb(smb) = &spec else {
        panic!("{spec:?}")
    };
    assert_eq!(smb.server.password.as_ref().map(Secret::expose), Some("pw"));
    assert_eq!(smb.share, "Media");
    assert_eq!(smb.path, "Music/Lossless");
    assert!(error("smb://host").contains("share"));
    assert!(error("sftp://host:0/x").contains("port"));
    assert!(error("sftp://host:99999/x").contains("port"));
    assert!(error("sftp://host:+22/x").contains("port"));
    assert!(error("sftp://ho st/x").contains("host"));
    assert!(error("sftp://host/x?a=b").contains("parameters"));
    assert!(error("sftp://host/x#frag").contains("fragment"));
}

#[test]
fn display_debug_key_and_errors_never_show_credentials() {
    let specs = [
        "sftp://bob:hunter2@nas/x",
        "smb://alice:hunter2@nas/share",
        "s3://b/p?access_key_id=hunter2&secret_access_key=hunter2&session_token=hunter2",
    ];
    for s in specs {
        let spec = parse(s);
        for shown in [
            spec.to_string(),
            format!("{spec:?}"),
            spec.key().to_string_lossy().into_owned(),
        ] {
            assert!(!shown.contains("hunter2"), "{s} shown as {shown}");
        }
    }
    assert_eq!(parse(specs[0]).to_string(), "sftp://bob@nas/x");
    assert_eq!(parse(specs[2]).to_string(), "s3://b/p");
    // Malformed specs are shown redacted in errors, whatever broke them.
    for s in [
        "sftp://bob:hunter2@nas:badport/x",
        "sftp://bob:hun/ter2@nas/x",
        "s3://b?secret_access_key=hunter2&bogus=1",
        "bob:hunter2@nas:/music",
        "gopher://bob:hunter2@nas/",
    ] {
        let e = error(s);
        assert!(!e.contains("hun") && !e.contains("ter2"), "{s} -> {e}");
    }
    let OriginSpec::Sftp(sftp) = parse(specs[0]) else {
        panic!("not sftp")
    };
    assert_eq!(
        sftp.server.password.map(|p| p.expose().to_owned()),
        Some("hunter2".into())
    );
}

#[test]
fn the_key_is_the_canonical_local_root_or_the_remote_spec_without_credentials_or_settings() {
    let t = tempfile::tempdir().unwrap();
    let real = t.path().canonicalize().unwrap().join("real");
    std::fs::create_dir(&real).unwrap();
    std::os::unix::fs::symlink(&real, t.path().join("link")).unwrap();
    let via_link = OriginSpec::local(t.path().join("link/."));
    assert_eq!(via_link.key(), real.as_os_str());
    let missing = OriginSpec::local("/no/such//dir/./here/");
    assert_eq!(missing.key(), OsStr::new("/no/such/dir/here"));
    assert_eq!(
        parse("s3://b/p/?region=x&path_style=true&endpoint=http://m:9000").key(),
        OsStr::new("s3://b/p?endpoint=http://m:9000")
    );
    assert_eq!(
        parse("sftp://u:pw@h:22/x").key(),
        OsStr::new("sftp://u@h:22/x")
    );
}

#[test]
fn a_non_utf8_absolute_path_parses_from_an_os_string() {
    let raw = OsStr::from_bytes(b"/m\xffusic:1");
    assert_eq!(
        OriginSpec::parse_os(raw).unwrap(),
        OriginSpec::local(PathBuf::from(raw))
    );
    assert!(OriginSpec::parse_os(OsStr::from_bytes(b"s3://\xff")).is_err());
    assert_eq!(
        OriginSpec::parse_os(OsStr::new("sftp://h/x")).unwrap(),
        parse("sftp://h/x")
    );
}

/// Text for a spec component: anything, including the characters that need escaping.
fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 %?#&=:@/\\[\\]é_.-]{1,12}"
}

fn server() -> impl Strategy<Value = Server> {
    let host = prop_oneof![
        "[a-z0-9][a-z0-9.-]{0,10}".prop_map(String::from),
        "\\[[0-9a-f:]{1,8}\\]".prop_map(String::from),
    ];
    (
        proptest::option::of(text()),
        host,
        proptest::option::of(1u16..),
    )
        .prop_map(|(user, host, port)| Server {
            user,
            password: None,
            host,
            port,
        })
}

/// Specs without credentials: what display then parse must give back unchanged.
fn spec() -> impl Strategy<Value = OriginSpec> {
    let segment = "[a-zA-Z0-9 %?#&=:@é_.-]{1,8}";
    let path = proptest::collection::vec(segment, 0..4).prop_map(|v| v.join("/"));
    prop_oneof![
        "/[a-zA-Z0-9 %?#&=:@/é_.-]{0,20}".prop_map(OriginSpec::local),
        (
            "[a-z0-9][a-z0-9._-]{0,10}",
            path.clone(),
            proptest::option::of(text()),
            proptest::option::of(text()),
            any::<bool>()
        )
            .prop_map(|(bucket, prefix, endpoint, region, path_style)| {
                OriginSpec::S3(S3Spec {
                    bucket,
                    prefix,
                    endpoint,
                    region,
                    path_style,
                    access_key_id: None,
                    secret_access_key: None,
                    session_token: None,
                })
            }),
        (server(), path.clone()).prop_map(|(server, path)| OriginSpec::Sftp(SftpSpec {
            server,
            path: format!("/{path}"),
        })),
        (server(), segment, path).prop_map(|(server, share, path)| OriginSpec::Smb(SmbSpec {
            server,
            share,
            path,
        })),
    ]
}

proptest! {
    #[test]
    fn parsing_arbitrary_text_never_panics(s in ".{0,64}") {
        let _ = OriginSpec::parse(&s);
    }

    #[test]
    fn parsing_url_like_text_never_panics(
        scheme in "(s3|sftp|smb|file|x)",
        rest in "[a-z0-9%:@/?#&=\\[\\]]{0,40}",
    ) {
        let _ = OriginSpec::parse(&format!("{scheme}://{rest}"));
    }

    #[test]
    fn a_displayed_spec_parses_back_to_itself(spec in spec()) {
        let shown = spec.to_string();
        prop_assert_eq!(OriginSpec::parse(&shown).map_err(|e| e.to_string()), Ok(spec), "{}", shown);
    }

    #[test]
    fn credentials_are_dropped_by_display_and_nothing_else(
        spec in spec(),
        password in "[a-zA-Z0-9]{1,12}",
    ) {
        let mut with = spec.clone();
        match &mut with {
            OriginSpec::S3(s3) => s3.secret_access_key = Some(Secret(password.clone())),
            OriginSpec::Sftp(SftpSpec { server, .. }) | OriginSpec::Smb(SmbSpec { server, .. }) => {
                server.user.get_or_insert_with(|| "u".into());
                server.password = Some(Secret(password.clone()));
            }
            OriginSpec::Local(_) | OriginSpec::Plugin(_) => {}
        }
        let back = OriginSpec::parse(&with.to_string()).map_err(|e| e.to_string());
        let mut want = with.clone();
        match &mut want {
            OriginSpec::S3(s3) => s3.secret_access_key = None,
            OriginSpec::Sftp(SftpSpec { server, .. }) | OriginSpec::Smb(SmbSpec { server, .. }) => {
                server.password = None;
            }
            OriginSpec::Local(_) | OriginSpec::Plugin(_) => {}
        }
        prop_assert_eq!(back, Ok(want));
    }
}

#[test]
fn plugin_specs_name_the_plugin_and_keep_the_rest_for_it() {
    let spec = OriginSpec::parse("plugin://tar//srv/music.tar").unwrap();
    let OriginSpec::Plugin(p) = &spec else {
        panic!("{spec:?}");
    };
    assert_eq!(
        (p.name.as_str(), p.root.as_str()),
        ("tar", "/srv/music.tar")
    );
    assert_eq!(spec.to_string(), "plugin://tar//srv/music.tar");
    assert_eq!(OriginSpec::parse(&spec.to_string()).unwrap(), spec);
    assert_eq!(spec.scheme(), "plugin");
    assert!(OriginSpec::parse("plugin:///x").is_err());
    // Without a plugin host, opening one says why.
    let err = crate::origin::open_origin(&spec).unwrap_err().to_string();
    assert!(err.contains("plugins loaded"), "{err}");
}
