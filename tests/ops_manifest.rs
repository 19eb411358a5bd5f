//! The deployment files in deploy/: equal to what the generators print, and valid as a
//! Pod, a systemd unit, a kubeadm config and apivip configs, checked offline.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use apivip::manifest::{self, Options};
use yaml_rust2::{Yaml, YamlLoader};

fn deploy(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(name)
}

fn read(name: &str) -> String {
    std::fs::read_to_string(deploy(name)).unwrap_or_else(|e| panic!("deploy/{name}: {e}"))
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Whether a tool is on PATH; under CI its absence fails the test instead of skipping.
fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            !in_ci(),
            "{tool} is missing; scripts/install-deps.sh test installs it"
        );
        eprintln!("SKIP: {tool} not installed (scripts/install-deps.sh test installs it)");
    }
    found
}

fn apivip() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_apivip"));
    // The developer's own APIVIP_* variables would override the files under test.
    for (k, _) in std::env::vars() {
        if k.starts_with("APIVIP_") {
            c.env_remove(k);
        }
    }
    c
}

#[test]
fn checked_in_copies_equal_the_generators() {
    let o = Options::default();
    assert_eq!(
        read("static-pod.yaml"),
        manifest::static_pod(&o).unwrap(),
        "deploy/static-pod.yaml is stale: apivip manifest static-pod > deploy/static-pod.yaml"
    );
    assert_eq!(
        read("apivip.service"),
        manifest::systemd_unit(&o).unwrap(),
        "deploy/apivip.service is stale: apivip manifest systemd > deploy/apivip.service"
    );
    // And the CLI prints the same thing.
    let out = apivip().args(["manifest", "static-pod"]).output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        read("static-pod.yaml")
    );
    let out = apivip().args(["manifest", "systemd"]).output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        read("apivip.service")
    );
}

// ===== an offline schema for the part of core/v1 Pod the manifest uses =====

