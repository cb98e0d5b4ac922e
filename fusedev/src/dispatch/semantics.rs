//! docs/SEMANTICS.md is checked: its *checked* tables are parsed, each case is sent to the
//! dispatcher, and the answer must be the one the table gives. A case the code knows but
//! the doc lacks (or the other way round) fails too, so the page cannot drift.

use std::collections::BTreeMap;
use std::time::Duration;

use super::tests::{cstr, Rig};
use super::*;
use crate::fs::FsConfig;
use musicfs_core::snapshot::ROOT_INO;

const DOC: &str = include_str!("../../../docs/SEMANTICS.md");

/// The rows of the table under `heading`: cells split on `|`, trimmed.
fn table(heading: &str) -> Vec<Vec<String>> {
    let start = DOC
        .find(heading)
        .unwrap_or_else(|| panic!("docs/SEMANTICS.md has no heading {heading:?}"));
    DOC[start..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2) // header and separator
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

fn errno_name(e: i32) -> String {
    let name = match e {
        libc::ENOENT => "ENOENT",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::ESTALE => "ESTALE",
        libc::EINVAL => "EINVAL",
        libc::EROFS => "EROFS",
        libc::EBADF => "EBADF",
        libc::ENOSYS => "ENOSYS",
        libc::EACCES => "EACCES",
        libc::ENODATA => "ENODATA",
        libc::ERANGE => "ERANGE",
        libc::EIO => "EIO",
        other => return format!("errno {other}"),
    };
    name.to_string()
}

/// What the dispatcher answered, in the doc's words; `ok` names a successful reply.
fn said(o: Outcome, ok: &str) -> String {
    match o {
        Outcome::Error(e) => errno_name(e),
        Outcome::Silent => "no reply".into(),
        Outcome::Reply(_) => ok.into(),
    }
}

fn access(r: &mut Rig, ino: u64, mask: i32) -> Outcome {
    let a = abi::AccessIn {
        mask: mask as u32,
        padding: 0,
    };
    r.call(abi::FUSE_ACCESS, ino, a.as_bytes())
}

fn getxattr(r: &mut Rig, ino: u64, name: &str, size: u32) -> Outcome {
    let mut body = abi::GetxattrIn { size, padding: 0 }.as_bytes().to_vec();
    body.extend_from_slice(&cstr(name));
    r.call(abi::FUSE_GETXATTR, ino, &body)
}

fn opcode_of(name: &str) -> Option<u32> {
    Some(match name {
        "setattr" => abi::FUSE_SETATTR,
        "symlink" => abi::FUSE_SYMLINK,
        "mknod" => abi::FUSE_MKNOD,
        "mkdir" => abi::FUSE_MKDIR,
        "unlink" => abi::FUSE_UNLINK,
        "rmdir" => abi::FUSE_RMDIR,
        "rename" => abi::FUSE_RENAME,
        "rename2" => abi::FUSE_RENAME2,
        "link" => abi::FUSE_LINK,
        "write" => abi::FUSE_WRITE,
        "setxattr" => abi::FUSE_SETXATTR,
        "removexattr" => abi::FUSE_REMOVEXATTR,
        "create" => abi::FUSE_CREATE,
        "tmpfile" => abi::FUSE_TMPFILE,
        "fallocate" => abi::FUSE_FALLOCATE,
        "copy_file_range" => abi::FUSE_COPY_FILE_RANGE,
        _ => return None,
    })
}

/// Runs one documented case; `None` when the code does not know the case.
fn run_case(op: &str, case: &str) -> Option<String> {
    let mut r = Rig::standard();
    let file = r.ino("Ann/First/01 - One.flac");
    let dir = r.ino("Ann/First");
    let lookup = |r: &mut Rig, parent, name: &[u8]| -> String {
        let o = r.call(abi::FUSE_LOOKUP, parent, name);
        match o {
            Outcome::Reply(_) if r.reply::<abi::EntryOut>(&o).nodeid == 0 => {
                "negative entry".into()
            }
            o => said(o, "entry"),
        }
    };
    let answer = match (op, case) {
        ("lookup", "existing name") => lookup(&mut r, dir, &cstr("02 - Two.flac")),
        ("lookup", "missing name") => lookup(&mut r, dir, &cstr("nope")),
        ("lookup", "missing name, negative timeout 0") => {
            let mut r = Rig::new(FsConfig {
                negative_timeout: Duration::ZERO,
                ..FsConfig::default()
            });
            lookup(&mut r, ROOT_INO, &cstr("nope"))
        }
        ("lookup", "parent is a file") => lookup(&mut r, file, &cstr("x")),
        ("lookup", "parent not in the snapshot") => lookup(&mut r, 1 << 40, &cstr("x")),
        ("lookup", "name without NUL") => lookup(&mut r, dir, b"x"),
        ("getattr", "file") => said(r.call(abi::FUSE_GETATTR, file, &[0; 16]), "attributes"),
        ("getattr", "inode not in the snapshot") => {
            said(r.call(abi::FUSE_GETATTR, 1 << 40, &[0; 16]), "attributes")
        }
        ("open", "file, read-only") => said(r.open(file, libc::O_RDONLY), "handle"),
        ("open", "O_WRONLY") => said(r.open(file, libc::O_WRONLY), "handle"),
        ("open", "O_RDWR") => said(r.open(file, libc::O_RDWR), "handle"),
        ("open", "O_TRUNC") => said(r.open(file, libc::O_TRUNC), "handle"),
        ("open", "O_APPEND") => said(r.open(file, libc::O_APPEND), "handle"),
        ("open", "directory") => said(r.open(dir, libc::O_RDONLY), "handle"),
        ("open", "source gone from its origin") => {
            std::fs::remove_file(r.lib.source(1)).ok()?;
            said(r.open(file, libc::O_RDONLY), "handle")
        }
        ("open", "origin offline") => {
            let health = r.d.model().config().origin_health.clone();
            health.set_offline(0, "emptied");
            said(r.open(file, libc::O_RDONLY), "handle")
        }
        ("read", "open handle") => {
            let o = r.open(file, libc::O_RDONLY);
            let fh = r.reply::<abi::OpenOut>(&o).fh;
            said(r.read(file, fh, 0, 100, abi::FUSE_READ), "bytes")
        }
        ("read", "unknown handle") => said(r.read(file, 77, 0, 100, abi::FUSE_READ), "bytes"),
        ("release", "open handle") => {
            let o = r.open(file, libc::O_RDONLY);
            let fh = r.reply::<abi::OpenOut>(&o).fh;
            said(r.release(file, fh, abi::FUSE_RELEASE), "success")
        }
        ("release", "unknown handle") => said(r.release(file, 77, abi::FUSE_RELEASE), "success"),
        ("opendir", "directory") => said(r.call(abi::FUSE_OPENDIR, dir, &[0; 8]), "handle"),
        ("opendir", "file") => said(r.call(abi::FUSE_OPENDIR, file, &[0; 8]), "handle"),
        ("readdir", "unknown handle") => {
            said(r.read(dir, 77, 0, 4096, abi::FUSE_READDIR), "entries")
        }
        ("readdirplus", "unknown handle") => {
            said(r.read(dir, 77, 0, 4096, abi::FUSE_READDIRPLUS), "entries")
        }
        ("releasedir", "unknown handle") => {
            said(r.release(dir, 77, abi::FUSE_RELEASEDIR), "success")
        }
        ("flush", "any file") => said(r.call(abi::FUSE_FLUSH, file, &[0; 24]), "success"),
        ("fsync", "any file") => said(r.call(abi::FUSE_FSYNC, file, &[0; 16]), "success"),
        ("forget", "any inode") => said(r.call(abi::FUSE_FORGET, file, &[1; 8]), "success"),
        ("batch_forget", "any inodes") => {
            said(r.call(abi::FUSE_BATCH_FORGET, 0, &[0; 8]), "success")
        }
        ("interrupt", "any request") => said(r.call(abi::FUSE_INTERRUPT, 0, &[0; 8]), "success"),
        ("access", "R_OK on a file") => said(access(&mut r, file, libc::R_OK), "success"),
        ("access", "W_OK") => said(access(&mut r, dir, libc::W_OK), "success"),
        ("access", "X_OK on a file") => said(access(&mut r, file, libc::X_OK), "success"),
        ("access", "X_OK on a directory") => said(access(&mut r, dir, libc::X_OK), "success"),
        ("readlink", "any node") => said(r.call(abi::FUSE_READLINK, file, &[]), "target"),
        ("getxattr", "absent tag") => {
            said(getxattr(&mut r, file, "user.musicfs.genre", 64), "value")
        }
        ("getxattr", "other namespace") => {
            said(getxattr(&mut r, file, "trusted.musicfs.title", 64), "value")
        }
        ("getxattr", "buffer too short") => {
            said(getxattr(&mut r, file, "user.musicfs.title", 1), "value")
        }
        ("statfs", "root") => said(r.call(abi::FUSE_STATFS, ROOT_INO, &[]), "statistics"),
        ("unknown opcode", "any") => said(r.call(4242, ROOT_INO, &[0; 64]), "success"),
        (ops, "any") if ops.contains(',') => {
            let mut answers: Vec<String> = Vec::new();
            for name in ops.split(',').map(str::trim) {
                let code = opcode_of(name)?;
                answers.push(said(r.call(code, file, &[0; 64]), "success"));
            }
            answers.dedup();
            if answers.len() != 1 {
                return Some(format!("mixed answers {answers:?}"));
            }
            answers.pop()?
        }
        _ => return None,
    };
    Some(answer)
}

#[test]
fn every_documented_answer_is_what_the_dispatcher_gives() {
    let rows = table("### Answers per case (*checked*)");
    assert!(
        rows.len() > 30,
        "the answers table was not found or is short"
    );
    let mut wrong = Vec::new();
    for row in &rows {
        let [op, case, answer] = row.as_slice() else {
            panic!("row {row:?} does not have three cells");
        };
        match run_case(op, case) {
            None => wrong.push(format!("{op} / {case}: no test knows this case")),
            Some(got) if got != *answer => wrong.push(format!(
                "{op} / {case}: doc says {answer}, dispatcher gives {got}"
            )),
            Some(_) => {}
        }
    }
    assert!(
        wrong.is_empty(),
        "docs/SEMANTICS.md drifted:\n{}",
        wrong.join("\n")
    );
}

/// Every write opcode the dispatcher refuses is listed in the doc's EROFS row.
#[test]
fn the_erofs_row_names_every_write_opcode() {
    let rows = table("### Answers per case (*checked*)");
    let listed: Vec<String> = rows
        .iter()
        .filter(|r| r.get(2).map(String::as_str) == Some("EROFS") && r[0].contains(','))
        .flat_map(|r| {
            r[0].split(',')
                .map(|s| s.trim().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    for op in [
        "setattr",
        "symlink",
        "mknod",
        "mkdir",
        "unlink",
        "rmdir",
        "rename",
        "rename2",
        "link",
        "write",
        "setxattr",
        "removexattr",
        "create",
        "tmpfile",
        "fallocate",
        "copy_file_range",
    ] {
        assert!(
            listed.iter().any(|l| l == op),
            "{op} missing from the EROFS row"
        );
    }
}

/// The modes a lookup shows for a file recorded 0640 (owner 7, group 8), its directory,
/// a file whose mode was never recorded, and the same 0640 file under `--umask 077`.
fn shown_modes() -> Vec<(&'static str, u32)> {
    use crate::fs::testlib::Library;
    use musicfs_core::meta::{Perm, TrackMeta};
    let perm = Some(Perm {
        mode: 0o640,
        uid: 7,
        gid: 8,
    });
    let mut lib = Library::new();
    lib.add_with_perm("A/B/known", 10, TrackMeta::default(), perm);
    lib.add("C/D/unknown", 10, TrackMeta::default());
    let mode_of = |cfg: FsConfig, path: &str| {
        let model = FsModel::new(lib.shared(), None, cfg);
        let ino = path.split('/').fold(ROOT_INO, |dir, name| {
            model.lookup(dir, name.as_bytes()).expect("lookup").ino
        });
        model.getattr(ino).expect("getattr").mode() & 0o7777
    };
    vec![
        (
            "file mode, origin 0640",
            mode_of(FsConfig::default(), "A/B/known"),
        ),
        (
            "directory mode, over a 0640 file",
            mode_of(FsConfig::default(), "A/B"),
        ),
        (
            "file mode, origin mode unknown",
            mode_of(FsConfig::default(), "C/D/unknown"),
        ),
        (
            "file mode, origin 0640, umask 077",
            mode_of(
                FsConfig {
                    umask: 0o077,
                    ..FsConfig::default()
                },
                "A/B/known",
            ),
        ),
    ]
}

#[test]
fn documented_replies_and_timeouts_are_what_the_dispatcher_sends() {
    let mut r = Rig::new(FsConfig::default());
    let dir = r.ino("Ann/First");
    let o = r.lookup(dir, "01 - One.flac");
    let file: abi::EntryOut = r.reply(&o);
    let o = r.lookup(ROOT_INO, "Ann");
    let folder: abi::EntryOut = r.reply(&o);
    let o = r.lookup(ROOT_INO, "nope");
    let negative: abi::EntryOut = r.reply(&o);
    let o = r.open(file.nodeid, libc::O_RDONLY);
    let open: abi::OpenOut = r.reply(&o);
    let o = r.call(abi::FUSE_OPENDIR, dir, &[0; 8]);
    let opendir: abi::OpenOut = r.reply(&o);
    let Outcome::Reply(n) = r.read(dir, opendir.fh, 0, 4096, abi::FUSE_READDIRPLUS) else {
        panic!("readdirplus")
    };
    let dot = abi::EntryOut::read_from(&r.out[..n]).expect("entry of .");
    let dotdot_at = std::mem::size_of::<abi::EntryOut>() + abi::dirent_size(1);
    let dotdot = abi::EntryOut::read_from(&r.out[dotdot_at..n]).expect("entry of ..");
    let flags = |f: u32| {
        let mut names = Vec::new();
        for (bit, name) in [
            (abi::FOPEN_CACHE_DIR, "FOPEN_CACHE_DIR"),
            (abi::FOPEN_KEEP_CACHE, "FOPEN_KEEP_CACHE"),
            (abi::FOPEN_PASSTHROUGH, "FOPEN_PASSTHROUGH"),
        ] {
            if f & bit != 0 {
                names.push(name);
            }
        }
        names.join(", ")
    };
    let secs = |s: u64, ns: u32| format!("{} s", Duration::new(s, ns).as_secs_f64());
    let content_version = file.generation != 0 && file.generation & 1 == 1;
    let mut got: BTreeMap<&str, String> = BTreeMap::new();
    got.insert(
        "entry timeout",
        secs(file.entry_valid, file.entry_valid_nsec),
    );
    got.insert(
        "attribute timeout",
        secs(file.attr_valid, file.attr_valid_nsec),
    );
    got.insert(
        "negative timeout",
        secs(negative.entry_valid, negative.entry_valid_nsec),
    );
    got.insert("open flags", flags(open.open_flags));
    got.insert("opendir flags", flags(opendir.open_flags));
    got.insert("directory generation", folder.generation.to_string());
    got.insert(
        "file generation",
        if content_version {
            "content version".into()
        } else {
            file.generation.to_string()
        },
    );
    got.insert("file st_blksize", file.attr.blksize.to_string());
    got.insert(
        "readdirplus entry of `.` and `..`",
        format!("nodeid {}", dot.nodeid.max(dotdot.nodeid)),
    );
    let modes = shown_modes();
    for (what, mode) in &modes {
        got.insert(what, format!("{mode:04o}"));
    }
    let rows = table("### Replies and timeouts (*checked*)");
    let documented: BTreeMap<String, String> = rows
        .iter()
        .map(|r| (r[0].clone(), r.get(1).cloned().unwrap_or_default()))
        .collect();
    let got: BTreeMap<String, String> = got.into_iter().map(|(k, v)| (k.into(), v)).collect();
    assert_eq!(documented, got, "docs/SEMANTICS.md replies table drifted");
}
