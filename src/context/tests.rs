use std::os::unix::fs::symlink;

use super::*;
use tar::EntryType;

fn put(root: &Path, rel: &str, body: &str) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, body).unwrap();
}

fn chmod(root: &Path, rel: &str, mode: u32) {
    fs::set_permissions(root.join(rel), fs::Permissions::from_mode(mode)).unwrap();
}

fn scan(root: &Path, exclude: &[&str]) -> Context {
    let exclude = exclude.iter().map(|s| s.to_string()).collect();
    Context::scan(&ContextOptions {
        root: root.into(),
        exclude,
    })
    .unwrap()
}

fn paths(ctx: &Context) -> Vec<String> {
    let entries = ctx.entries().iter();
    entries
        .map(|e| e.path.to_string_lossy().into_owned())
        .collect()
}

fn tar_of(ctx: &Context, mtime: u64) -> (Vec<u8>, TarSummary) {
    let mut out = Vec::new();
    let summary = write_tar(ctx, &mut out, mtime).unwrap();
    (out, summary)
}

#[test]
fn ignore_files_and_excludes_apply_and_hidden_files_stay() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    put(r, ".gitignore", "*.log\nbuild/\n");
    put(r, ".runnerignore", "secret.txt\n");
    put(r, ".ignore", "scratch\n");
    put(r, "sub/.gitignore", "local.txt\n");
    for ignored in [
        "a.log",
        "build/out.o",
        "secret.txt",
        "scratch",
        "sub/local.txt",
    ] {
        put(r, ignored, "x");
    }
    for excluded in ["a.tmp", "node_modules/x/y.js", ".git/HEAD", "sub/.git"] {
        put(r, excluded, "x");
    }
    for kept in [
        "local.txt",
        "sub/keep.rs",
        "sub/b.tmp",
        ".env.example",
        ".config/x",
    ] {
        put(r, kept, "x");
    }
    let ctx = scan(r, &["*.tmp", "node_modules/"]);
    let expected = [
        ".config",
        ".config/x",
        ".env.example",
        ".gitignore",
        ".ignore",
        ".runnerignore",
        "local.txt",
        "sub",
        "sub/.gitignore",
        "sub/b.tmp",
        "sub/keep.rs",
    ];
    assert_eq!(paths(&ctx), expected);
}

#[test]
fn only_ignore_files_inside_the_root_apply_in_or_out_of_a_repo() {
    for repo_above in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        if repo_above {
            fs::create_dir(dir.path().join(".git")).unwrap();
        }
        put(dir.path(), ".gitignore", "*.txt\nctx/kept/\n");
        let root = dir.path().join("ctx");
        put(&root, ".gitignore", "*.o\n");
        for rel in ["a.txt", "kept/b", "x.o"] {
            put(&root, rel, "");
        }
        let expected = [".gitignore", "a.txt", "kept", "kept/b"];
        assert_eq!(
            paths(&scan(&root, &[])),
            expected,
            "repo above: {repo_above}"
        );
    }
}

#[test]
fn entries_are_in_byte_order_and_empty_dirs_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    for rel in ["a/x", "a-b", "a.c", "B"] {
        put(dir.path(), rel, "");
    }
    fs::create_dir_all(dir.path().join("e/mpty")).unwrap();
    let ctx = scan(dir.path(), &[]);
    // Component order would put "a/x" right after "a".
    assert_eq!(paths(&ctx), ["B", "a", "a-b", "a.c", "a/x", "e", "e/mpty"]);
    let (bytes, _) = tar_of(&ctx, 0);
    let mut archive = tar::Archive::new(&bytes[..]);
    let last = archive.entries().unwrap().last().unwrap().unwrap();
    assert_eq!(last.path_bytes().as_ref(), b"e/mpty/");
    assert_eq!(last.header().entry_type(), EntryType::Directory);
}

#[test]
fn tar_headers_are_normalized_and_keep_exec_bits_symlinks_and_long_names() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    put(r, "run.sh", "#!/bin/sh\n");
    chmod(r, "run.sh", 0o750);
    put(r, "data", "12345");
    chmod(r, "data", 0o600);
    fs::create_dir(r.join("private")).unwrap();
    chmod(r, "private", 0o700);
    let long_name = format!("d/{}", "n".repeat(120));
    put(r, &long_name, "long");
    let long_target = "t".repeat(150);
    symlink("./a//../data", r.join("link")).unwrap();
    symlink(&long_target, r.join("longlink")).unwrap();

    let ctx = scan(r, &[]);
    let (bytes, summary) = tar_of(&ctx, 1_700_000_000);
    let mut seen = Vec::new();
    let mut archive = tar::Archive::new(&bytes[..]);
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        let h = entry.header();
        assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
        assert_eq!(h.mtime().unwrap(), 1_700_000_000);
        let link = entry.link_name_bytes().map(|l| l.into_owned());
        let path = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
        seen.push((path, h.entry_type(), h.mode().unwrap(), link));
    }
    let file = |p: &str, mode| (p.to_string(), EntryType::Regular, mode, None);
    let dir_ = |p: &str| (p.to_string(), EntryType::Directory, 0o755, None);
    let link = |p: &str, t: &str| {
        let target = Some(t.as_bytes().to_vec());
        (p.to_string(), EntryType::Symlink, 0o644, target)
    };
    let expected = vec![
        dir_("d/"),
        file(&long_name, 0o644),
        file("data", 0o644),
        link("link", "./a//../data"),
        link("longlink", &long_target),
        dir_("private/"),
        file("run.sh", 0o755),
    ];
    assert_eq!(seen, expected);
    assert_eq!((summary.files, summary.file_bytes), (3, 10 + 5 + 4));
    assert_eq!(summary.tar_bytes, bytes.len() as u64);
    assert_eq!(summary.tar_sha256, hex::encode(Sha256::digest(&bytes)));
}