enum S {
    Str,
    Int,
    Bool,
    /// Quantity: a string like `50m` or an integer.
    Quantity,
    /// IntOrString (probe ports).
    IntOrStr,
    List(Box<S>),
    /// Allowed fields, each with its schema and whether it is required.
    Obj(Vec<(&'static str, S, bool)>),
    /// A string-to-string map (labels).
    StrMap,
}

fn obj(fields: Vec<(&'static str, S, bool)>) -> S {
    S::Obj(fields)
}

fn list(s: S) -> S {
    S::List(Box::new(s))
}

fn http_get() -> S {
    obj(vec![
        ("host", S::Str, false),
        ("path", S::Str, false),
        ("port", S::IntOrStr, true),
        ("scheme", S::Str, false),
    ])
}

fn probe() -> S {
    obj(vec![
        ("httpGet", http_get(), true),
        ("initialDelaySeconds", S::Int, false),
        ("periodSeconds", S::Int, false),
        ("timeoutSeconds", S::Int, false),
        ("failureThreshold", S::Int, false),
        ("successThreshold", S::Int, false),
    ])
}

fn pod_schema() -> S {
    let container = obj(vec![
        ("name", S::Str, true),
        ("image", S::Str, true),
        ("imagePullPolicy", S::Str, false),
        ("command", list(S::Str), false),
        ("args", list(S::Str), false),
        (
            "env",
            list(obj(vec![("name", S::Str, true), ("value", S::Str, false)])),
            false,
        ),
        (
            "securityContext",
            obj(vec![
                ("runAsUser", S::Int, false),
                ("allowPrivilegeEscalation", S::Bool, false),
                ("readOnlyRootFilesystem", S::Bool, false),
                ("privileged", S::Bool, false),
                (
                    "capabilities",
                    obj(vec![
                        ("add", list(S::Str), false),
                        ("drop", list(S::Str), false),
                    ]),
                    false,
                ),
            ]),
            false,
        ),
        (
            "resources",
            obj(vec![
                (
                    "requests",
                    obj(vec![
                        ("cpu", S::Quantity, false),
                        ("memory", S::Quantity, false),
                    ]),
                    false,
                ),
                (
                    "limits",
                    obj(vec![
                        ("cpu", S::Quantity, false),
                        ("memory", S::Quantity, false),
                    ]),
                    false,
                ),
            ]),
            false,
        ),
        ("livenessProbe", probe(), false),
        ("readinessProbe", probe(), false),
        ("startupProbe", probe(), false),
        (
            "volumeMounts",
            list(obj(vec![
                ("name", S::Str, true),
                ("mountPath", S::Str, true),
                ("readOnly", S::Bool, false),
            ])),
            false,
        ),
    ]);
    let volume = obj(vec![
        ("name", S::Str, true),
        (
            "hostPath",
            obj(vec![("path", S::Str, true), ("type", S::Str, false)]),
            false,
        ),
    ]);
    obj(vec![
        ("apiVersion", S::Str, true),
        ("kind", S::Str, true),
        (
            "metadata",
            obj(vec![
                ("name", S::Str, true),
                ("namespace", S::Str, false),
                ("labels", S::StrMap, false),
                ("annotations", S::StrMap, false),
            ]),
            true,
        ),
        (
            "spec",
            obj(vec![
                ("hostNetwork", S::Bool, false),
                ("priorityClassName", S::Str, false),
                ("terminationGracePeriodSeconds", S::Int, false),
                ("containers", list(container), true),
                ("volumes", list(volume), false),
            ]),
            true,
        ),
    ])
}

fn check(path: &str, y: &Yaml, s: &S, errs: &mut Vec<String>) {
    let ok = match (s, y) {
        (S::Str, Yaml::String(_)) => true,
        (S::Int, Yaml::Integer(_)) => true,
        (S::Bool, Yaml::Boolean(_)) => true,
        (S::Quantity | S::IntOrStr, Yaml::String(_) | Yaml::Integer(_)) => true,
        (S::StrMap, Yaml::Hash(h)) => {
            for (k, v) in h {
                if !matches!((k, v), (Yaml::String(_), Yaml::String(_))) {
                    errs.push(format!("{path}: {k:?}: {v:?} is not string: string"));
                }
            }
            true
        }
        (S::List(item), Yaml::Array(a)) => {
            for (i, v) in a.iter().enumerate() {
                check(&format!("{path}[{i}]"), v, item, errs);
            }
            true
        }
        (S::Obj(fields), Yaml::Hash(h)) => {
            for (k, v) in h {
                let name = k.as_str().unwrap_or("<non-string key>");
                match fields.iter().find(|(f, _, _)| *f == name) {
                    Some((_, fs, _)) => check(&format!("{path}.{name}"), v, fs, errs),
                    None => errs.push(format!("{path}.{name}: unknown field")),
                }
            }
            for (f, _, required) in fields {
                if *required && !h.contains_key(&Yaml::String((*f).into())) {
                    errs.push(format!("{path}.{f}: required"));
                }
            }
            true
        }
        _ => false,
    };
    if !ok {
        errs.push(format!("{path}: wrong type: {y:?}"));
    }
}

fn strings(y: &Yaml) -> Vec<String> {
    y.as_vec()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

fn load_pod(text: &str) -> Yaml {
    let docs = YamlLoader::load_from_str(text).unwrap();
    assert_eq!(docs.len(), 1);
    let pod = docs[0].clone();
    let mut errs = Vec::new();
    check("", &pod, &pod_schema(), &mut errs);
    assert!(errs.is_empty(), "schema errors: {errs:#?}");
    pod
}

#[test]
fn the_static_pod_is_a_valid_pod_with_the_required_settings() {
    let pod = load_pod(&read("static-pod.yaml"));
    assert_eq!(pod["apiVersion"].as_str(), Some("v1"));
    assert_eq!(pod["kind"].as_str(), Some("Pod"));
    assert_eq!(pod["metadata"]["namespace"].as_str(), Some("kube-system"));
    let spec = &pod["spec"];
    assert_eq!(spec["hostNetwork"].as_bool(), Some(true));
    assert_eq!(
        spec["priorityClassName"].as_str(),
        Some("system-node-critical")
    );
    let c = &spec["containers"][0];
    assert_eq!(
        strings(&c["command"]),
        [
            "/usr/local/bin/apivip",
            "run",
            "--config",
            "/etc/apivip/config.toml"
        ]
    );
    let caps = &c["securityContext"]["capabilities"];
    assert_eq!(strings(&caps["drop"]), ["ALL"]);
    let add: BTreeSet<_> = strings(&caps["add"]).into_iter().collect();
    assert_eq!(add, BTreeSet::from(["NET_ADMIN".into(), "NET_RAW".into()]));
    assert!(
        c["securityContext"]["privileged"].is_badvalue(),
        "must not be privileged"
    );

    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let g = &c[probe]["httpGet"];
        assert_eq!(g["path"].as_str(), Some(path));
        assert_eq!(g["host"].as_str(), Some("127.0.0.1"));
        assert_eq!(g["port"].as_i64(), Some(9405));
    }
    // The daemon is told to listen where the probes look.
    let env: BTreeMap<_, _> = c["env"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e["value"].as_str().unwrap()))
        .collect();
    assert_eq!(env["APIVIP_METRICS__ADDRESS"], "127.0.0.1:9405");
    assert_eq!(env["APIVIP_KEY_FILE"], "/etc/apivip/key");

    // Every mount has a hostPath volume; config and key are read-only.
    let volumes: BTreeMap<_, _> = spec["volumes"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap(),
                v["hostPath"]["path"].as_str().unwrap(),
            )
        })
        .collect();
    let types: BTreeMap<_, _> = spec["volumes"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["hostPath"]["path"].as_str().unwrap(),
                v["hostPath"]["type"].as_str().unwrap_or(""),
            )
        })
        .collect();
    let mut mounted = BTreeMap::new();
    for m in c["volumeMounts"].as_vec().unwrap() {
        let name = m["name"].as_str().unwrap();
        let host = volumes
            .get(name)
            .unwrap_or_else(|| panic!("mount {name} has no volume"));
        assert_eq!(
            Some(*host),
            m["mountPath"].as_str(),
            "same path inside and out"
        );
        mounted.insert(host.to_string(), m["readOnly"].as_bool().unwrap_or(false));
    }
    // The directory, not the files: an editor's atomic save replaces the file, and a file
    // mount would keep the old one in the container after SIGHUP.
    assert!(mounted["/etc/apivip"]);
    assert!(!mounted.contains_key("/etc/apivip/config.toml"));
    assert!(!mounted["/var/lib/apivip"]);
    assert!(!mounted["/run/apivip"]);
    // The process-owned VIP device needs the TUN device, which no runtime puts in a
    // container's /dev and which the pod (without CAP_MKNOD) cannot make.
    assert!(mounted.contains_key("/dev/net/tun"), "{mounted:?}");
    assert_eq!(types["/dev/net/tun"], "CharDevice");
}

