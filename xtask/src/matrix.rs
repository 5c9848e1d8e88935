//! Results of a kernel-matrix run: read what the guest wrote (test logs, exit codes, `twreset
//! doctor --json`), keep one JSON file per kernel under `docs/kernels/`, and render the kernel x
//! command table of `docs/internals/kernels.md` from those files (never by hand).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::vm::Kernel;

/// One test binary's results in the guest.
#[derive(Debug, Default)]
pub struct Binary {
    pub name: String,
    pub exit: i32,
    pub secs: u64,
    pub passed: u32,
    pub failed: u32,
    pub ignored: u32,
    /// Names of the failed tests.
    pub failures: Vec<String>,
}

/// One kernel's run.
#[derive(Debug)]
pub struct KernelRun {
    pub short: String,
    pub release: String,
    pub accel: &'static str,
    pub wall: Duration,
    pub passed: u32,
    pub failed: u32,
    pub ignored: u32,
    pub binaries: Vec<Binary>,
    /// `twreset doctor --json` in the guest (`kernel.paths` says which path each command takes).
    pub doctor: Value,
}

impl KernelRun {
    pub fn summary_line(&self) -> String {
        format!(
            "{} ({}): {} passed, {} failed, {} ignored in {} s ({})",
            self.short,
            self.release,
            self.passed,
            self.failed,
            self.ignored,
            self.wall.as_secs(),
            self.accel
        )
    }
}

/// Parse libtest's human output: `test NAME ... ok|FAILED|ignored` lines.
pub fn parse_log(name: &str, exit: i32, secs: u64, log: &str) -> Binary {
    let mut b = Binary { name: name.to_owned(), exit, secs, ..Default::default() };
    for line in log.lines() {
        let Some(rest) = line.strip_prefix("test ") else { continue };
        let Some((test, verdict)) = rest.rsplit_once(" ... ") else { continue };
        match verdict.trim() {
            "ok" => b.passed += 1,
            v if v.starts_with("ignored") => b.ignored += 1,
            "FAILED" => {
                b.failed += 1;
                b.failures.push(test.to_owned());
            }
            _ => {}
        }
    }
    // A binary that died without a verdict line (crash, timeout) still counts as a failure.
    if exit != 0 && b.failed == 0 {
        b.failed = 1;
        b.failures.push(if exit == 124 { "(timed out)".into() } else { format!("(exit {exit})") });
    }
    b
}

/// Read the guest's output directory; an error when the guest did not finish its script.
pub fn collect(k: &Kernel, out: &Path, wall: Duration, accel: &'static str) -> Result<KernelRun> {
    let uname = std::fs::read_to_string(out.join("uname")).unwrap_or_default();
    if uname.trim() != k.release {
        bail!(
            "the guest did not start the test script (uname {:?}; see {})",
            uname.trim(),
            out.join("console.log").display()
        );
    }
    if !out.join("finished").exists() {
        bail!("the guest's test script did not finish (see {})", out.join("console.log").display());
    }
    let status = std::fs::read_to_string(out.join("status")).context("reading the guest's status file")?;
    let mut binaries = Vec::new();
    for line in status.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [name, rc, secs] = f[..] else { continue };
        let log = std::fs::read_to_string(out.join(format!("{name}.log"))).unwrap_or_default();
        binaries.push(parse_log(name, rc.parse().unwrap_or(-1), secs.parse().unwrap_or(0), &log));
    }
    if binaries.is_empty() {
        bail!("the guest ran no test binary");
    }
    let doctor = std::fs::read_to_string(out.join("doctor.json"))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(Value::Null);
    Ok(KernelRun {
        short: k.short.to_owned(),
        release: k.release.to_owned(),
        accel,
        wall,
        passed: binaries.iter().map(|b| b.passed).sum(),
        failed: binaries.iter().map(|b| b.failed).sum(),
        ignored: binaries.iter().map(|b| b.ignored).sum(),
        binaries,
        doctor,
    })
}

fn results_dir(root: &Path) -> PathBuf {
    root.join("docs/kernels")
}

