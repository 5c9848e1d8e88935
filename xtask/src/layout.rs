//! CONTRIBUTING.md's map of the tree stays true: under each `### \`ROOT\`` heading, the first
//! column of the table names every source file below ROOT (as a path relative to it) and nothing
//! that is not there. Run by `lint`.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

/// Files with these extensions are the ones the map must cover.
const SOURCE: &[&str] = &["rs", "bt"];

fn sources(dir: &Path, base: &Path, out: &mut BTreeSet<String>) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            sources(&p, base, out)?;
        } else if p.extension().and_then(|x| x.to_str()).is_some_and(|x| SOURCE.contains(&x)) {
            out.insert(p.strip_prefix(base).unwrap_or(&p).to_string_lossy().into_owned());
        }
    }
    Ok(())
}

/// The backticked names in the first cell of a table row (`| \`a.rs\`, \`b.rs\` | role |`).
fn first_cell_names(line: &str) -> Vec<String> {
    let Some(cell) = line.strip_prefix('|').and_then(|r| r.split('|').next()) else { return Vec::new() };
    cell.split('`').skip(1).step_by(2).map(|s| s.trim().to_owned()).filter(|s| s.contains('.')).collect()
}

/// (root, names listed under it) for every `### \`ROOT\`` section of `doc`.
fn sections(doc: &str) -> Vec<(String, BTreeSet<String>)> {
    let mut out: Vec<(String, BTreeSet<String>)> = Vec::new();
    for line in doc.lines() {
        if let Some(rest) = line.strip_prefix("### `") {
            out.push((rest.split('`').next().unwrap_or("").trim_end_matches('/').to_owned(), BTreeSet::new()));
        } else if line.starts_with("## ") {
            out.push((String::new(), BTreeSet::new()));
        } else if let Some((_, names)) = out.last_mut().filter(|(r, _)| !r.is_empty()) {
            names.extend(first_cell_names(line));
        }
    }
    out.retain(|(r, _)| !r.is_empty());
    out
}

/// Fail when the map in `root/CONTRIBUTING.md` misses a source file or names one that is gone.
pub fn check(root: &Path) -> Result<()> {
    let doc_path = root.join("CONTRIBUTING.md");
    let doc = std::fs::read_to_string(&doc_path).with_context(|| format!("reading {}", doc_path.display()))?;
    let mut problems = Vec::new();
    let secs = sections(&doc);
    if secs.is_empty() {
        bail!("{}: no `### \\`ROOT\\`` sections", doc_path.display());
    }
    for (dir, listed) in &secs {
        let base: PathBuf = root.join(dir);
        let mut have = BTreeSet::new();
        sources(&base, &base, &mut have)?;
        for f in have.difference(listed) {
            problems.push(format!("{dir}/{f} is not in the map"));
        }
        for f in listed.difference(&have) {
            problems.push(format!("{dir}/{f} is in the map but not in the tree"));
        }
    }
    if !problems.is_empty() {
        bail!("CONTRIBUTING.md's layout map is out of date:\n  {}", problems.join("\n  "));
    }
    eprintln!("xtask: CONTRIBUTING.md maps every source file ({} sections)", secs.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sections_and_first_cells() {
        let doc = "## Layout\n### `a/src`\n| file | role |\n|---|---|\n| `x.rs`, `y/z.rs` | the `q.rs` role |\n\
                   ### `b/`\n| `m.rs` | r |\n## Tests\n| `n.rs` | not a map |\n";
        let s = sections(doc);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].0, "a/src");
        assert_eq!(s[0].1, BTreeSet::from(["x.rs".to_owned(), "y/z.rs".to_owned()]));
        assert_eq!(s[1].0, "b");
        assert_eq!(s[1].1, BTreeSet::from(["m.rs".to_owned()]));
    }
}
