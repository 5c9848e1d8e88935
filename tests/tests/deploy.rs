//! The deployment files under `deploy/`, checked offline: the Prometheus alert rules (`promtool check rules`,
//! `promtool test rules`) and their PrometheusRule copy, the Kubernetes manifests against the API schemas of
//! the oldest and newest Kubernetes versions supported (`kubernetes-validate`), the CRD objects and the
//! cross-references between manifests, and the systemd unit (`systemd-analyze verify`).
//!
//! Needs `promtool` (Debian `prometheus`), `systemd-analyze` (Debian `systemd`) and the PyPI package
//! `kubernetes-validate` (which brings PyYAML); `cargo xtask bootstrap` installs them. A missing tool fails
//! the test under `CI=true` and skips it loudly elsewhere. No root, no BPF.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use serde_json::Value;
use twreset_tests::on_ci;

/// Kubernetes versions the manifests are validated against: the oldest supported (Pod Security Admission,
/// which the namespace's labels rely on, is GA since 1.25; the oldest schema kubernetes-validate bundles)
/// and the newest kubernetes-validate 1.37 bundles.
const K8S_VERSIONS: [&str; 2] = ["1.25.0", "1.37.0"];

/// Objects whose schemas are CRDs (prometheus-operator), unknown to kubernetes-validate: it warns and skips
/// them; [`kubernetes_objects_fit_together`] checks their required fields instead.
const CRD_FILES: [(&str, &str); 2] =
    [("servicemonitor.yaml", "ServiceMonitor"), ("prometheusrule.yaml", "PrometheusRule")];

const RULES: &str = "deploy/prometheus/twreset-alerts.yml";
const RULES_TEST: &str = "deploy/prometheus/twreset-alerts.test.yml";
const PROMETHEUS_RULE: &str = "deploy/kubernetes/prometheusrule.yaml";
const UNIT: &str = "deploy/systemd/twreset-agent.service";
const EXEC_START: &str = "/usr/local/bin/twreset agent --config /etc/twreset/agent.toml";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ lives in the workspace").to_owned()
}