#[test]
fn the_schema_check_can_fail() {
    let bad = read("static-pod.yaml")
        .replace("hostNetwork: true", "hostNetwrk: true")
        .replace("readOnly: true", "readOnly: \"yes\"");
    let docs = YamlLoader::load_from_str(&bad).unwrap();
    let mut errs = Vec::new();
    check("", &docs[0], &pod_schema(), &mut errs);
    assert!(
        errs.iter().any(|e| e == ".spec.hostNetwrk: unknown field"),
        "{errs:?}"
    );
    assert!(
        errs.iter().any(|e| e.contains("readOnly: wrong type")),
        "{errs:?}"
    );
}

#[test]
fn options_reach_the_static_pod() {
    let o = Options {
        image: "registry.example/apivip:dev".into(),
        config: "/srv/apivip.toml".into(),
        key: "/srv/apivip.key".into(),
        metrics: "127.0.0.1:19405".parse().unwrap(),
        ..Options::default()
    };
    let pod = load_pod(&manifest::static_pod(&o).unwrap());
    let c = &pod["spec"]["containers"][0];
    assert_eq!(c["image"].as_str(), Some("registry.example/apivip:dev"));
    assert_eq!(c["command"][3].as_str(), Some("/srv/apivip.toml"));
    assert_eq!(c["readinessProbe"]["httpGet"]["port"].as_i64(), Some(19405));
    // Config and key share /srv: one read-only directory mount.
    let mounts: Vec<&str> = c["volumeMounts"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|m| m["mountPath"].as_str())
        .collect();
    assert_eq!(
        mounts.iter().filter(|m| **m == "/srv").count(),
        1,
        "{mounts:?}"
    );
    // A key elsewhere gets its own directory mount.
    let o = Options {
        key: "/etc/apivip-keys/key".into(),
        ..o
    };
    let pod = load_pod(&manifest::static_pod(&o).unwrap());
    let mounts: Vec<String> = pod["spec"]["containers"][0]["volumeMounts"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|m| m["mountPath"].as_str().map(String::from))
        .collect();
    assert!(
        mounts.contains(&"/srv".to_string()) && mounts.contains(&"/etc/apivip-keys".to_string()),
        "{mounts:?}"
    );
}

#[test]
fn kubectl_reads_the_static_pod_offline() {
    if !have("kubectl") {
        return;
    }
    // `kubectl apply --dry-run=client` needs an apiserver for discovery; `label --local`
    // decodes the manifest the same way without one.
    let out = Command::new("kubectl")
        .env("KUBECONFIG", "/dev/null")
        .args(["label", "--local", "-o", "name", "-f"])
        .arg(deploy("static-pod.yaml"))
        .arg("checked=yes")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "pod/apivip");
}

/// `[Section]` -> key -> values (a key may repeat, e.g. Environment=).
fn parse_unit(text: &str) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut out: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut section = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = Some(s.to_owned());
            out.entry(s.to_owned()).or_default();
            continue;
        }
        let sec = section
            .clone()
            .unwrap_or_else(|| panic!("line {}: key outside a section", n + 1));
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("line {}: not Key=Value: {line}", n + 1));
        assert!(
            !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric()),
            "line {}: bad key {k}",
            n + 1
        );
        out.entry(sec)
            .or_default()
            .entry(k.to_owned())
            .or_default()
            .push(v.to_owned());
    }
    out
}

