//! The userspace crate's module dependencies point one way: every `crate::`, `super::` and
//! imported-module path of each file, collapsed to top-level modules, must form no cycle. Tests
//! (`#[cfg(test)]` modules and `*tests.rs` files) and comments do not count. Run by `lint`.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use anyhow::{Context, Result, bail};

/// Module path of a source file under `src` (`kill/mod.rs` -> `kill`); `None` for the crate roots.
fn module_of(src: &Path, file: &Path) -> Option<Vec<String>> {
    let rel = file.strip_prefix(src).ok()?.with_extension("");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if parts.last().is_some_and(|l| l == "mod") {
        parts.pop();
    }
    (!parts.is_empty() && parts != ["lib"] && parts != ["main"]).then_some(parts)
}

/// The text without comments, string literals' contents and `#[cfg(test)]` items.
fn code_only(text: &str) -> String {
    let lines: Vec<&str> = text.lines().map(|l| l.split("//").next().unwrap_or("")).collect();
    let mut s = lines.join("\n");
    while let Some(at) = s.find("#[cfg(test)]") {
        let rest = &s[at..];
        // The item ends at its `;` or at the brace matching its first `{`.
        let end = match (rest.find(';'), rest.find('{')) {
            (Some(semi), Some(brace)) if semi < brace => at + semi + 1,
            (_, Some(brace)) => {
                let mut depth = 0;
                let mut end = s.len();
                for (i, c) in rest[brace..].char_indices() {
                    depth += match c {
                        '{' => 1,
                        '}' => -1,
                        _ => 0,
                    };
                    if depth == 0 {
                        end = at + brace + i + 1;
                        break;
                    }
                }
                end
            }
            (Some(semi), None) => at + semi + 1,
            (None, None) => s.len(),
        };
        s.replace_range(at..end, "");
    }
    s
}

/// Expand one `use` tree (`a::{b, c::{d}}`) into paths.
fn expand(prefix: &str, tree: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    match tree.find('{') {
        None => {
            let name = tree.split(" as ").next().unwrap_or("").trim();
            if !name.is_empty() && name != "self" {
                out.push(format!("{prefix}{name}"));
            } else if name == "self" {
                out.push(prefix.trim_end_matches("::").to_owned());
            }
        }
        Some(open) => {
            let head = format!("{prefix}{}", &tree[..open]);
            let body = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
            let (mut depth, mut start) = (0, 0);
            for (i, c) in body.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        expand(&head, &body[start..i], out);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            expand(&head, &body[start..], out);
        }
    }
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every path a file names, absolute within the crate (`["kill", "select", "Selector"]`).
fn paths_of(module: &[String], code: &str) -> Vec<Vec<String>> {
    let parent = &module[..module.len() - 1];
    let mut raw = Vec::new();
    let mut imported = BTreeMap::new();
    for stmt in code.split(';') {
        let Some(at) = stmt.find("use ") else { continue };
        let tree = stmt[at + 4..].trim();
        if tree.starts_with("crate::") || tree.starts_with("super::") {
            let mut out = Vec::new();
            expand("", tree, &mut out);
            for p in out {
                if let Some(last) = p.rsplit("::").next() {
                    imported.insert(last.to_owned(), p.clone());
                }
                raw.push(p);
            }
        }
    }
    // Inline paths: `crate::a::b`, `super::a`, and `name::x` for a name imported above.
    let chars: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if is_ident(chars[i]) && (i == 0 || !(is_ident(chars[i - 1]) || chars[i - 1] == ':')) {
            let start = i;
            while i < chars.len() && (is_ident(chars[i]) || chars[i] == ':') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let first = word.split("::").next().unwrap_or("");
            if word.contains("::") {
                if first == "crate" || first == "super" {
                    raw.push(word);
                } else if let Some(full) = imported.get(first) {
                    raw.push(format!("{full}{}", &word[first.len()..]));
                }
            }
        } else {
            i += 1;
        }
    }
    raw.into_iter()
        .map(|p| {
            let mut segs: Vec<String> = Vec::new();
            for (n, s) in p.split("::").filter(|s| !s.is_empty()).enumerate() {
                match s {
                    "crate" if n == 0 => {}
                    "super" if n == 0 => segs.extend(parent.iter().cloned()),
                    "super" => {
                        segs.pop();
                    }
                    _ => segs.push(s.to_owned()),
                }
            }
            segs
        })
        .collect()
}

/// Fail when the top-level modules of `crate_dir/src` depend on each other in a cycle.
pub fn check(crate_dir: &Path) -> Result<()> {
    let src = crate_dir.join("src");
    let mut files = Vec::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    let mut per_file = Vec::new();
    let mut modules = BTreeSet::new();
    for f in &files {
        let Some(m) = module_of(&src, f) else { continue };
        if m.last().is_some_and(|l| l == "tests" || l.ends_with("_tests")) {
            continue;
        }
        let code = code_only(&std::fs::read_to_string(f)?);
        modules.insert(m[0].clone());
        per_file.push((m.clone(), paths_of(&m, &code)));
    }
    let mut edges: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (m, paths) in &per_file {
        for p in paths {
            if let Some(top) = p.first().filter(|t| modules.contains(*t) && **t != m[0]) {
                edges.entry(m[0].clone()).or_default().entry(top.clone()).or_insert_with(|| m.join("::"));
            }
        }
    }
    // A cycle exists when some edge a -> b has b reaching a.
    let reaches = |from: &str, to: &str| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_owned()];
        while let Some(n) = todo.pop() {
            if n == to {
                return true;
            }
            if seen.insert(n.clone()) {
                todo.extend(edges.get(&n).into_iter().flat_map(|e| e.keys().cloned()));
            }
        }
        false
    };
    let mut cycles = Vec::new();
    for (a, outs) in &edges {
        for (b, via) in outs {
            if reaches(b, a) {
                cycles.push(format!("{a} -> {b} (in {via})"));
            }
        }
    }
    if !cycles.is_empty() {
        bail!("module dependencies form a cycle (each edge below lies on one):\n  {}", cycles.join("\n  "));
    }
    eprintln!("xtask: {} top-level modules, no dependency cycle", modules.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn use_trees_expand() {
        let mut out = Vec::new();
        expand("", "crate::{a::{self, B}, c as d, e::f::G}", &mut out);
        assert_eq!(out, ["crate::a", "crate::a::B", "crate::c", "crate::e::f::G"]);
    }

    #[test]
    fn paths_resolve_super_and_imported_modules() {
        let m = vec!["kill".to_owned(), "select".to_owned()];
        let code = code_only(
            "use crate::cmd;\nuse super::plan::Plan; // crate::fake::Commented\nfn f() { cmd::tw::run(); }\n\
             #[cfg(test)]\nmod tests { use crate::hidden::X; }",
        );
        let p = paths_of(&m, &code);
        let p: Vec<String> = p.iter().map(|s| s.join("::")).collect();
        assert!(p.contains(&"cmd::tw::run".to_owned()), "{p:?}");
        assert!(p.contains(&"kill::plan::Plan".to_owned()), "{p:?}");
        assert!(!p.iter().any(|s| s.contains("fake") || s.contains("hidden")), "{p:?}");
    }
}
