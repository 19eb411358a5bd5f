//! Runs a static pod manifest the way a kubelet with an OCI runtime would, so a test sees
//! whether the image starts with exactly what the pod grants it and nothing more.
//!
//! The manifest's one container becomes an OCI bundle for `runc`, translated as a kubelet
//! and containerd translate it:
//! - the image's root file system, read-only when `readOnlyRootFilesystem` says so;
//! - a container's minimal `/dev` (runc's tmpfs with null, zero, full, random, urandom,
//!   tty, ptmx and pts, and a device cgroup that allows only those and the runtime's
//!   defaults), `/proc`, a read-only `/sys`, `/dev/shm` and `/dev/mqueue`, and the masked
//!   and read-only paths containerd sets;
//! - `securityContext`: the user (`runAsUser`), the capabilities (`drop: [ALL]` starts
//!   from none, otherwise from containerd's default set; then `add`), `noNewPrivileges`
//!   from `allowPrivilegeEscalation: false`;
//! - `hostNetwork: true`: the container joins the network namespace the test names (the
//!   node's, in a topology the test built) and shares its UTS namespace; pid, ipc and
//!   mount namespaces are its own, so the daemon runs as PID 1, as in a real pod;
//! - `hostPath` volumes are checked against their `type` as the kubelet checks them
//!   (`Directory` must exist, `DirectoryOrCreate` is made, `CharDevice` must be a
//!   character device, ...) and bind-mounted, read-only where the mount says so. Paths
//!   under `/dev` are the machine's own devices; every other host path is looked up under
//!   the test's own directory (`host_root`), so a test never touches the real `/etc`.
//!
//! What it does not model: image pulls, probes (the test calls the endpoints itself),
//! seccomp and AppArmor profiles (the manifests set none), resource limits.

use std::fs::File;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use yaml_rust2::{Yaml, YamlLoader};

/// The capabilities containerd gives a container that drops none (its default spec).
const DEFAULT_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

const MASKED: [&str; 9] = [
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
];

const READONLY: [&str; 6] = [
    "/proc/asound",
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// A `hostPath` volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPathVolume {
    pub name: String,
    pub path: PathBuf,
    /// `""` (no check), `Directory`, `DirectoryOrCreate`, `File`, `FileOrCreate`,
    /// `CharDevice`, `BlockDevice`, `Socket`.
    pub kind: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeMount {
    pub name: String,
    pub mount_path: PathBuf,
    pub read_only: bool,
}

/// What of a pod manifest the runner uses: one container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodSpec {
    pub name: String,
    pub host_network: bool,
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    pub run_as_user: u32,
    pub read_only_root: bool,
    pub allow_privilege_escalation: bool,
    /// Effective capabilities, `CAP_*` names, after drop and add.
    pub capabilities: Vec<String>,
    pub mounts: Vec<VolumeMount>,
    pub volumes: Vec<HostPathVolume>,
}