/// Builds the same tree in a different creation order, then gives it different
/// group/other bits, mtimes and (when running as root) owners.
fn build_tree(root: &Path, variant: bool) {
    let mut files = vec![
        ("src/main.rs", "fn main() {}"),
        ("run.sh", "#!/bin/sh"),
        ("z", ""),
    ];
    if variant {
        files.reverse();
    }
    for (rel, body) in files {
        put(root, rel, body);
    }
    fs::create_dir(root.join("empty")).unwrap();
    symlink("src/main.rs", root.join("main")).unwrap();
    chmod(root, "run.sh", if variant { 0o700 } else { 0o755 });
    chmod(root, "z", if variant { 0o664 } else { 0o644 });
    if !variant {
        return;
    }
    let when = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(12345);
    for rel in ["src/main.rs", "run.sh", "z", "src", "empty", "."] {
        File::open(root.join(rel))
            .unwrap()
            .set_modified(when)
            .unwrap();
        // Only root can give files away; the tree is ours, so its owner is our uid.
        if std::os::unix::fs::MetadataExt::uid(&fs::metadata(root).unwrap()) == 0 {
            std::os::unix::fs::lchown(root.join(rel), Some(1234), Some(1234)).unwrap();
        }
    }
}

#[test]
fn copies_with_different_mtimes_and_owners_give_identical_digest_and_tar() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    build_tree(a.path(), false);
    build_tree(b.path(), true);
    let (ctx_a, ctx_b) = (scan(a.path(), &[]), scan(b.path(), &[]));
    assert_eq!(ctx_a.digest().unwrap(), ctx_b.digest().unwrap());
    let ((tar_a, sum_a), (tar_b, sum_b)) = (tar_of(&ctx_a, 7), tar_of(&ctx_b, 7));
    assert!(tar_a == tar_b, "tar bytes differ");
    assert_eq!(sum_a, sum_b);
    assert_ne!(sum_a.tar_sha256, tar_of(&ctx_a, 8).1.tar_sha256);
}

#[test]
fn any_content_name_or_exec_change_changes_the_digest() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    build_tree(r, false);
    let digest = || scan(r, &[]).digest().unwrap();
    let mut seen = vec![digest()];
    put(r, "src/main.rs", "fn main() {)");
    seen.push(digest());
    chmod(r, "z", 0o744);
    seen.push(digest());
    fs::rename(r.join("z"), r.join("y")).unwrap();
    seen.push(digest());
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 4);
}

#[test]
fn fifo_is_skipped_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    put(dir.path(), "a", "a");
    nix::unistd::mkfifo(&dir.path().join("pipe"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let ctx = scan(dir.path(), &[]);
    assert_eq!(paths(&ctx), ["a"]);
    let skipped = Skipped {
        path: "pipe".into(),
        kind: "fifo",
    };
    assert_eq!(ctx.skipped(), [skipped]);
    assert_eq!(tar_of(&ctx, 0).1.files, 1);
}

#[test]
fn a_file_changed_after_the_scan_is_an_error_and_the_tar_is_left_unfinished() {
    let dir = tempfile::tempdir().unwrap();
    put(dir.path(), "a", "a");
    put(dir.path(), "b", "b");
    let ctx = scan(dir.path(), &[]);
    put(dir.path(), "b", "longer");
    assert!(ctx.digest().is_err());
    let mut out = Vec::new();
    let err = write_tar(&ctx, &mut out, 0).unwrap_err().to_string();
    assert!(err.contains("changed"), "{err}");
    // Header and padded contents of "a" only: no end-of-archive marker.
    assert_eq!(out.len(), 1024);
}

#[test]
fn a_bad_exclude_glob_names_itself() {
    let dir = tempfile::tempdir().unwrap();
    let opts = ContextOptions {
        root: dir.path().into(),
        exclude: vec!["a[".into()],
    };
    let err = Context::scan(&opts).unwrap_err().to_string();
    assert!(err.contains("\"a[\""), "{err}");
}
