//! Unpacking untrusted archives, decoding downloads and packing host directories.

use super::*;
use std::os::unix::fs::MetadataExt;

/// A header for `path` (written raw, so that `..` and `/` survive the builder's checks).
fn header(path: &[u8], kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..path.len()].copy_from_slice(path);
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    // Not the host user's ids (the test may run as root): never applied.
    h.set_uid(4242);
    h.set_gid(4242);
    h.set_mtime(0);
    h
}

fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, data: &[u8]) {
    let mut h = header(
        path.as_bytes(),
        tar::EntryType::Regular,
        mode,
        data.len() as u64,
    );
    h.set_cksum();
    b.append(&h, data).unwrap();
}

fn special(b: &mut tar::Builder<Vec<u8>>, path: &str, kind: tar::EntryType, link: &str) {
    let mut h = header(path.as_bytes(), kind, 0o777, 0);
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    h.set_cksum();
    b.append(&h, &[][..]).unwrap();
}

fn unpack_into(archive: Vec<u8>, dest: &Path) -> (Unpacked, Vec<String>) {
    let mut lines = Vec::new();
    let r = unpack(&archive[..], dest, &mut |l: &str| lines.push(l.to_string())).unwrap();
    (r, lines)
}

#[test]
fn malicious_archive_lands_only_inside_without_special_bits() {
    let outside = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let dest = root.path().join("copy");
    fs::create_dir(&dest).unwrap();
    let escape_target = outside.path().join("pwned");
    let abs = escape_target.display().to_string();

    let mut b = tar::Builder::new(Vec::new());
    special(&mut b, "./", tar::EntryType::Directory, "");
    file(&mut b, "ok.txt", 0o644, b"fine");
    file(&mut b, "../escape", 0o644, b"x");
    file(&mut b, "a/../../escape2", 0o644, b"x");
    file(&mut b, &abs, 0o644, b"x");
    file(&mut b, "suid", 0o4755, b"#!/bin/sh\n");
    file(&mut b, "sgid-sticky", 0o3777, b"y");
    special(&mut b, "null", tar::EntryType::Char, "");
    special(&mut b, "disk", tar::EntryType::Block, "");
    special(&mut b, "fifo", tar::EntryType::Fifo, "");
    // A symlink to /etc, then a file through it.
    special(&mut b, "etc", tar::EntryType::Symlink, "/etc");
    file(&mut b, "etc/evil.conf", 0o644, b"x");
    // A relative symlink that climbs out, then a file through it.
    let ups = "../".repeat(outside.path().components().count() + 2);
    let climb = format!(
        "{ups}{}",
        outside.path().strip_prefix("/").unwrap().display()
    );
    special(&mut b, "out", tar::EntryType::Symlink, &climb);
    file(&mut b, "out/pwned", 0o644, b"x");
    // A symlink that looks inside but climbs through another symlink.
    special(&mut b, "here", tar::EntryType::Symlink, ".");
    special(&mut b, "sneaky", tar::EntryType::Symlink, "here/..");
    // A file through a symlink to a directory inside: refused too (never through a link).
    file(&mut b, "here/x", 0o644, b"x");
    // A planted symlink, then a regular file of the same name: the file replaces the link
    // instead of writing through it.
    fs::write(&escape_target, b"original").unwrap();
    special(&mut b, "plant", tar::EntryType::Symlink, "ok.txt");
    file(&mut b, "plant", 0o644, b"replaced");
    // Hard links (to a file inside and to one outside).
    special(&mut b, "hard", tar::EntryType::Link, "ok.txt");
    special(&mut b, "hard2", tar::EntryType::Link, &abs);
    // Harmless symlinks stay.
    file(&mut b, "sub/deep/f", 0o600, b"deep");
    special(
        &mut b,
        "sub/deep/up",
        tar::EntryType::Symlink,
        "../../ok.txt",
    );
    special(&mut b, "sub/link", tar::EntryType::Symlink, "deep/f");
    special(&mut b, "sub/too-far", tar::EntryType::Symlink, "../../x");
    let archive = b.into_inner().unwrap();

    let (done, lines) = unpack_into(archive, &dest);
    let text = lines.join("\n");

    // Nothing outside.
    assert_eq!(fs::read(&escape_target).unwrap(), b"original");
    assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 1, "{text}");
    assert!(!root.path().join("escape").exists());
    assert!(!root.path().join("escape2").exists());
    assert!(!Path::new("/etc/evil.conf").exists());

    // What landed inside, exactly.
    let mut names: Vec<String> = fs::read_dir(&dest)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "etc",
            "here",
            "ok.txt",
            "out",
            "plant",
            "sgid-sticky",
            "sub",
            "suid"
        ],
        "{text}"
    );
    // The refused links left no link: the files meant to go through them landed in plain
    // directories inside the copy.
    for (dir, f) in [("etc", "evil.conf"), ("out", "pwned")] {
        assert!(fs::symlink_metadata(dest.join(dir)).unwrap().is_dir());
        assert_eq!(fs::read(dest.join(dir).join(f)).unwrap(), b"x");
    }
    assert!(!dest.join("x").exists());
    assert_eq!(fs::read(dest.join("ok.txt")).unwrap(), b"fine");
    let mode = |p: &str| fs::symlink_metadata(dest.join(p)).unwrap().mode() & 0o7777;
    assert_eq!(mode("suid"), 0o755);
    assert_eq!(mode("sgid-sticky"), 0o777);
    assert!(fs::symlink_metadata(dest.join("plant")).unwrap().is_file());
    assert_eq!(fs::read(dest.join("plant")).unwrap(), b"replaced");
    assert_eq!(fs::read(dest.join("sub/deep/up")).unwrap(), b"fine");
    assert_eq!(fs::read(dest.join("sub/link")).unwrap(), b"deep");
    assert_eq!(mode("sub/deep/f"), 0o600);
    let me = unsafe { libc::getuid() };
    assert_eq!(fs::metadata(dest.join("ok.txt")).unwrap().uid(), me);
    assert_ne!(me, 4242);

    for refused in [
        "`../escape`: its path has a `..` component",
        "`a/../../escape2`: its path has a `..` component",
        "its path is absolute",
        "`null`: device nodes are not unpacked",
        "`disk`: device nodes are not unpacked",
        "`fifo`: fifos are not unpacked",
        "`etc`: symlink to `/etc` is absolute",
        "`out`: symlink to",
        "`here/x`: its parent `here` is a symlink or file, not a directory",
        "`sneaky`: symlink to `here/..` has `..` after a name",
        "`hard`: hard links are not unpacked",
        "`hard2`: hard links are not unpacked",
        "`sub/too-far`: symlink to `../../x` leaves the copied directory",
    ] {
        assert!(text.contains(refused), "no `{refused}` in:\n{text}");
    }
    assert_eq!(
        done,
        Unpacked {
            files: 7,
            dirs: 0,
            symlinks: 4,
            refused: 13
        },
        "{text}"
    );
}