fn str_list(y: &Yaml) -> Vec<String> {
    y.as_vec()
        .map(|v| {
            v.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

impl PodSpec {
    /// Reads a manifest; anything the runner would have to guess at is an error.
    pub fn parse(yaml: &str) -> Result<PodSpec> {
        let docs = YamlLoader::load_from_str(yaml).context("the manifest is not YAML")?;
        let pod = docs.first().ok_or_else(|| anyhow!("empty manifest"))?;
        if pod["kind"].as_str() != Some("Pod") {
            bail!("kind is {:?}, not Pod", pod["kind"]);
        }
        let spec = &pod["spec"];
        let containers = spec["containers"]
            .as_vec()
            .ok_or_else(|| anyhow!("spec.containers is missing"))?;
        let [c] = containers.as_slice() else {
            bail!(
                "{} containers: the runner runs exactly one",
                containers.len()
            );
        };
        let command = str_list(&c["command"]);
        if command.is_empty() {
            bail!("the container has no command");
        }
        let mut env = Vec::new();
        for e in c["env"].as_vec().map(Vec::as_slice).unwrap_or_default() {
            let (Some(k), Some(v)) = (e["name"].as_str(), e["value"].as_str()) else {
                bail!("env entry {e:?} needs a name and a literal value");
            };
            env.push((k.to_owned(), v.to_owned()));
        }
        let sc = &c["securityContext"];
        let caps = &sc["capabilities"];
        let drop = str_list(&caps["drop"]);
        let mut capabilities: Vec<String> = if drop.iter().any(|d| d == "ALL") {
            Vec::new()
        } else {
            DEFAULT_CAPS
                .iter()
                .filter(|c| !drop.iter().any(|d| format!("CAP_{d}") == **c))
                .map(|c| c.to_string())
                .collect()
        };
        for a in str_list(&caps["add"]) {
            let name = format!("CAP_{a}");
            if !capabilities.contains(&name) {
                capabilities.push(name);
            }
        }
        let mut mounts = Vec::new();
        for m in c["volumeMounts"]
            .as_vec()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let (Some(name), Some(path)) = (m["name"].as_str(), m["mountPath"].as_str()) else {
                bail!("volume mount {m:?} needs a name and a mountPath");
            };
            mounts.push(VolumeMount {
                name: name.into(),
                mount_path: path.into(),
                read_only: m["readOnly"].as_bool().unwrap_or(false),
            });
        }
        let mut volumes = Vec::new();
        for v in spec["volumes"]
            .as_vec()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let name = v["name"]
                .as_str()
                .ok_or_else(|| anyhow!("a volume without a name"))?;
            let path = v["hostPath"]["path"]
                .as_str()
                .ok_or_else(|| anyhow!("volume {name}: only hostPath volumes are supported"))?;
            volumes.push(HostPathVolume {
                name: name.into(),
                path: path.into(),
                kind: v["hostPath"]["type"].as_str().unwrap_or("").into(),
            });
        }
        for m in &mounts {
            if !volumes.iter().any(|v| v.name == m.name) {
                bail!("volume mount {} has no volume", m.name);
            }
        }
        Ok(PodSpec {
            name: pod["metadata"]["name"].as_str().unwrap_or("pod").into(),
            host_network: spec["hostNetwork"].as_bool().unwrap_or(false),
            command,
            env,
            run_as_user: sc["runAsUser"]
                .as_i64()
                .and_then(|u| u32::try_from(u).ok())
                .unwrap_or(0),
            read_only_root: sc["readOnlyRootFilesystem"].as_bool().unwrap_or(false),
            allow_privilege_escalation: sc["allowPrivilegeEscalation"].as_bool().unwrap_or(true),
            capabilities,
            mounts,
            volumes,
        })
    }
}

/// Where a pod runs.
#[derive(Clone, Debug)]
pub struct Placement {
    /// The image's root file system (unpacked).
    pub rootfs: PathBuf,
    /// Host paths outside `/dev` are looked up under this directory.
    pub host_root: PathBuf,
    /// The network namespace a `hostNetwork` pod shares (`/run/netns/<name>`).
    pub netns: PathBuf,
}

impl Placement {
    /// Where host path `p` is on this machine.
    pub fn host_path(&self, p: &Path) -> PathBuf {
        if p.starts_with("/dev") {
            p.to_path_buf()
        } else {
            self.host_root.join(p.strip_prefix("/").unwrap_or(p))
        }
    }
}

/// Checks a hostPath volume's type as the kubelet does before it starts the container.
fn check_host_path(v: &HostPathVolume, at: &Path) -> Result<()> {
    let meta = std::fs::metadata(at);
    let want = |ok: bool, what: &str| {
        if ok {
            Ok(())
        } else {
            Err(anyhow!(
                "hostPath volume {} ({}): type {} but {} is not {what}",
                v.name,
                v.path.display(),
                v.kind,
                at.display()
            ))
        }
    };
    match v.kind.as_str() {
        "" => Ok(()),
        "DirectoryOrCreate" => {
            if meta.is_err() {
                std::fs::create_dir_all(at)?;
                std::fs::set_permissions(at, std::fs::Permissions::from_mode(0o755))?;
                return Ok(());
            }
            want(meta.is_ok_and(|m| m.is_dir()), "a directory")
        }
        "Directory" => want(meta.is_ok_and(|m| m.is_dir()), "a directory"),
        "FileOrCreate" => {
            if meta.is_err() {
                File::create(at)?;
                std::fs::set_permissions(at, std::fs::Permissions::from_mode(0o644))?;
                return Ok(());
            }
            want(meta.is_ok_and(|m| m.is_file()), "a file")
        }
        "File" => want(meta.is_ok_and(|m| m.is_file()), "a file"),
        "CharDevice" => want(
            meta.is_ok_and(|m| m.file_type().is_char_device()),
            "a character device",
        ),
        "BlockDevice" => want(
            meta.is_ok_and(|m| m.file_type().is_block_device()),
            "a block device",
        ),
        "Socket" => want(meta.is_ok_and(|m| m.file_type().is_socket()), "a socket"),
        other => bail!("hostPath volume {}: unknown type {other}", v.name),
    }
}

/// The OCI runtime config for `pod` placed as `at` says.
pub fn oci_config(pod: &PodSpec, at: &Placement) -> Result<Value> {
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
    ];
    for m in &pod.mounts {
        let v = pod
            .volumes
            .iter()
            .find(|v| v.name == m.name)
            .ok_or_else(|| anyhow!("volume mount {} has no volume", m.name))?;
        let source = at.host_path(&v.path);
        check_host_path(v, &source)?;
        let mut options = vec!["rbind", "rprivate"];
        if m.read_only {
            options.push("ro");
        }
        mounts.push(json!({
            "destination": m.mount_path,
            "type": "bind",
            "source": source,
            "options": options,
        }));
    }
    let mut env =
        vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()];
    env.extend(pod.env.iter().map(|(k, v)| format!("{k}={v}")));
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "mount"}),
    ];
    if pod.host_network {
        namespaces.push(json!({"type": "network", "path": at.netns}));
    } else {
        bail!("only hostNetwork pods are supported (the runner sets up no pod network)");
    }
    Ok(json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": pod.run_as_user, "gid": 0},
            "args": pod.command,
            "env": env,
            "cwd": "/",
            "capabilities": {
                "bounding": pod.capabilities,
                "effective": pod.capabilities,
                "permitted": pod.capabilities,
            },
            "noNewPrivileges": !pod.allow_privilege_escalation,
        },
        "root": {"path": at.rootfs, "readonly": pod.read_only_root},
        "mounts": mounts,
        "linux": {
            "namespaces": namespaces,
            // Deny every device; runc then allows its defaults (those of its minimal /dev,
            // and the tun device, as containerd's list does).
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "maskedPaths": MASKED,
            "readonlyPaths": READONLY,
        },
    }))
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A pod's container, running under `runc`; killed and deleted on drop.
pub struct RunningPod {
    id: String,
    bundle: tempfile::TempDir,
    child: Option<Child>,
    log: PathBuf,
}