#[test]
fn the_unit_parses_with_the_required_settings() {
    let unit = parse_unit(&read("apivip.service"));
    assert_eq!(
        unit.keys().collect::<Vec<_>>(),
        ["Install", "Service", "Unit"]
    );
    let s = &unit["Service"];
    let one = |k: &str| -> &str {
        let v = s.get(k).unwrap_or_else(|| panic!("[Service] {k} missing"));
        assert_eq!(v.len(), 1, "{k} set twice");
        &v[0]
    };
    assert_eq!(one("Type"), "notify");
    assert_eq!(one("Restart"), "always");
    assert_eq!(one("RestartSec"), "1");
    assert_eq!(one("CapabilityBoundingSet"), "CAP_NET_ADMIN CAP_NET_RAW");
    assert_eq!(one("AmbientCapabilities"), "CAP_NET_ADMIN CAP_NET_RAW");
    assert_eq!(one("NoNewPrivileges"), "yes");
    assert_eq!(one("ProtectSystem"), "strict");
    assert_eq!(one("ReadWritePaths"), "/var/lib/apivip /run/apivip");
    assert_eq!(one("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(one("KillSignal"), "SIGTERM");
    assert!(one("TimeoutStopSec").parse::<u32>().is_ok());
    assert_eq!(
        one("ExecStart"),
        "/usr/local/bin/apivip run --config /etc/apivip/config.toml"
    );
    assert_eq!(unit["Install"]["WantedBy"], ["multi-user.target"]);
}

#[test]
fn systemd_analyze_verifies_the_unit() {
    if !have("systemd-analyze") {
        return;
    }
    // verify insists the ExecStart binary exists, so point it at the one under test.
    let o = Options {
        binary: env!("CARGO_BIN_EXE_apivip").into(),
        ..Options::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("apivip.service");
    std::fs::write(&path, manifest::systemd_unit(&o).unwrap()).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    // verify exits 0 on unknown keys and bad values, printing them; so any output fails.
    assert!(
        out.status.success() && err.trim().is_empty(),
        "systemd-analyze verify: {err}"
    );

    let typo = manifest::systemd_unit(&o)
        .unwrap()
        .replace("Restart=", "Restrt=");
    std::fs::write(&path, typo).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Restrt"),
        "the verify check cannot catch a typo"
    );
}

#[test]
fn the_kubeadm_config_puts_the_endpoint_on_the_vip_and_in_cert_sans() {
    let docs = YamlLoader::load_from_str(&read("kubeadm-config.yaml")).unwrap();
    let cluster = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("ClusterConfiguration"))
        .expect("a ClusterConfiguration document");
    assert!(
        cluster["apiVersion"]
            .as_str()
            .unwrap()
            .starts_with("kubeadm.k8s.io/")
    );
    let endpoint = cluster["controlPlaneEndpoint"].as_str().unwrap();
    let (host, port) = endpoint.rsplit_once(':').unwrap();
    assert_eq!(port, "8443", "the forwarder's port");
    let sans = strings(&cluster["apiServer"]["certSANs"]);
    assert!(sans.iter().any(|s| s == host), "{sans:?}");

    // The same VIP as the example node configs.
    let node1: toml::Table = read("examples/node1.toml").parse().unwrap();
    let vip = node1["vip"]["address"].as_str().unwrap();
    assert_eq!(vip.split('/').next(), Some(host));
}

#[test]
fn every_example_config_passes_check_config() {
    let dir = deploy("examples");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let out = apivip()
            .arg("check-config")
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        n += 1;
    }
    assert!(n >= 4, "expected node1-3 and worker-proxy, found {n}");
}

/// The worker's pod: checked in, a valid pod, proxy-only, no key, no capability.
#[test]
fn the_worker_static_pod_is_proxy_only_with_no_capabilities() {
    let o = Options {
        proxy_only: true,
        ..Options::default()
    };
    let text = manifest::static_pod(&o).unwrap();
    assert_eq!(
        read("static-pod-worker.yaml"),
        text,
        "deploy/static-pod-worker.yaml is stale: apivip manifest static-pod --proxy-only > deploy/static-pod-worker.yaml"
    );
    let pod = load_pod(&text);
    let c = &pod["spec"]["containers"][0];
    assert_eq!(
        strings(&c["command"]),
        [
            "/usr/local/bin/apivip",
            "run",
            "--proxy-only",
            "--config",
            "/etc/apivip/config.toml"
        ]
    );
    let caps = &c["securityContext"]["capabilities"];
    assert_eq!(strings(&caps["drop"]), ["ALL"]);
    assert!(caps["add"].is_badvalue(), "a worker needs no capability");
    assert!(
        !text.contains("/etc/apivip/key"),
        "a worker has no key:\n{text}"
    );
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(c[probe]["httpGet"]["port"].as_i64(), Some(9405));
    }
    let out = apivip()
        .args(["manifest", "static-pod", "--proxy-only"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), text);
}
