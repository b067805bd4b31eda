use super::*;
use std::io::Cursor;
use std::os::unix::fs::MetadataExt;

/// Writes raw tar entries: `tar::Builder` refuses exactly the names these tests need.
#[derive(Default)]
struct Tar(Vec<u8>);

impl Tar {
    fn header(mut self, name: &str, ty: u8, declared: u64, link: &str) -> Self {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(EntryType::new(ty));
        h.set_size(declared);
        h.set_mode(0o644);
        h.set_cksum();
        self.0.extend_from_slice(h.as_bytes());
        self
    }
    fn entry(self, name: &str, ty: u8, data: &[u8], link: &str) -> Self {
        let mut tar = self.header(name, ty, data.len() as u64, link);
        tar.0.extend_from_slice(data);
        tar.0.resize(tar.0.len().next_multiple_of(512), 0);
        tar
    }
    fn file(self, name: &str, data: &[u8]) -> Self {
        self.entry(name, b'0', data, "")
    }
    fn done(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&[0; 1024]);
        self.0
    }
}

/// A tempdir holding `dest` and a `sentinel` sibling that hostile archives aim at.
struct Sandbox(tempfile::TempDir);

impl Sandbox {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join("dest")).unwrap();
        fs::create_dir(root.path().join("sentinel")).unwrap();
        fs::write(root.path().join("sentinel/keep"), "keep").unwrap();
        Sandbox(root)
    }
    fn root(&self) -> String {
        self.0.path().display().to_string()
    }
    fn dest(&self) -> PathBuf {
        self.0.path().join("dest")
    }
    /// Expects a rejection whose full error chain mentions every needle, then checks that
    /// nothing outside `dest` changed and nothing but files and directories exists at all.
    fn rejects(&self, stream: impl Read, limits: &Limits, needles: &[&str]) {
        let err = unpack(stream, &self.dest(), limits).expect_err("hostile archive accepted");
        let text = crate::error::chain(&err);
        let raw_control = text.chars().any(|c| c.is_control() && c != '\n');
        assert!(!raw_control, "unescaped guest bytes in {text:?}");
        for needle in needles {
            assert!(text.contains(needle), "{text:?} lacks {needle:?}");
        }
        let mut outside = Vec::new();
        walk(self.0.path(), self.0.path(), &mut outside);
        outside.retain(|p| p != "dest" && !p.starts_with("dest/"));
        outside.sort();
        assert_eq!(outside, ["sentinel", "sentinel/keep"], "for {text}");
        let keep = self.0.path().join("sentinel/keep");
        assert_eq!(fs::read_to_string(&keep).unwrap(), "keep");
        assert_eq!(
            fs::metadata(&keep).unwrap().nlink(),
            1,
            "sentinel was hard-linked"
        );
    }
}

fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let ty = fs::symlink_metadata(&path).unwrap().file_type();
        assert!(ty.is_file() || ty.is_dir(), "special file {path:?} created");
        out.push(path.strip_prefix(base).unwrap().display().to_string());
        if ty.is_dir() {
            walk(&path, base, out);
        }
    }
}

/// The limits a project gets when `[limits]` says nothing.
fn defaults() -> Limits {
    Limits::from(&crate::config::Limits::default())
}

fn small(max_file_bytes: u64, max_total_bytes: u64, max_entries: u64) -> Limits {
    Limits {
        max_file_bytes,
        max_total_bytes,
        max_entries,
    }
}