fn read(rel: &str) -> String {
    let p = root().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// True when `probe` runs and succeeds. Otherwise: fails under CI=true, skips loudly elsewhere.
fn have(test: &str, what: &str, probe: &mut Command, install: &str) -> bool {
    let ok = probe.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    if !ok {
        assert!(!on_ci(), "{test}: {what} is missing and CI=true forbids skipping ({install})");
        eprintln!("SKIPPED {test}: {what} is missing ({install})");
    }
    ok
}

fn have_promtool(test: &str) -> bool {
    have(test, "promtool", Command::new("promtool").arg("--version"), "apt-get install prometheus")
}

fn have_kubernetes_validate(test: &str) -> bool {
    have(
        test,
        "python3 module kubernetes_validate",
        Command::new("python3").args(["-c", "import kubernetes_validate, yaml"]),
        "python3 -m pip install kubernetes-validate",
    )
}

/// Runs `cmd` (in the workspace root unless it names another directory) and collects its output.
fn run(cmd: &mut Command) -> Output {
    if cmd.get_current_dir().is_none() {
        cmd.current_dir(root());
    }
    cmd.output().unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"))
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn alert_rules_pass_promtool_check() {
    if !have_promtool("alert_rules_pass_promtool_check") {
        return;
    }
    let out = run(Command::new("promtool").args(["check", "rules", RULES]));
    let all = text(&out);
    assert!(out.status.success(), "promtool check rules {RULES} failed:\n{all}");
    assert!(all.contains("SUCCESS: 6 rules found"), "promtool check rules {RULES}: expected 6 rules:\n{all}");
}

#[test]
fn alert_rules_pass_promtool_unit_tests() {
    if !have_promtool("alert_rules_pass_promtool_unit_tests") {
        return;
    }
    let out = run(Command::new("promtool").args(["test", "rules", RULES_TEST]));
    assert!(out.status.success(), "promtool test rules {RULES_TEST} failed:\n{}", text(&out));
    // Every alert is exercised both ways: at least one eval with it firing and one with no alert.
    let tests = read(RULES_TEST);
    for alert in alert_names(&read(RULES)) {
        let evals: Vec<&str> =
            tests.split("- eval_time:").filter(|e| e.contains(&format!("alertname: {alert}\n"))).collect();
        assert!(evals.iter().any(|e| e.contains("exp_labels:")), "{RULES_TEST}: no eval expects {alert} to fire");
        assert!(
            evals.iter().any(|e| e.contains("exp_alerts: []")),
            "{RULES_TEST}: no eval expects {alert} not to fire"
        );
    }
}

fn alert_names(rules: &str) -> Vec<String> {
    rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")).map(|a| a.trim().to_owned()).collect()
}

/// The PrometheusRule's `spec:` is the rules file without its leading comment, indented by two spaces.
#[test]
fn prometheusrule_has_the_same_rules_as_the_rules_file() {
    let cr = read(PROMETHEUS_RULE);
    let rules = read(RULES);
    let (header, spec) = cr.split_once("\nspec:\n").unwrap_or_else(|| panic!("{PROMETHEUS_RULE}: no `spec:` line"));
    let body: Vec<&str> = rules.lines().skip_while(|l| l.starts_with('#') || l.is_empty()).collect();
    let expected: String =
        body.iter().map(|l| if l.is_empty() { "\n".to_owned() } else { format!("  {l}\n") }).collect();
    assert!(
        spec == expected,
        "{PROMETHEUS_RULE} does not carry the rules of {RULES}; regenerate it from the repository root with\n  \
         {{ sed -n '1,/^spec:$/p' {PROMETHEUS_RULE}; awk 'f || !/^(#|$)/ {{f=1; if ($0 == \"\") print \"\"; \
         else print \"  \" $0}}' {RULES}; }} > {PROMETHEUS_RULE}.new && mv {PROMETHEUS_RULE}.new {PROMETHEUS_RULE}\n\
         first differing line: {:?}",
        spec.lines().zip(expected.lines()).find(|(a, b)| a != b).or(Some(("<length>", "<differs>")))
    );
    assert!(header.contains("kind: PrometheusRule"), "{PROMETHEUS_RULE}: not a PrometheusRule");
}

/// The files kustomization.yaml applies, in its order.
fn kustomize_resources() -> Vec<String> {
    read("deploy/kubernetes/kustomization.yaml")
        .lines()
        .skip_while(|l| !l.starts_with("resources:"))
        .skip(1)
        .take_while(|l| l.starts_with("  - "))
        .map(|l| l.trim_start_matches("  - ").trim().to_owned())
        .collect()
}

#[test]
fn kubernetes_manifests_validate_against_api_schemas() {
    let test = "kubernetes_manifests_validate_against_api_schemas";
    if !have_kubernetes_validate(test) {
        return;
    }
    let files = kustomize_resources();
    assert!(files.len() >= 7, "kustomization.yaml lists only {files:?}");
    for version in K8S_VERSIONS {
        // --strict: unknown fields are errors too. --quiet: only warnings and failures are printed.
        let out = run(Command::new("python3")
            .args(["-m", "kubernetes_validate", "--strict", "--quiet", "-k", version])
            .args(&files)
            .current_dir(root().join("deploy/kubernetes")));
        let all = text(&out);
        assert!(out.status.success(), "kubernetes-validate -k {version} failed:\n{all}");
        let minor = version.rsplit_once('.').map(|(m, _)| m).unwrap();
        // The only output allowed: "no schema" for the CRD objects, which are checked by hand below.
        for line in all.lines().filter(|l| !l.trim().is_empty()) {
            let known_crd = CRD_FILES.iter().any(|(file, kind)| {
                line == format!(
                    "WARN {file} Couldn't find schema for kind {kind} with api version monitoring.coreos.com/v1 \
                     for kubernetes version {minor}"
                )
            });
            assert!(known_crd, "kubernetes-validate -k {version}: unexpected output {line:?}\n{all}");
        }
        for (file, kind) in CRD_FILES {
            assert!(all.contains(&format!("WARN {file} Couldn't find schema for kind {kind}")), "{version}: {all}");
        }
        eprintln!("deploy/kubernetes: {} files validated against Kubernetes {version}", files.len() - CRD_FILES.len());
    }
}

/// Every document of every manifest, parsed by PyYAML (which kubernetes-validate brings), as JSON.
fn manifests() -> Vec<(String, Value)> {
    let dir = root().join("deploy/kubernetes");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    files.sort();
    let out = run(Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml\n\
             json.dump([[f, d] for f in sys.argv[1:] for d in yaml.safe_load_all(open(f)) if d], sys.stdout)",
        ])
        .args(&files)
        .current_dir(&dir));
    assert!(out.status.success(), "parsing {files:?} with PyYAML failed:\n{}", text(&out));
    let docs: Vec<(String, Value)> = serde_json::from_slice(&out.stdout).expect("PyYAML's JSON");
    docs
}

