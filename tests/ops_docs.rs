//! docs/configuration.md cannot rot: every config field is described, and every shell
//! command it shows runs.

use std::path::Path;
use std::process::Command;

fn doc(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every leaf field of a config that sets every optional field.
fn all_fields() -> Vec<String> {
    let text = r#"
node_id = 1
[vip]
address = "192.0.2.100/24"
mode = "bgp"
interface = "eth0"
label = "eth0:vip"
[bgp]
local_as = 65001
peer_as = 65000
routers = ["192.0.2.1"]
router_id = "192.0.2.11"
[[peers]]
id = 1
address = "192.0.2.11"
apiserver = "192.0.2.11:6443"
[[peers]]
id = 2
address = "192.0.2.12"
[[peers]]
id = 3
address = "192.0.2.13"
[health]
ca_file = "/etc/kubernetes/pki/ca.crt"
"#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    let loaded = apivip::config::load(&apivip::config::Sources {
        file: Some(path),
        env: vec![],
        sets: vec![],
    })
    .unwrap();
    // The effective form resolves every optional timing too.
    let effective: toml::Table = loaded.config.to_effective_toml().parse().unwrap();
    let mut out = Vec::new();
    walk("", &toml::Value::Table(effective), &mut out);
    out.sort();
    out.dedup();
    out
}

fn walk(prefix: &str, v: &toml::Value, out: &mut Vec<String>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                // Tables are sections with their own heading; the rest are rows.
                if !v.is_table() {
                    out.push(p.clone());
                }
                walk(&p, v, out);
            }
        }
        toml::Value::Array(a) => {
            for v in a {
                walk(prefix, v, out);
            }
        }
        _ => {}
    }
}

#[test]
fn every_config_field_is_documented() {
    let text = doc("configuration.md");
    let fields = all_fields();
    assert!(fields.len() > 30, "{fields:?}");
    let mut missing = Vec::new();
    for f in &fields {
        let leaf = f.rsplit('.').next().unwrap();
        if !text.contains(&format!("| `{leaf}` |")) {
            missing.push(f.clone());
        }
        // Sections are documented under their own heading.
        if let Some((section, _)) = f.split_once('.') {
            let heading = if section == "peers" {
                "## `[[peers]]`".to_owned()
            } else {
                format!("## `[{section}]`")
            };
            assert!(text.contains(&heading), "no heading {heading}");
        }
    }
    assert!(missing.is_empty(), "undocumented fields: {missing:?}");
}

/// The ```sh blocks, joined across backslash continuations.
fn shell_commands(md: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_block = false;
    let mut cur = String::new();
    for line in md.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block && line.trim() == "```sh";
            continue;
        }
        if !in_block {
            continue;
        }
        let l = line.trim();
        if let Some(head) = l.strip_suffix('\\') {
            cur.push_str(head);
            cur.push(' ');
        } else {
            cur.push_str(l);
            if !cur.trim().is_empty() && !cur.trim_start().starts_with('#') {
                out.push(cur.clone());
            }
            cur.clear();
        }
    }
    out
}

#[test]
fn every_command_in_the_configuration_doc_runs() {
    let cmds = shell_commands(&doc("configuration.md"));
    assert!(!cmds.is_empty());
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_apivip")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for cmd in cmds {
        // Only apivip commands (with env assignments in front) are run from docs.
        let words: Vec<&str> = cmd.split_whitespace().collect();
        let first = words.iter().find(|w| !w.contains('=')).unwrap();
        assert_eq!(*first, "apivip", "a doc command that is not apivip: {cmd}");
        let mut c = Command::new("sh");
        c.args(["-c", &cmd]).env("PATH", &path);
        for (k, _) in std::env::vars() {
            if k.starts_with("APIVIP_") {
                c.env_remove(k);
            }
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "`{cmd}` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
