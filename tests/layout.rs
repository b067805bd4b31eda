//! The house rules that keep the layout honest, checked on the source itself: nothing outside
//! `src/machine/` names a backend, and no two modules of one folder import each other (no
//! cycle at any level of the tree).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (`machine::qemu::accel`) → source text, test modules left out.
fn modules() -> BTreeMap<Vec<String>, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let rel: PathBuf = p.strip_prefix(&root).unwrap().with_extension("");
            let mut parts: Vec<String> = rel.iter().map(|c| c.to_string_lossy().into()).collect();
            if matches!(
                parts.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                parts.pop();
            }
            if parts.last().is_some_and(|l| l == "tests") {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            out.insert(parts, without_test_items(&text));
        }
    }
    out
}

/// `text` without the items marked `#[cfg(test)]` (a `mod tests;` declaration, an inline
/// `mod tests { … }`, a test-only `use` or fn), wherever they stand in the file: the rest of
/// the file is checked whole. Braces are counted plainly, which holds for this codebase's
/// test modules (a test module with an unbalanced brace in a string would hide what follows
/// it, and the cut is asserted to leave the file's non-test items).
fn without_test_items(text: &str) -> String {
    const ATTR: &str = "#[cfg(test)]";
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find(ATTR) {
        out.push_str(&rest[..at]);
        let item = &rest[at + ATTR.len()..];
        let semi = item.find(';').unwrap_or(item.len());
        let open = item.find('{').unwrap_or(item.len());
        let end = if semi < open {
            semi + 1
        } else {
            let mut depth = 0usize;
            let mut end = item.len();
            for (i, c) in item.char_indices().skip(open) {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            end = i + 1;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            end
        };
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

#[test]
fn test_items_are_cut_and_what_follows_them_is_kept() {
    let text = "use a;\n#[cfg(test)]\nuse b;\n#[cfg(test)]\nmod t {\n fn x() { {} }\n}\nuse c;\n\
                #[cfg(test)]\nmod tests;\nuse d;\n";
    assert_eq!(without_test_items(text), "use a;\n\n\nuse c;\n\nuse d;\n");
}

/// Whether `text` refers to module `name` by `prefix` (`crate::machine::`), directly or in a
/// `use prefix{…}` group.
fn names(text: &str, prefix: &str, name: &str) -> bool {
    let word_after = |i: usize| {
        text[i..]
            .chars()
            .next()
            .is_none_or(|c| !c.is_alphanumeric() && c != '_')
    };
    let direct = format!("{prefix}{name}");
    let mut hit = text
        .match_indices(&direct)
        .any(|(i, _)| word_after(i + direct.len()));
    let group = format!("{prefix}{{");
    for (i, _) in text.match_indices(&group) {
        let body = &text[i + group.len()..];
        let body = &body[..body.find('}').unwrap_or(body.len())];
        hit |= body
            .split(|c: char| !c.is_alphanumeric() && c != '_')
            .any(|w| w == name);
    }
    hit
}

#[test]
fn only_the_machine_module_names_a_backend() {
    for (path, text) in modules() {
        if path.first().is_some_and(|p| p == "machine") {
            continue;
        }
        for backend in ["qemu", "ec2"] {
            assert!(
                !names(&text, "machine::", backend),
                "src/{} names machine::{backend}: go through the Backend trait and the factory",
                path.join("/")
            );
        }
    }
}

#[test]
fn no_two_modules_of_a_folder_import_each_other() {
    let mods = modules();
    let folders: BTreeSet<Vec<String>> = mods
        .keys()
        .filter(|p| !p.is_empty())
        .map(|p| p[..p.len() - 1].to_vec())
        .collect();
    for folder in folders {
        let depth = folder.len();
        let kids: BTreeSet<String> = mods
            .keys()
            .filter(|p| p.len() > depth && p[..depth] == folder[..])
            .map(|p| p[depth].clone())
            .collect();
        let prefix = format!(
            "crate::{}",
            folder.iter().map(|f| format!("{f}::")).collect::<String>()
        );
        let mut edges: BTreeSet<(String, String)> = BTreeSet::new();
        for (path, text) in &mods {
            if path.len() <= depth || path[..depth] != folder[..] {
                continue;
            }
            let me = &path[depth];
            for k in kids.iter().filter(|k| *k != me) {
                let sibling = path.len() == depth + 1 && names(text, "super::", k);
                if names(text, &prefix, k) || sibling {
                    edges.insert((me.clone(), k.clone()));
                }
            }
        }
        for (a, b) in &edges {
            // Is `a` reachable from `b`?
            let (mut seen, mut todo) = (BTreeSet::from([b.clone()]), vec![b.clone()]);
            while let Some(x) = todo.pop() {
                for (u, v) in &edges {
                    if *u == x && seen.insert(v.clone()) {
                        todo.push(v.clone());
                    }
                }
            }
            assert!(
                !seen.contains(a),
                "import cycle in src/{}: {a} -> {b} -> … -> {a}",
                folder.join("/")
            );
        }
    }
}