fn kind<'a>(docs: &'a [(String, Value)], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|(_, d)| d["kind"] == kind).map(|(_, d)| d).collect();
    assert_eq!(found.len(), 1, "deploy/kubernetes: expected one {kind}, found {}", found.len());
    found[0]
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default()
}

/// What kubernetes-validate cannot check: the CRD objects' required fields, and that the objects refer to
/// each other correctly (selectors, ports, config, capabilities against the systemd unit's).
#[test]
fn kubernetes_objects_fit_together() {
    let test = "kubernetes_objects_fit_together";
    if !have_kubernetes_validate(test) {
        return;
    }
    let docs = manifests();

    // kustomization.yaml applies every manifest in the directory.
    let listed: BTreeSet<String> = kustomize_resources().into_iter().collect();
    let present: BTreeSet<String> = docs.iter().map(|(f, _)| f.clone()).filter(|f| f != "kustomization.yaml").collect();
    assert_eq!(listed, present, "kustomization.yaml resources vs the manifests in deploy/kubernetes");

    for (file, d) in &docs {
        if d["kind"] == "Namespace" || d["kind"] == "Kustomization" {
            continue;
        }
        assert_eq!(d["metadata"]["namespace"], "twreset", "{file}: {} not in namespace twreset", d["kind"]);
    }
    let ns = kind(&docs, "Namespace");
    for mode in ["enforce", "audit", "warn"] {
        let key = format!("pod-security.kubernetes.io/{mode}");
        assert_eq!(ns["metadata"]["labels"][&key], "privileged", "namespace.yaml: {key}");
    }

    // The DaemonSet.
    let ds = kind(&docs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    let pod_labels = &ds["spec"]["template"]["metadata"]["labels"];
    assert_eq!(&ds["spec"]["selector"]["matchLabels"], pod_labels, "daemonset.yaml: selector vs pod labels");
    assert_eq!(pod["hostNetwork"], true, "daemonset.yaml: hostNetwork");
    assert_eq!(pod["hostPID"], true, "daemonset.yaml: hostPID");
    assert_eq!(pod["dnsPolicy"], "ClusterFirstWithHostNet", "daemonset.yaml: dnsPolicy");
    assert_eq!(pod["tolerations"][0]["operator"], "Exists", "daemonset.yaml: must tolerate every taint");
    assert_eq!(ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"], "10%", "daemonset.yaml");
    let containers = pod["containers"].as_array().expect("daemonset.yaml: containers");
    assert_eq!(containers.len(), 1, "daemonset.yaml: one container");
    let c = &containers[0];
    assert_eq!(strs(&c["args"]), ["agent", "--config", "/etc/twreset/agent.toml"], "daemonset.yaml: args");
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false, "daemonset.yaml: privileged");
    assert_eq!(sc["readOnlyRootFilesystem"], true, "daemonset.yaml: readOnlyRootFilesystem");
    assert_eq!(sc["runAsUser"], 0, "daemonset.yaml: runAsUser");
    assert_eq!(sc["seccompProfile"]["type"], "Unconfined", "daemonset.yaml: seccompProfile");
    assert_eq!(strs(&sc["capabilities"]["drop"]), ["ALL"], "daemonset.yaml: drop ALL first");
    let added: BTreeSet<String> = strs(&sc["capabilities"]["add"]).iter().map(|c| format!("CAP_{c}")).collect();
    let expected: BTreeSet<String> =
        ["BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE", "SYSLOG", "SYS_RESOURCE"]
            .iter()
            .map(|c| format!("CAP_{c}"))
            .collect();
    assert_eq!(added, expected, "daemonset.yaml: capabilities added");
    let unit_caps: BTreeSet<String> =
        unit_settings("CapabilityBoundingSet").join(" ").split_whitespace().map(str::to_owned).collect();
    assert!(added.is_subset(&unit_caps), "daemonset.yaml adds {added:?}, the systemd unit allows {unit_caps:?}");

    // Probes on the health endpoints of the metrics listener, never /metrics.
    let metrics_port = c["ports"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "metrics"))
        .unwrap_or_else(|| panic!("daemonset.yaml: no container port named metrics"))["containerPort"]
        .clone();
    assert_eq!(metrics_port, 9977, "daemonset.yaml: metrics port");
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(c[probe]["httpGet"]["path"], path, "daemonset.yaml: {probe}");
        assert_eq!(c[probe]["httpGet"]["port"], "metrics", "daemonset.yaml: {probe} port");
    }

    // Mounts: every one names a volume; the host paths the agent reads are read-only.
    let volumes: Vec<&Value> = pod["volumes"].as_array().expect("daemonset.yaml: volumes").iter().collect();
    let mounts = c["volumeMounts"].as_array().expect("daemonset.yaml: volumeMounts");
    let host_path = |mount_path: &str| -> (String, bool) {
        let m = mounts
            .iter()
            .find(|m| m["mountPath"] == mount_path)
            .unwrap_or_else(|| panic!("daemonset.yaml: nothing mounted at {mount_path}"));
        let v = volumes
            .iter()
            .find(|v| v["name"] == m["name"])
            .unwrap_or_else(|| panic!("daemonset.yaml: mount {mount_path} names no volume"));
        (v["hostPath"]["path"].as_str().unwrap_or("").to_owned(), m["readOnly"] == true)
    };
    for (mount, host, read_only) in [
        ("/host/proc", "/proc", true),
        ("/sys/fs/cgroup", "/sys/fs/cgroup", true),
        ("/sys/kernel/btf", "/sys/kernel/btf", true),
        ("/var/log/pods", "/var/log/pods", true),
        ("/run/twreset", "/run/twreset", false),
        ("/var/log/twreset", "/var/log/twreset", false),
    ] {
        assert_eq!(host_path(mount), (host.to_owned(), read_only), "daemonset.yaml: mount at {mount}");
    }

    // The ConfigMap is the file the agent is told to read, listening where the probes and Prometheus go.
    let cm = kind(&docs, "ConfigMap");
    let cm_mount = mounts.iter().find(|m| m["mountPath"] == "/etc/twreset").expect("daemonset.yaml: /etc/twreset");
    let cm_volume = volumes.iter().find(|v| v["name"] == cm_mount["name"]).expect("config volume");
    assert_eq!(cm_volume["configMap"]["name"], cm["metadata"]["name"], "daemonset.yaml: config volume");
    let toml = cm["data"]["agent.toml"].as_str().expect("configmap.yaml: data agent.toml");
    for line in
        ["metrics_listen = \"0.0.0.0:9977\"", "proc_root = \"/host/proc\"", "socket = \"/run/twreset/agent.sock\""]
    {
        assert!(toml.lines().any(|l| l.trim() == line), "configmap.yaml: agent.toml lacks `{line}`");
    }

    // Service -> pods, ServiceMonitor -> Service port.
    let svc = kind(&docs, "Service");
    assert_eq!(svc["spec"]["clusterIP"], "None", "service.yaml: headless");
    assert_eq!(&svc["spec"]["selector"], pod_labels, "service.yaml: selector vs the DaemonSet's pods");
    let svc_port = svc["spec"]["ports"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "metrics"))
        .expect("service.yaml: port named metrics");
    assert_eq!(svc_port["port"], 9977, "service.yaml: metrics port");

    let sm = kind(&docs, "ServiceMonitor");
    assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1", "servicemonitor.yaml: apiVersion");
    assert!(sm["metadata"]["name"].is_string(), "servicemonitor.yaml: metadata.name");
    for (k, v) in sm["spec"]["selector"]["matchLabels"].as_object().expect("servicemonitor.yaml: matchLabels") {
        assert_eq!(&svc["metadata"]["labels"][k], v, "servicemonitor.yaml selects label {k} the Service lacks");
    }
    assert!(strs(&sm["spec"]["namespaceSelector"]["matchNames"]).contains(&"twreset"), "servicemonitor.yaml");
    let ep = &sm["spec"]["endpoints"][0];
    assert_eq!(ep["port"], "metrics", "servicemonitor.yaml: endpoint port");
    assert_eq!(ep["interval"], "15s", "servicemonitor.yaml: interval");

    let pr = kind(&docs, "PrometheusRule");
    assert_eq!(pr["apiVersion"], "monitoring.coreos.com/v1", "prometheusrule.yaml: apiVersion");
    assert!(pr["metadata"]["name"].is_string(), "prometheusrule.yaml: metadata.name");
    let groups = pr["spec"]["groups"].as_array().expect("prometheusrule.yaml: spec.groups");
    let rules: Vec<&Value> = groups.iter().flat_map(|g| g["rules"].as_array().expect("group rules")).collect();
    assert_eq!(rules.len(), 6, "prometheusrule.yaml: rules");
    for r in rules {
        let name = r["alert"].as_str().expect("prometheusrule.yaml: every rule is an alert");
        assert!(r["expr"].is_string(), "{name}: expr");
        assert!(
            ["critical", "warning", "info"].contains(&r["labels"]["severity"].as_str().unwrap_or("")),
            "{name}: severity"
        );
        for a in ["summary", "description"] {
            assert!(r["annotations"][a].as_str().is_some_and(|s| !s.is_empty()), "{name}: annotation {a}");
        }
    }
}