/// Write `docs/kernels/<set>/<release>.json` (`set`: `full` or `ci`).
pub fn save(root: &Path, r: &KernelRun, set: &str) -> Result<()> {
    let dir = results_dir(root).join(set);
    std::fs::create_dir_all(&dir)?;
    let bins: Vec<Value> = r
        .binaries
        .iter()
        .map(|b| {
            json!({ "name": b.name, "exit": b.exit, "secs": b.secs, "passed": b.passed, "failed": b.failed,
                    "ignored": b.ignored, "failures": b.failures })
        })
        .collect();
    let v = json!({
        "kernel": r.short, "release": r.release, "set": set, "accel": r.accel, "wall_secs": r.wall.as_secs(),
        "passed": r.passed, "failed": r.failed, "ignored": r.ignored, "binaries": bins,
        "paths": r.doctor["kernel"]["paths"],
    });
    let path = dir.join(format!("{}.json", r.release));
    std::fs::write(&path, serde_json::to_string_pretty(&v)? + "\n")
        .with_context(|| format!("writing {}", path.display()))
}

/// Which test binaries check which command (the table's rows).
const COMMANDS: &[(&str, &[&str])] = &[
    ("trace", &["trace", "lifecycle"]),
    ("tw", &["tw", "tw_live", "timewait"]),
    ("top", &["top"]),
    ("kill", &["kill"]),
    ("doctor", &["doctor"]),
    ("CLI errors", &["cli_errors"]),
    ("agent (metrics via Prometheus, SIGHUP, SIGTERM)", &["agent"]),
    ("agent API and the CLI through it", &["api"]),
    ("auto-relief", &["relief"]),
    ("pods and containers", &["identity"]),
    ("unit tests reading the kernel", &["twreset-lib-unit"]),
];

const BEGIN: &str = "<!-- kernel-matrix:begin (generated by `cargo xtask test --kernel all`; do not edit) -->";
const END: &str = "<!-- kernel-matrix:end -->";

/// One table cell: works / fails, with counts, plus the path doctor reported for the command.
fn cell(run: &Value, bins: &[&str], path_key: Option<&str>) -> String {
    let list = run["binaries"].as_array().cloned().unwrap_or_default();
    let mine: Vec<&Value> = list.iter().filter(|b| bins.contains(&b["name"].as_str().unwrap_or(""))).collect();
    if mine.is_empty() {
        return "not run".into();
    }
    let n = |k: &str| mine.iter().map(|b| b[k].as_u64().unwrap_or(0)).sum::<u64>();
    let (p, f) = (n("passed"), n("failed"));
    let tests = |n: u64| if n == 1 { "1 test".to_owned() } else { format!("{n} tests") };
    let mut s = if f == 0 { format!("works ({})", tests(p)) } else { format!("**fails** ({f} of {})", tests(p + f)) };
    if let Some(path) = path_key.and_then(|k| run["paths"][k]["path"].as_str()) {
        s.push_str(&format!("; path: {path}"));
    }
    s
}

/// The runs saved in `dir`, oldest kernel first.
fn read_runs(dir: &Path) -> Result<Vec<Value>> {
    let mut runs: BTreeMap<String, Value> = BTreeMap::new();
    if let Ok(dir) = std::fs::read_dir(dir) {
        for e in dir.filter_map(Result::ok) {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "json") {
                let v: Value = serde_json::from_str(&std::fs::read_to_string(&p)?)
                    .with_context(|| format!("parsing {}", p.display()))?;
                runs.insert(v["release"].as_str().unwrap_or_default().to_owned(), v);
            }
        }
    }
    let mut v: Vec<Value> = runs.into_values().collect();
    v.sort_by_key(|r| version_key(r["kernel"].as_str().unwrap_or("")));
    Ok(v)
}