impl RunningPod {
    /// Writes the bundle and starts the container in the foreground of a `runc run`.
    pub fn start(pod: &PodSpec, at: &Placement) -> Result<RunningPod> {
        let config = oci_config(pod, at)?;
        let bundle = tempfile::Builder::new()
            .prefix("apivip-pod")
            .tempdir()
            .context("bundle directory")?;
        std::fs::write(
            bundle.path().join("config.json"),
            serde_json::to_vec_pretty(&config)?,
        )
        .context("config.json")?;
        std::fs::create_dir(bundle.path().join("state"))?;
        let id = format!(
            "apivip-{}-{}-{}",
            pod.name,
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let log = bundle.path().join("container.log");
        let out = File::create(&log).context("container log")?;
        let child = Command::new("runc")
            .arg("--root")
            .arg(bundle.path().join("state"))
            .args(["run", "--bundle"])
            .arg(bundle.path())
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("cannot start runc (scripts/install-deps.sh test installs it)")?;
        Ok(RunningPod {
            id,
            bundle,
            child: Some(child),
            log,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    fn runc(&self) -> Command {
        let mut c = Command::new("runc");
        c.arg("--root").arg(self.bundle.path().join("state"));
        c
    }

    /// The container's init process (the daemon) as seen from the host, once running.
    pub fn pid(&self) -> Result<u32> {
        let out = self.runc().args(["state", &self.id]).output()?;
        if !out.status.success() {
            bail!(
                "runc state {}: {}\n{}",
                self.id,
                String::from_utf8_lossy(&out.stderr),
                self.log()
            );
        }
        let v: Value = serde_json::from_slice(&out.stdout)?;
        v["pid"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p > 0)
            .ok_or_else(|| anyhow!("runc state {}: no pid in {v}", self.id))
    }

    /// What the container wrote to stdout and stderr so far, and runc's own errors.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal to the container's init as the kubelet's runtime does on stop.
    pub fn signal(&self, sig: &str) -> Result<()> {
        let out = self.runc().args(["kill", &self.id, sig]).output()?;
        if !out.status.success() {
            bail!(
                "runc kill {} {sig}: {}",
                self.id,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Still running?
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Waits for the container to exit: its exit code (None: killed by a signal).
    pub fn wait(&mut self, within: Duration) -> Result<Option<i32>> {
        let start = Instant::now();
        let child = self
            .child
            .as_mut()
            .ok_or_else(|| anyhow!("already waited for"))?;
        loop {
            if let Some(st) = child.try_wait()? {
                self.child = None;
                return Ok(st.code());
            }
            if start.elapsed() > within {
                bail!(
                    "container {} did not exit within {within:?}\n{}",
                    self.id,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RunningPod {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = self.runc().args(["kill", &self.id, "KILL"]).output();
            let _ = c.wait();
        }
        let _ = self
            .runc()
            .args(["delete", "--force", &self.id])
            .stderr(Stdio::null())
            .output();
    }
}