/// The DaemonSet's agent.toml (in the ConfigMap) has every key of the documented example
/// (deploy/systemd/agent.toml, the defaults), with the defaults but for where a container differs.
#[test]
fn configmap_agent_toml_matches_the_example() {
    let test = "configmap_agent_toml_matches_the_example";
    if !have_kubernetes_validate(test)
        || !have(
            test,
            "python3 tomllib",
            Command::new("python3").args(["-c", "import tomllib"]),
            "python 3.11 or later",
        )
    {
        return;
    }
    let out = run(Command::new("python3").args([
        "-c",
        "import json, sys, tomllib, yaml\n\
         cm = yaml.safe_load(open('deploy/kubernetes/configmap.yaml'))['data']['agent.toml']\n\
         json.dump([tomllib.load(open('deploy/systemd/agent.toml', 'rb')), tomllib.loads(cm)], sys.stdout)",
    ]));
    assert!(out.status.success(), "parsing the two agent.toml files failed:\n{}", text(&out));
    let [example, cm]: [Value; 2] = serde_json::from_slice(&out.stdout).expect("two TOML documents as JSON");
    let flat = |v: &Value| -> Vec<(String, Value)> {
        let mut rows = Vec::new();
        for (k, v) in v.as_object().expect("a TOML table") {
            match v.as_object() {
                Some(t) => rows.extend(t.iter().map(|(k2, v2)| (format!("{k}.{k2}"), v2.clone()))),
                None => rows.push((k.clone(), v.clone())),
            }
        }
        rows
    };
    let (example, cm) = (flat(&example), flat(&cm));
    let keys = |rows: &[(String, Value)]| rows.iter().map(|(k, _)| k.clone()).collect::<BTreeSet<_>>();
    assert_eq!(keys(&cm), keys(&example), "configmap.yaml's agent.toml vs deploy/systemd/agent.toml: keys");
    let differ: BTreeSet<&str> = ["metrics_listen", "proc_root"].into();
    for (k, v) in &cm {
        let default = &example.iter().find(|(e, _)| e == k).unwrap().1;
        assert_eq!(v == default, !differ.contains(k.as_str()), "configmap.yaml: {k} = {v} (example: {default})");
    }
}

