//! The image, started the way a kubelet starts it: deploy/build-image.sh builds it from
//! deploy/Containerfile, and runc runs it with exactly what `apivip manifest static-pod`
//! grants (a container's minimal /dev, the pod's capabilities and nothing else, a
//! read-only root, the pod's hostPath mounts and user), in a network namespace the test
//! builds as the node's. The control-plane pod must elect itself, hold the VIP, serve
//! clients through the forwarder and /healthz, and exit 0 on SIGTERM with the VIP
//! released; the worker's pod, with no capability at all, must proxy and exit 0 too.
//!
//! Needs root, buildah and runc (scripts/install-deps.sh test); skips without them,
//! except under CI=true, where it fails.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use apivip_testkit::netns::{AddrProbe, Topology, TopologySpec, VIP4, require_root};
use apivip_testkit::pod::{Placement, PodSpec, RunningPod};
use apivip_testkit::standin::{NsStandins, StandinArgs, serve_in};

const BIN: &str = env!("CARGO_BIN_EXE_apivip");
const METRICS: &str = "127.0.0.1:9405";

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok()
}

/// True when this test can run; says why not (or fails under CI=true) otherwise.
fn can_run(test: &str) -> bool {
    if !require_root(test) {
        return false;
    }
    for tool in ["buildah", "runc"] {
        if !have(tool) {
            assert!(
                !in_ci(),
                "{tool} is missing; scripts/install-deps.sh test installs it"
            );
            eprintln!(
                "{test}: SKIP: {tool} not installed (scripts/install-deps.sh test installs it)"
            );
            return false;
        }
    }
    true
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// True when the ELF file names a dynamic loader (PT_INTERP), i.e. is not static.
fn has_interpreter(elf: &[u8]) -> bool {
    assert_eq!(&elf[..4], b"\x7fELF");
    assert_eq!(elf[4], 2, "64-bit ELF");
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (size, count) = (u16_at(0x36), u16_at(0x38));
    (0..count).any(|i| {
        let o = phoff + i * size;
        u32::from_le_bytes(elf[o..o + 4].try_into().unwrap()) == 3
    })
}

/// The built image, inspected, and its root file system copied out of buildah.
struct Image {
    /// Holds `rootfs/` (the image's files) for as long as the tests run.
    _dir: tempfile::TempDir,
    rootfs: PathBuf,
    inspect: serde_json::Value,
}

/// Removes the image and the working container even when an assertion fails.
struct BuildahCleanup {
    container: Option<String>,
    tag: String,
}

impl Drop for BuildahCleanup {
    fn drop(&mut self) {
        if let Some(c) = &self.container {
            let _ = Command::new("buildah").args(["umount", c]).output();
            let _ = Command::new("buildah").args(["rm", c]).output();
        }
        let _ = Command::new("buildah")
            .args(["rmi", "-f", &self.tag])
            .output();
    }
}

fn build_image() -> Result<Image, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tag = format!("localhost/apivip-test:{}", std::process::id());
    let mut guard = BuildahCleanup {
        container: None,
        tag: tag.clone(),
    };
    // The dev profile: the image is the same shape, and the test stays fast.
    let out = Command::new(root.join("deploy/build-image.sh"))
        .arg(&tag)
        .env("PROFILE", "dev")
        .env("BUILDER", "buildah")
        .output()
        .map_err(|e| format!("deploy/build-image.sh: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "deploy/build-image.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if printed != tag {
        return Err(format!(
            "build-image.sh printed {printed:?}, not the tag {tag}"
        ));
    }
    let inspect: serde_json::Value = serde_json::from_str(&run(
        Command::new("buildah").args(["inspect", "--type", "image", &tag])
    ))
    .map_err(|e| format!("buildah inspect: {e}"))?;
    let ctr = run(Command::new("buildah").args(["from", &tag]))
        .trim()
        .to_owned();
    guard.container = Some(ctr.clone());
    let mnt = run(Command::new("buildah").args(["mount", &ctr]))
        .trim()
        .to_owned();
    let dir = tempfile::Builder::new()
        .prefix("apivip-image")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir(&rootfs).map_err(|e| e.to_string())?;
    // The image's own files, owners and modes, so the container runs what was built.
    run(Command::new("cp")
        .args(["-a", &format!("{mnt}/."), "--"])
        .arg(&rootfs));
    drop(guard);
    Ok(Image {
        _dir: dir,
        rootfs,
        inspect,
    })
}

/// Built once for every test in this file.
fn image() -> &'static Image {
    static IMAGE: OnceLock<Result<Image, String>> = OnceLock::new();
    match IMAGE.get_or_init(build_image) {
        Ok(i) => i,
        Err(e) => panic!("building the image: {e}"),
    }
}

#[test]
fn the_containerfile_builds_a_static_image() {
    if !can_run("the_containerfile_builds_a_static_image") {
        return;
    }
    let img = image();
    let config = &img.inspect["OCIv1"]["config"];
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!(["/usr/local/bin/apivip"])
    );
    assert_eq!(
        config["Cmd"],
        serde_json::json!(["run", "--config", "/etc/apivip/config.toml"])
    );
    // scratch plus one COPY: exactly one layer.
    assert_eq!(
        img.inspect["OCIv1"]["rootfs"]["diff_ids"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let bin = img.rootfs.join("usr/local/bin/apivip");
    let elf = std::fs::read(&bin).unwrap();
    assert!(
        !has_interpreter(&elf),
        "the image's binary is dynamically linked"
    );
    let entries: Vec<_> = std::fs::read_dir(&img.rootfs).unwrap().collect();
    assert_eq!(entries.len(), 1, "only /usr in the image: {entries:?}");
    let version = run(Command::new(&bin).arg("--version"));
    assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");
}

/// `apivip manifest static-pod [args]`, as an operator makes the pod.
fn manifest(args: &[&str]) -> String {
    run(Command::new(BIN)
        .args(["manifest", "static-pod"])
        .args(args))
}

/// The host's side of a pod: /etc/apivip with the config (and key), under `host_root`.
struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    fn new(config: &str, key: bool) -> Host {
        let dir = tempfile::Builder::new()
            .prefix("apivip-host")
            .tempdir()
            .unwrap();
        let etc = dir.path().join("etc/apivip");
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::set_permissions(&etc, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(etc.join("config.toml"), config).unwrap();
        if key {
            let k = etc.join("key");
            std::fs::write(&k, "container-test-key-0123456789abcdef0123456789\n").unwrap();
            std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        Host { dir }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }
}

/// GET `path` on `addr` from inside `ns`: (status, body).
fn http_in(
    node: &apivip_testkit::netns::Node,
    addr: SocketAddr,
    path: &str,
) -> Option<(u16, String)> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    node.run(move || -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(req.as_bytes())?;
        let mut buf = String::new();
        s.read_to_string(&mut buf)?;
        Ok(buf)
    })
    .ok()?
    .ok()
    .and_then(|text| {
        let code = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_string();
        Some((code, body))
    })
}

/// Polls until `f` gives Some, every 20 ms, or panics after `within` with `what` and the log.
fn wait_for<T>(
    pod: &RunningPod,
    within: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < within,
            "{what} not within {within:?}\n--- container log ---\n{}",
            pod.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The container's effective capabilities, from the host's view of its init.
fn cap_eff(pod: &RunningPod) -> u64 {
    let pid = pod.pid().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap()
        .trim();
    u64::from_str_radix(hex, 16).unwrap()
}

/// The stand-in apiserver the node's kubelet would run, on :6443 in its namespace.
fn apiserver(topo: &Topology) -> NsStandins {
    serve_in(
        &topo.node(0).path(),
        vec![StandinArgs {
            listen: "0.0.0.0:6443".parse().unwrap(),
            sans: vec![VIP4.to_string(), topo.node(0).addr().to_string()],
            cert_out: None,
            unready_file: None,
            plain: false,
            name: "node-1".into(),
        }],
    )
    .unwrap()
}

const CONTROL_PLANE: &str = r#"cluster = "image"
node_id = 1

[vip]
address = "192.0.2.100/24"
interface = "eth0"

[[peers]]
id = 1
address = "192.0.2.11"
"#;

/// The control-plane pod, as generated, minus whatever `edit` removes; runs until the VIP
/// is held, then checks what the test asks and stops it with SIGTERM.
fn control_plane(
    test: &str,
    edit: impl Fn(String) -> String,
    check: impl Fn(&RunningPod, &Host, &Topology),
) {
    if !can_run(test) {
        return;
    }
    let img = image();
    let topo = Topology::build(&TopologySpec {
        nodes: 1,
        clients: 1,
        ipv6: false,
    })
    .unwrap();
    let _apiserver = apiserver(&topo);
    let host = Host::new(CONTROL_PLANE, true);
    let spec = PodSpec::parse(&edit(manifest(&[]))).unwrap();
    let at = Placement {
        rootfs: img.rootfs.clone(),
        host_root: host.root().into(),
        netns: topo.node(0).path(),
    };
    let probe = AddrProbe::new(&topo).unwrap();
    let mut pod = RunningPod::start(&spec, &at).unwrap();
    wait_for(&pod, Duration::from_secs(15), "the VIP on the node", || {
        (probe.holders(IpAddr::V4(VIP4)) == [0]).then_some(())
    });
    assert_eq!(
        cap_eff(&pod),
        (1 << 12) | (1 << 13),
        "exactly CAP_NET_ADMIN and CAP_NET_RAW"
    );
    let (code, body) = wait_for(&pod, Duration::from_secs(5), "/healthz", || {
        http_in(topo.node(0), METRICS.parse().unwrap(), "/healthz")
    });
    assert_eq!(code, 200, "{body}");
    // A client reaches the apiserver through the forwarder on the VIP.
    let out = topo
        .client(0)
        .exec(&[
            "curl",
            "-sk",
            "--max-time",
            "3",
            "https://192.0.2.100:8443/version",
        ])
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("\"standin\":\"node-1\""),
        "{out:?}\n{}",
        pod.log()
    );
    // Nothing in the image may be written: the state lives in the hostPath.
    assert!(
        host.root()
            .join("var/lib/apivip")
            .read_dir()
            .unwrap()
            .next()
            .is_some(),
        "no state written to the hostPath\n{}",
        pod.log()
    );
    check(&pod, &host, &topo);

    pod.signal("TERM").unwrap();
    let code = pod.wait(Duration::from_secs(10)).unwrap();
    let log = pod.log();
    assert_eq!(code, Some(0), "exit status after SIGTERM\n{log}");
    assert!(log.contains("VIP released"), "{log}");
    assert!(
        probe.holders(IpAddr::V4(VIP4)).is_empty(),
        "the VIP is still on the node after exit\n{log}"
    );
}

fn status(host: &Host) -> serde_json::Value {
    let out = run(Command::new(BIN)
        .args(["status", "--json", "--socket"])
        .arg(host.root().join("run/apivip/apivip.sock")));
    serde_json::from_str(&out).unwrap()
}

#[test]
fn the_control_plane_pod_holds_the_vip_on_its_own_device_and_stops_cleanly() {
    control_plane(
        "the_control_plane_pod_holds_the_vip_on_its_own_device_and_stops_cleanly",
        |m| m,
        |pod, host, topo| {
            let st = status(host);
            assert_eq!(st["role"], "leader", "{st}");
            // The pod mounts /dev/net/tun, so `auto` gets the process-owned device.
            assert_eq!(
                st["vip"]["placement"],
                "device apivip0",
                "{st}\n{}",
                pod.log()
            );
            let out = topo
                .node(0)
                .exec(&["ip", "-o", "addr", "show", "dev", "apivip0"])
                .unwrap();
            assert!(
                String::from_utf8_lossy(&out.stdout).contains("192.0.2.100/32"),
                "{out:?}"
            );
            let (_, metrics) = http_in(topo.node(0), METRICS.parse().unwrap(), "/metrics").unwrap();
            assert!(
                metrics.contains("apivip_vip_placement_fallback 0"),
                "{metrics}"
            );
        },
    );
}

/// Without the device (a pod written before the mount, or a runtime that refuses it),
/// `auto` must fall back to the interface and say so loudly, not crash-loop.
#[test]
fn without_dev_net_tun_the_pod_falls_back_to_the_interface_loudly() {
    control_plane(
        "without_dev_net_tun_the_pod_falls_back_to_the_interface_loudly",
        |m| {
            let cut = without_tun(&m);
            assert_ne!(cut, m, "the manifest mounts /dev/net/tun");
            cut
        },
        |pod, host, topo| {
            let st = status(host);
            assert_eq!(st["vip"]["placement"], "interface", "{st}");
            let reason = st["vip"]["placement_reason"].as_str().unwrap();
            assert!(reason.contains("/dev/net/tun"), "{reason}");
            assert!(
                pod.log().contains("WARN") && pod.log().contains("/dev/net/tun"),
                "{}",
                pod.log()
            );
            let out = topo
                .node(0)
                .exec(&["ip", "-o", "addr", "show", "dev", "eth0"])
                .unwrap();
            assert!(
                String::from_utf8_lossy(&out.stdout).contains("192.0.2.100/24"),
                "{out:?}"
            );
            let (_, metrics) = http_in(topo.node(0), METRICS.parse().unwrap(), "/metrics").unwrap();
            assert!(
                metrics.contains("apivip_vip_placement_fallback 1"),
                "{metrics}"
            );
        },
    );
}

/// The manifest without the tun volume and its mount (each a block of lines).
fn without_tun(manifest: &str) -> String {
    let mut out = Vec::new();
    let mut skip_indent: Option<usize> = None;
    for line in manifest.lines() {
        let indent = line.len() - line.trim_start().len();
        if let Some(i) = skip_indent {
            if indent > i {
                continue;
            }
            skip_indent = None;
        }
        if line.trim_start() == "- name: tun" {
            skip_indent = Some(indent);
            continue;
        }
        out.push(line);
    }
    out.join("\n") + "\n"
}

const WORKER: &str = r#"cluster = "image"

[[peers]]
id = 1
address = "192.0.2.11"

[health]
check = "none"
"#;

#[test]
fn the_worker_pod_proxies_with_no_capabilities_and_stops_cleanly() {
    if !can_run("the_worker_pod_proxies_with_no_capabilities_and_stops_cleanly") {
        return;
    }
    let img = image();
    let topo = Topology::build(&TopologySpec {
        nodes: 1,
        clients: 1,
        ipv6: false,
    })
    .unwrap();
    let _apiserver = apiserver(&topo);
    let host = Host::new(WORKER, false);
    let spec = PodSpec::parse(&manifest(&["--proxy-only"])).unwrap();
    assert!(spec.capabilities.is_empty(), "{spec:?}");
    // The worker is the topology's client: the control plane's apiserver is 192.0.2.11.
    let worker = topo.client(0);
    let at = Placement {
        rootfs: img.rootfs.clone(),
        host_root: host.root().into(),
        netns: worker.path(),
    };
    let mut pod = RunningPod::start(&spec, &at).unwrap();
    let (code, _) = wait_for(&pod, Duration::from_secs(10), "/healthz", || {
        http_in(worker, METRICS.parse().unwrap(), "/healthz")
    });
    assert_eq!(code, 200);
    assert_eq!(cap_eff(&pod), 0, "a worker's pod has no capability");
    let served = wait_for(&pod, Duration::from_secs(10), "a proxied request", || {
        let out = worker
            .exec(&[
                "curl",
                "-sk",
                "--max-time",
                "2",
                "https://127.0.0.1:6443/version",
            ])
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.contains("\"standin\":\"node-1\"").then_some(text)
    });
    assert!(served.contains("gitVersion"), "{served}");
    pod.signal("TERM").unwrap();
    let code = pod.wait(Duration::from_secs(10)).unwrap();
    assert_eq!(code, Some(0), "exit status after SIGTERM\n{}", pod.log());
}

/// The runner's translation can fail: a pod that asks for a host directory that is not
/// there does not start, as the kubelet refuses it.
#[test]
fn a_missing_host_directory_is_refused_like_the_kubelet_does() {
    let spec = PodSpec::parse(&manifest(&[])).unwrap();
    let host = tempfile::tempdir().unwrap();
    let at = Placement {
        rootfs: PathBuf::from("/nonexistent"),
        host_root: host.path().into(),
        netns: PathBuf::from("/nonexistent"),
    };
    let e = apivip_testkit::pod::oci_config(&spec, &at).unwrap_err();
    assert!(e.to_string().contains("type Directory"), "{e}");
    std::fs::create_dir_all(host.path().join("etc/apivip")).unwrap();
    let config = apivip_testkit::pod::oci_config(&spec, &at).unwrap();
    let tun = config["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["destination"] == "/dev/net/tun")
        .unwrap_or_else(|| panic!("no /dev/net/tun mount: {config}"));
    assert_eq!(tun["source"], "/dev/net/tun");
    assert_eq!(
        config["process"]["capabilities"]["effective"],
        serde_json::json!(["CAP_NET_ADMIN", "CAP_NET_RAW"])
    );
    assert_eq!(config["root"]["readonly"], true);
}