/// One set's kernel x command table into `t`, its failures (and with `paths` each command's path)
/// into `why`.
fn table(runs: &[Value], t: &mut String, why: &mut String, paths: bool) {
    *t += &format!(
        "| command | {} |\n|---|{}\n",
        runs.iter().map(|r| r["release"].as_str().unwrap_or("?")).collect::<Vec<_>>().join(" | "),
        "---|".repeat(runs.len())
    );
    for (cmd, bins) in COMMANDS {
        let key = match *cmd {
            "trace" => Some("trace"),
            "kill" => Some("kill"),
            _ => None,
        };
        *t += &format!("| {cmd} | {} |\n", runs.iter().map(|r| cell(r, bins, key)).collect::<Vec<_>>().join(" | "));
    }
    *t += &format!(
        "| netns identity | {} |\n",
        runs.iter()
            .map(|r| r["paths"]["netns_identity"]["path"].as_str().unwrap_or("?").to_owned())
            .collect::<Vec<_>>()
            .join(" | ")
    );
    *t += &format!(
        "| total | {} |\n",
        runs.iter()
            .map(|r| format!(
                "{} passed, {} failed, {} s ({}, {} set)",
                r["passed"],
                r["failed"],
                r["wall_secs"],
                r["accel"].as_str().unwrap_or("?"),
                r["set"].as_str().unwrap_or("?")
            ))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    for r in runs {
        for b in r["binaries"].as_array().into_iter().flatten() {
            for f in b["failures"].as_array().into_iter().flatten() {
                *why += &format!(
                    "- {} ({} set): `{}` {}\n",
                    r["release"].as_str().unwrap_or("?"),
                    r["set"].as_str().unwrap_or("?"),
                    b["name"].as_str().unwrap_or("?"),
                    f.as_str().unwrap_or("?")
                );
            }
        }
        for (k, p) in r["paths"].as_object().into_iter().flatten().filter(|_| paths) {
            *why += &format!(
                "- {}: {k} takes {}: {}\n",
                r["release"].as_str().unwrap_or("?"),
                p["path"].as_str().unwrap_or("?"),
                p["reason"].as_str().unwrap_or("?")
            );
        }
    }
}

/// Render the tables from every `docs/kernels/<set>/*.json` into `docs/internals/kernels.md`
/// between the markers (the rest of that file is prose): one per set, the full suite first.
pub fn render(root: &Path) -> Result<()> {
    let mut t = String::new();
    let mut why = String::new();
    let mut first = true;
    for (set, title) in [("full", "Full suite"), ("ci", "CI set (what `.ci/run` runs)")] {
        let runs = read_runs(&results_dir(root).join(set))?;
        if runs.is_empty() {
            continue;
        }
        t += &format!("### {title}\n\n");
        table(&runs, &mut t, &mut why, first);
        first = false;
        t += "\n";
    }
    let body = format!("{BEGIN}\n{t}\n{why}{END}");
    let doc = root.join("docs/internals/kernels.md");
    let old = std::fs::read_to_string(&doc).unwrap_or_default();
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(a), Some(b)) if a < b => format!("{}{body}{}", &old[..a], &old[b + END.len()..]),
        _ => format!("{old}\n## Kernel x command (last matrix run)\n\n{body}\n"),
    };
    std::fs::create_dir_all(doc.parent().expect("has a parent"))?;
    std::fs::write(&doc, new).with_context(|| format!("writing {}", doc.display()))
}

fn version_key(v: &str) -> Vec<u32> {
    v.split('.').filter_map(|p| p.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_libtest_output() {
        let log = "running 3 tests\ntest a::b ... ok\ntest c ... FAILED\ntest d ... ignored, slow\n";
        let b = parse_log("kill", 101, 7, log);
        assert_eq!((b.passed, b.failed, b.ignored), (1, 1, 1));
        assert_eq!(b.failures, ["c"]);
        let crashed = parse_log("tw", 124, 1200, "running 2 tests\ntest x ... ok\n");
        assert_eq!((crashed.passed, crashed.failed), (1, 1));
        assert_eq!(crashed.failures, ["(timed out)"]);
    }

    #[test]
    fn versions_sort_numerically() {
        let mut v = vec!["6.12", "5.10", "6.1"];
        v.sort_by_key(|s| version_key(s));
        assert_eq!(v, ["5.10", "6.1", "6.12"]);
    }
}