/// Settings of the systemd unit (`Key=value` lines, comments skipped), all values of `key` in order.
fn unit_settings(key: &str) -> Vec<String> {
    read(UNIT)
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with(';'))
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().to_owned())
        .collect()
}

fn unit_setting(key: &str) -> Option<String> {
    unit_settings(key).pop()
}

/// The settings the agent relies on, and none of the traps (issue 21).
#[test]
fn systemd_unit_keeps_what_the_agent_needs() {
    for (key, value) in [
        ("Type", "notify"),
        ("ExecStart", EXEC_START),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("Restart", "on-failure"),
        ("RuntimeDirectory", "twreset"),
        ("LogsDirectory", "twreset"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectControlGroups", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("LockPersonality", "yes"),
        ("RestrictNamespaces", "net"),
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6 AF_NETLINK"),
    ] {
        assert_eq!(unit_setting(key).as_deref(), Some(value), "{UNIT}: {key}=");
    }
    assert!(unit_setting("WatchdogSec").is_some(), "{UNIT}: no WatchdogSec=");
    let filter = unit_settings("SystemCallFilter").join(" ");
    for call in ["@system-service", "bpf", "perf_event_open"] {
        assert!(filter.split_whitespace().any(|w| w == call), "{UNIT}: SystemCallFilter= lacks {call}: {filter}");
    }
    // Each of these would break the agent (see the comments in the unit).
    for (key, trap) in [
        ("ProtectKernelTunables", "hides /proc/kallsyms"),
        ("ProtectKernelLogs", "drops CAP_SYSLOG"),
        ("PrivateNetwork", "cuts the agent off from the host's network namespace"),
        ("PrivateUsers", "makes its capabilities useless for BPF"),
        ("ProcSubset", "hides /proc/kallsyms"),
    ] {
        let v = unit_setting(key);
        assert!(v.as_deref().is_none_or(|v| ["no", "false", "all"].contains(&v)), "{UNIT}: {key}={v:?} {trap}");
    }
    let caps = unit_settings("CapabilityBoundingSet").join(" ");
    for cap in ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_SYS_PTRACE", "CAP_SYSLOG"] {
        assert!(caps.split_whitespace().any(|c| c == cap), "{UNIT}: CapabilityBoundingSet= lacks {cap}");
    }
}