#[test]
fn hostile_names_and_types_are_rejected() {
    // Each case builds its archive from the sandbox root, and lists what the error must say.
    // Links aim at the sentinel rather than /etc so that a regression cannot harm the host.
    type Case = (fn(&str) -> Tar, &'static [&'static str]);
    #[rustfmt::skip]
    let cases: &[Case] = &[
        (|_| Tar::default().file("../evil", b"x"), &[r#""../evil""#, "`..`"]),
        (|r| Tar::default().file(&format!("{r}/evil"), b"x"), &["/evil\"", "absolute"]),
        (|_| Tar::default().file("a/../../evil", b"x"), &[r#""a/../../evil""#, "`..`"]),
        (|r| Tar::default().entry("link", b'2', b"", &format!("{r}/sentinel")).file("link/keep", b"pwned"),
            &[r#""link""#, "a symlink to", "/sentinel\""]),
        (|_| Tar::default().entry("up", b'2', b"", "../../x"), &[r#""up""#, r#"symlink to "../../x""#]),
        (|_| Tar::default().entry("pw", b'1', b"", "/etc/passwd"), &[r#""pw""#, "a hard link"]),
        (|r| Tar::default().entry("keep", b'1', b"", &format!("{r}/sentinel/keep")), &[r#""keep""#, "hard link"]),
        (|_| Tar::default().entry("tty", b'3', b"", ""), &[r#""tty""#, "a character device"]),
        (|_| Tar::default().entry("sda", b'4', b"", ""), &[r#""sda""#, "a block device"]),
        (|_| Tar::default().entry("pipe", b'6', b"", ""), &[r#""pipe""#, "a FIFO"]),
        (|_| Tar::default().entry("glob", b'g', b"", ""), &[r#""glob""#, "type 'g'"]),
        (|_| Tar::default().entry("././@LongLink", b'L', b"../../evil\0", "").file("innocent", b"x"),
            &[r#""../../evil""#, "`..`"]),
        (|_| Tar::default().entry("PaxHeader", b'x', b"16 path=../evil\n", "").file("innocent", b"x"),
            &[r#""../evil""#, "`..`"]),
        // PAX `size` overrides the header's: the limit must see the PAX value.
        (|_| Tar::default().entry("PaxHeader", b'x', b"22 size=1099511627776\n", "").file("innocent", b"x"),
            &[r#""innocent""#, "declares 1099511627776 bytes"]),
        (|_| Tar::default().file("", b"x"), &["empty path"]),
        (|_| Tar::default().file("evil\x1b[2J", b"x"), &[r#""evil\u{1b}[2J""#, "control"]),
        (|_| Tar::default().file("x/", b""), &[r#""x/""#, "must name a file"]),
        (|_| Tar::default().entry("d/", b'5', b"abc", ""), &[r#""d/""#, "3 bytes of data"]),
        (|_| Tar::default().file("a", b"1").file("a", b"2"), &[r#""a""#, "duplicate"]),
        (|_| Tar::default().entry("d/", b'5', b"", "").file("d", b"x"), &[r#""d""#, "already exists"]),
        (|_| Tar::default().file("f", b"x").entry("f/", b'5', b"", ""), &[r#""f/""#, "not a directory"]),
        (|_| Tar::default().file("f", b"x").file("f/x", b"x"), &[r#""f/x""#, "not a directory"]),
    ];
    for (build, needles) in cases {
        let sandbox = Sandbox::new();
        let tar = build(&sandbox.root()).done();
        sandbox.rejects(&tar[..], &defaults(), needles);
    }
}

#[test]
fn size_and_count_limits_abort_the_unpack() {
    let tar = Tar::default()
        .file("a", b"123456")
        .file("b", b"123456")
        .done();
    Sandbox::new().rejects(
        &tar[..],
        &small(100, 10, 100),
        &[r#""b""#, "limit of 10 bytes"],
    );
    let tar = Tar::default().file("a", b"123456").done();
    Sandbox::new().rejects(
        &tar[..],
        &small(5, 100, 100),
        &[r#""a""#, "per-file limit of 5"],
    );
    let tar = Tar::default()
        .entry("d/", b'5', b"", "")
        .file("d/1", b"")
        .file("d/2", b"")
        .done();
    Sandbox::new().rejects(
        &tar[..],
        &small(100, 100, 2),
        &[r#""d/2""#, "more than 2 entries"],
    );
}

#[test]
fn endless_streams_stop_at_a_limit() {
    let limits = small(1 << 20, 1 << 20, 10);
    // A huge declared size is refused before a byte of data is read.
    let head = Tar::default().header("big", b'0', 1 << 40, "").0;
    Sandbox::new().rejects(
        Cursor::new(head).chain(io::repeat(0)),
        &limits,
        &["per-file limit"],
    );
    // A huge GNU long name would be buffered in memory by the tar crate: the budget stops it.
    let head = Tar::default().header("././@LongLink", b'L', 1 << 40, "").0;
    Sandbox::new().rejects(
        Cursor::new(head).chain(io::repeat(0)),
        &limits,
        &["tar headers"],
    );
    // An allowed size followed by endless zeros: exactly that much is written, and the
    // zeros after it read as the end-of-archive marker.
    let sandbox = Sandbox::new();
    let head = Tar::default().header("zeros", b'0', 1 << 20, "").0;
    let got = unpack(
        Cursor::new(head).chain(io::repeat(0)),
        &sandbox.dest(),
        &limits,
    )
    .unwrap();
    assert_eq!(got.files.len(), 1);
    assert_eq!(got.files[0].size, 1 << 20);
    assert_eq!(
        got.files[0].sha256,
        hex::encode(Sha256::digest(vec![0u8; 1 << 20]))
    );
}

#[test]
fn lying_or_truncated_streams_are_rejected() {
    // Bytes beyond the declared size never reach the file; they are parsed as a header.
    let sandbox = Sandbox::new();
    let mut tar = Tar::default().file("small", b"hello").0;
    tar.extend_from_slice(b"\x1b]0;pwned\x07");
    tar.extend_from_slice(&[b'A'; 1024]);
    sandbox.rejects(
        &tar[..],
        &defaults(),
        &[r#"after "small""#, "cksum", r#"\u{1b}]0;pwned\u{7}"#],
    );
    assert_eq!(fs::read(sandbox.dest().join("small")).unwrap(), b"hello");

    let mut tar = Tar::default().header("cut", b'0', 1000, "").0;
    tar.extend_from_slice(&[b'x'; 10]);
    Sandbox::new().rejects(
        &tar[..],
        &defaults(),
        &[r#""cut""#, "after 10 of 1000 bytes"],
    );
    let tar = Tar::default().file("a", b"x").0;
    Sandbox::new().rejects(&tar[..], &defaults(), &["end-of-archive", r#"after "a""#]);
}

#[test]
fn unpacks_files_with_normalised_modes_and_digests() {
    let long = format!("out/{}.txt", "x".repeat(120));
    let mut builder = tar::Builder::new(Tar::default().entry("./", b'5', b"", "").0);
    for (path, mode, data) in [
        ("out/", 0o700, &b""[..]),
        ("out/bin/tool", 0o4750, b"#!/bin/sh\n"),
        ("out/readme.txt", 0o600, b"hello\n"),
        (&long, 0o644, b"long"),
        ("implicit/dir/f", 0o644, b"f"),
        ("empty", 0o777, b""),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(if path.ends_with('/') {
            EntryType::Directory
        } else {
            EntryType::Regular
        });
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        builder.append_data(&mut h, path, data).unwrap();
    }
    let tar = builder.into_inner().unwrap();
    let sandbox = Sandbox::new();
    let got = unpack(&tar[..], &sandbox.dest(), &defaults()).unwrap();

    let digest = |d: &[u8]| hex::encode(Sha256::digest(d));
    let expect = |path: &str, data: &[u8]| ArtifactFile {
        path: path.into(),
        size: data.len() as u64,
        sha256: digest(data),
    };
    let files = vec![
        expect("empty", b""),
        expect("implicit/dir/f", b"f"),
        expect("out/bin/tool", b"#!/bin/sh\n"),
        expect("out/readme.txt", b"hello\n"),
        expect(&long, b"long"),
    ];
    assert_eq!(got.files, files);
    assert_eq!(
        files[3].sha256,
        "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
    );
    let mode = |p: &str| fs::metadata(sandbox.dest().join(p)).unwrap().mode() & 0o7777;
    assert_eq!(mode("out/bin/tool"), 0o755);
    assert_eq!(mode("out/readme.txt"), 0o644);
    assert_eq!(mode("empty"), 0o755);
    assert_eq!(fs::read(sandbox.dest().join(&long)).unwrap(), b"long");
}

#[test]
fn sha256sums_is_sorted_and_escaped_like_coreutils() {
    let file = |path: &str, sha256: &str| ArtifactFile {
        path: path.into(),
        size: 0,
        sha256: sha256.into(),
    };
    let text = sha256sums(&[file("b/c", "22"), file("a\\b", "11"), file("a", "00")]);
    assert_eq!(text, "00  a\n\\11  a\\\\b\n22  b/c\n");
}

/// Arbitrary archives, entry by entry: names with `..`, absolute paths, links in and out of
/// the tree, devices, sizes that lie about their data, or plain random bytes. Whatever the
/// stream, `unpack` returns (Ok or Err) without a panic, and nothing outside `dest` changes.
mod arbitrary {
    use super::*;
    use proptest::prelude::*;

    fn name() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("..".to_owned()),
            Just("/".to_owned()),
            Just("../sentinel/keep".to_owned()),
            Just("a/../../sentinel/x".to_owned()),
            Just("/tmp/pwned".to_owned()),
            "[a-c./]{1,12}",
            "\\PC{1,20}",
        ]
        .prop_filter("fits the old header", |n| n.len() < 100)
    }

    fn entry() -> impl Strategy<Value = (String, u8, Vec<u8>, String, bool)> {
        (
            name(),
            prop::sample::select(vec![
                b'0', b'1', b'2', b'3', b'4', b'5', b'6', b'7', b'L', b'x', b'g',
            ]),
            prop::collection::vec(any::<u8>(), 0..64),
            prop_oneof![Just(String::new()), name()],
            any::<bool>(),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn hostile_archives_never_write_outside_dest(
            entries in prop::collection::vec(entry(), 0..6),
            end in any::<bool>(),
            noise in prop::collection::vec(any::<u8>(), 0..600),
        ) {
            let sandbox = Sandbox::new();
            let mut tar = Tar::default();
            for (name, ty, data, link, lie) in &entries {
                tar = if *lie {
                    // A declared size that is not what follows.
                    let mut t = tar.header(name, *ty, data.len() as u64 * 7 + 1, link);
                    t.0.extend_from_slice(data);
                    t
                } else {
                    tar.entry(name, *ty, data, link)
                };
            }
            let mut bytes = if end { tar.done() } else { tar.0 };
            bytes.extend_from_slice(&noise);
            let limits = Limits { max_file_bytes: 1 << 16, max_total_bytes: 1 << 18, max_entries: 16 };
            let _ = unpack(Cursor::new(bytes), &sandbox.dest(), &limits);
            let mut outside = Vec::new();
            walk(sandbox.0.path(), sandbox.0.path(), &mut outside);
            outside.retain(|p| p != "dest" && !p.starts_with("dest/"));
            outside.sort();
            prop_assert_eq!(outside, vec!["sentinel".to_owned(), "sentinel/keep".to_owned()]);
            let keep = sandbox.0.path().join("sentinel/keep");
            prop_assert_eq!(fs::read_to_string(&keep).unwrap(), "keep");
            prop_assert_eq!(fs::metadata(&keep).unwrap().nlink(), 1);
        }

        #[test]
        fn random_bytes_are_an_error_or_nothing(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
            let sandbox = Sandbox::new();
            let _ = unpack(Cursor::new(bytes), &sandbox.dest(), &defaults());
            let mut outside = Vec::new();
            walk(sandbox.0.path(), sandbox.0.path(), &mut outside);
            outside.retain(|p| p != "dest" && !p.starts_with("dest/"));
            prop_assert_eq!(outside.len(), 2);
        }
    }
}