#[test]
fn directory_modes_are_masked_and_applied_last() {
    let root = tempfile::tempdir().unwrap();
    let mut b = tar::Builder::new(Vec::new());
    special(&mut b, "ro/", tar::EntryType::Directory, "");
    // `special` sets 0o777; make this one read-only with setgid.
    let mut h = header(b"ro2/", tar::EntryType::Directory, 0o2555, 0);
    h.set_cksum();
    b.append(&h, &[][..]).unwrap();
    file(&mut b, "ro2/inside", 0o644, b"z");
    let (done, lines) = unpack_into(b.into_inner().unwrap(), root.path());
    assert!(lines.is_empty(), "{lines:?}");
    assert_eq!(done.dirs, 2);
    assert_eq!(done.files, 1);
    let m = fs::metadata(root.path().join("ro2")).unwrap().mode() & 0o7777;
    assert_eq!(m, 0o755);
    assert_eq!(fs::read(root.path().join("ro2/inside")).unwrap(), b"z");
}

#[test]
fn a_host_directory_round_trips_through_tar_dir() {
    let src = tempfile::tempdir().unwrap();
    fs::create_dir(src.path().join("d")).unwrap();
    fs::write(src.path().join("d/f"), b"data").unwrap();
    fs::set_permissions(src.path().join("d/f"), fs::Permissions::from_mode(0o750)).unwrap();
    std::os::unix::fs::symlink("d/f", src.path().join("l")).unwrap();
    let dest = tempfile::tempdir().unwrap();
    let (done, lines) = unpack_into(tar_dir(src.path()).unwrap(), dest.path());
    assert!(lines.is_empty(), "{lines:?}");
    assert_eq!((done.files, done.symlinks), (1, 1));
    assert_eq!(fs::read(dest.path().join("l")).unwrap(), b"data");
    assert_eq!(
        fs::metadata(dest.path().join("d/f")).unwrap().mode() & 0o777,
        0o750
    );
}

#[test]
fn base64_lines_decode_to_the_file_in_any_split() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&data);
    for width in [76, 5, 1, 10_000_000] {
        let path = dir.path().join(format!("w{width}"));
        let mut sink = Base64Sink::new(File::create(&path).unwrap());
        for line in b64.as_bytes().chunks(width) {
            sink.line(line);
        }
        sink.finish().unwrap();
        assert_eq!(fs::read(&path).unwrap(), data, "width {width}");
    }
    let mut sink = Base64Sink::new(File::create(dir.path().join("bad")).unwrap());
    sink.line(b"not base64!");
    assert!(sink.finish().is_err());
    let mut sink = Base64Sink::new(File::create(dir.path().join("short")).unwrap());
    sink.line(b"QUJD");
    sink.line(b"QQ");
    assert!(sink.finish().unwrap_err().contains("left over"));
}

#[test]
fn symlink_rule() {
    assert!(link_stays_inside(Path::new("a/b"), 0).is_ok());
    assert!(link_stays_inside(Path::new("./a"), 0).is_ok());
    assert!(link_stays_inside(Path::new("../a"), 1).is_ok());
    assert!(link_stays_inside(Path::new("../a"), 0).is_err());
    assert!(link_stays_inside(Path::new("a/../b"), 3).is_err());
    assert!(link_stays_inside(Path::new("/a"), 3).is_err());
    assert!(link_stays_inside(Path::new(""), 3).is_err());
}
