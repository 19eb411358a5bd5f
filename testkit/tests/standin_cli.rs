//! The `apivip-standin` binary: the stand-in apiserver the quickstart starts by hand.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn have(tool: &str) -> bool {
    apivip_testkit::have_tool(tool, "version")
}

#[test]
fn standin_cli_prints_its_address_and_serves() {
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("cert.pem");
    let mut child = Command::new(env!("CARGO_BIN_EXE_apivip-standin"))
        .args(["--listen", "127.0.0.1:0", "--san", "192.0.2.100"])
        .arg("--san")
        .arg("localhost")
        .arg("--cert-out")
        .arg(&pem)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.starts_with("listening on 127.0.0.1:"), "{line}");
    let text = std::fs::read_to_string(&pem).unwrap();
    assert!(text.contains("BEGIN CERTIFICATE"));
    if have("openssl") {
        let out = Command::new("openssl")
            .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
            .arg(&pem)
            .output()
            .unwrap();
        let sans = String::from_utf8_lossy(&out.stdout);
        assert!(
            sans.contains("IP Address:192.0.2.100") && sans.contains("DNS:localhost"),
            "{sans}"
        );
    }
}