/// `systemd-analyze verify` on a copy whose ExecStart names a binary that exists here, failing on any
/// message about the unit (unknown keys, bad values are only warnings to it).
#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let test = "systemd_unit_passes_systemd_analyze_verify";
    if !have(test, "systemd-analyze", Command::new("systemd-analyze").arg("--version"), "apt-get install systemd") {
        return;
    }
    let unit = read(UNIT);
    assert_eq!(unit_setting("ExecStart").as_deref(), Some(EXEC_START), "{UNIT}: ExecStart=");
    // The twreset binary when it is built, else this test's own executable: verify checks it is executable.
    let twreset =
        std::env::var_os("TWRESET_BIN").map(PathBuf::from).unwrap_or_else(|| root().join("target/release/twreset"));
    let bin = if twreset.is_file() { twreset } else { std::env::current_exe().expect("current_exe") };
    let dir = std::env::temp_dir().join(format!("twreset-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let verify = |name: &str, contents: &str| -> (bool, Vec<String>, String) {
        let path = dir.join(name);
        std::fs::write(&path, contents.replace("/usr/local/bin/twreset ", &format!("{} ", bin.display())))
            .expect("writing the unit copy");
        let out = Command::new("systemd-analyze").arg("verify").arg(&path).output().expect("systemd-analyze");
        let all = text(&out);
        let about_unit: Vec<String> = all
            .lines()
            .filter(|l| l.contains("twreset-agent") || l.contains(&*dir.to_string_lossy()))
            .map(str::to_owned)
            .collect();
        (out.status.success(), about_unit, all)
    };
    let (ok, about_unit, all) = verify("twreset-agent.service", &unit);
    // The check itself must be able to fail: a copy with an unknown key has to produce a message.
    let (_, about_broken, broken_all) =
        verify("twreset-agent-broken.service", &unit.replace("[Service]\n", "[Service]\nNoSuchSetting=1\n"));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(ok, "systemd-analyze verify {UNIT} failed:\n{all}");
    assert!(about_unit.is_empty(), "systemd-analyze verify {UNIT} complains:\n{}", about_unit.join("\n"));
    assert!(
        about_broken.iter().any(|l| l.contains("NoSuchSetting")),
        "systemd-analyze verify did not flag an unknown key, so its silence proves nothing:\n{broken_all}"
    );
    eprintln!("systemd-analyze verify {UNIT}: clean (ExecStart={} agent ...)", bin.display());
}

/// Every metric an alert uses is one the agent documents (docs/guide/agent.md, written with the agent).
#[test]
fn alert_metrics_are_in_the_agent_metrics_table() {
    let rules = read(RULES);
    let mut metrics = BTreeSet::new();
    for line in rules.lines().filter_map(|l| l.trim().strip_prefix("expr:")) {
        let mut rest = line;
        while let Some(i) = rest.find("twreset_") {
            let name: String =
                rest[i..].chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_').collect();
            rest = &rest[i + name.len()..];
            metrics.insert(name);
        }
    }
    assert_eq!(metrics.len(), 4, "{RULES}: expected the four twreset metrics the alerts use, found {metrics:?}");
    let doc = root().join("docs/guide/agent.md");
    let Ok(doc) = std::fs::read_to_string(&doc) else {
        eprintln!("SKIPPED alert_metrics_are_in_the_agent_metrics_table: {} is not on this branch", doc.display());
        return;
    };
    let table: Vec<&str> = doc.lines().filter(|l| l.trim_start().starts_with('|')).collect();
    for m in &metrics {
        assert!(
            table.iter().any(|row| row.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).any(|w| w == m)),
            "{RULES} alerts on {m}, which is in no table row of docs/guide/agent.md"
        );
    }
}
