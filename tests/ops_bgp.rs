//! `vip.mode = "bgp"` from the command line, no root needed: `apivip manifest bird` prints
//! a configuration BIRD itself accepts, and `apivip doctor` reads a speaker's sessions and
//! exports through BIRD's control socket (here a stand-in speaking its protocol).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_apivip");

fn node(dir: &Path, socket: &Path) -> std::path::PathBuf {
    let p = dir.join("node1.toml");
    std::fs::write(
        &p,
        format!(
            r#"node_id = 1
[vip]
address = "192.0.2.200"
mode = "bgp"
interface = "lo"
[bgp]
local_as = 65001
peer_as = 65000
routers = ["192.0.2.9"]
socket = "{}"
[health]
check = "none"
[[peers]]
id = 1
address = "192.0.2.10"
[[peers]]
id = 2
address = "192.0.2.18"
[[peers]]
id = 3
address = "192.0.2.26"
"#,
            socket.display()
        ),
    )
    .unwrap();
    p
}

fn bird_binary() -> Option<&'static str> {
    ["/usr/sbin/bird", "/usr/bin/bird"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

#[test]
fn the_printed_bird_config_is_one_bird_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = node(dir.path(), &dir.path().join("bird.ctl"));
    let out = Command::new(BIN)
        .args(["manifest", "bird", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("if net = 192.0.2.200/32"), "{text}");
    let Some(bird) = bird_binary() else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("bird is not installed (scripts/install-deps.sh test installs bird2)");
        }
        eprintln!("skipping the parse check: bird is not installed");
        return;
    };
    let conf = dir.path().join("bird.conf");
    std::fs::write(&conf, &text).unwrap();
    let parsed = Command::new(bird)
        .arg("-p")
        .arg("-c")
        .arg(&conf)
        .output()
        .unwrap();
    assert!(
        parsed.status.success(),
        "bird -p refused it: {}\n{text}",
        String::from_utf8_lossy(&parsed.stderr)
    );
    // A config BIRD refuses makes `bird -p` fail: the check above can fail.
    std::fs::write(&conf, text.replace("reject;", "refuse;")).unwrap();
    let bad = Command::new(bird)
        .arg("-p")
        .arg("-c")
        .arg(&conf)
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

#[test]
fn manifest_bird_refuses_an_l2_config() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = node(dir.path(), &dir.path().join("bird.ctl"));
    let text = std::fs::read_to_string(&cfg).unwrap();
    let l2: String = text
        .lines()
        .take_while(|l| !l.starts_with("[bgp]"))
        .filter(|l| !l.starts_with("mode"))
        .chain(text.lines().skip_while(|l| !l.starts_with("[health]")))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&cfg, l2).unwrap();
    let out = Command::new(BIN)
        .args(["manifest", "bird", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("vip.mode is not \"bgp\""), "{err}");
}

/// A stand-in for BIRD's control socket: the greeting, then one canned reply per
/// command (by prefix); anything else is a syntax error, as BIRD says it.
fn fake_bird(path: &Path, exported: &'static str) {
    let l = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut s) = conn else { return };
            std::thread::spawn(move || {
                let _ = s.write_all(b"0001 BIRD 2.0.12 ready.\n");
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut cmd = String::new();
                while r.read_line(&mut cmd).unwrap_or(0) > 0 {
                    let reply = if cmd.starts_with("show protocols all") {
                        "2002-Name       Proto      Table      State  Since         Info\n\
                         1002-apivip_r1  BGP        ---        up     06:00:39.063  Established\n\
                         1006-  BGP state:          Established\n     Neighbor address: 192.0.2.9\n \n0000 \n"
                            .to_string()
                    } else if cmd.starts_with("show route export apivip_r1") {
                        format!("1007-Table master4:\n{exported}0000 \n")
                    } else {
                        "9001 syntax error\n".to_string()
                    };
                    let _ = s.write_all(reply.as_bytes());
                    cmd.clear();
                }
            });
        }
    });
}

fn doctor(cfg: &Path) -> (bool, String) {
    let out = Command::new(BIN)
        .args(["doctor", "--no-forwarder", "--timeout", "200ms", "--config"])
        .arg(cfg)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn line<'a>(report: &'a str, check: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.contains(check))
        .unwrap_or_else(|| panic!("no {check:?} line in:\n{report}"))
}

#[test]
fn doctor_reads_the_speaker_and_fails_an_export_beyond_the_vip() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.ctl");
    fake_bird(
        &good,
        " 192.0.2.200/32       unicast [apivip_vip 06:00:53.669] * (240)\n \tdev apivip0\n",
    );
    let (_, r) = doctor(&node(dir.path(), &good));
    assert!(line(&r, "bgp speaker").starts_with("OK"), "{r}");
    assert!(line(&r, "BIRD 2.0.12 answers").starts_with("OK"), "{r}");
    assert!(line(&r, "bgp session 192.0.2.9").starts_with("OK"), "{r}");
    assert!(
        line(&r, "bgp export apivip_r1").contains("exports only 192.0.2.200/32"),
        "{r}"
    );

    let leaky = dir.path().join("leaky.ctl");
    fake_bird(
        &leaky,
        " 192.0.2.200/32       unicast [apivip_vip 06:00:53.669] * (240)\n \tdev apivip0\n 192.0.2.8/29 unicast [direct1 06:00:53.669] * (240)\n \tdev eth0\n",
    );
    let (ok, r) = doctor(&node(dir.path(), &leaky));
    assert!(!ok, "{r}");
    let l = line(&r, "bgp export apivip_r1");
    assert!(
        l.starts_with("FAIL") && l.contains("exports 192.0.2.8/29 besides the VIP"),
        "{r}"
    );

    let (ok, r) = doctor(&node(dir.path(), &dir.path().join("absent.ctl")));
    assert!(!ok, "{r}");
    let l = line(&r, "bgp speaker");
    assert!(
        l.starts_with("FAIL") && l.contains("is BIRD running"),
        "{r}"
    );
}
