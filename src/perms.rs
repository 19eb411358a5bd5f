//! Who may touch the daemon's secret and its state. Anyone who can read the key file can
//! forge heartbeats (and take the VIP); anyone who owns the key's or the state's
//! directory can swap the key, or the stored term and vote the election's safety rests
//! on, under the daemon. So, as keepalived and sshd do with their secrets, the daemon
//! refuses to start (or to reload) with a key file that group or others may access, or a
//! key file, key directory or state directory owned by another user than root (or than
//! the user the daemon runs as), unless `allow_insecure_permissions` says to go on; then
//! it warns.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// One reason a path is not safe enough.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PermError {
    #[error(
        "key_file {path}: mode {mode:04o} lets group or others read it, and anyone who can read the key can forge heartbeats; fix: chmod 600 {path} (or set allow_insecure_permissions = true)"
    )]
    KeyMode { path: PathBuf, mode: u32 },
    #[error(
        "{what} {path}: owned by uid {uid}, not root (the daemon runs as uid {euid}), so that user can replace what the daemon trusts; fix: chown root {path} (or set allow_insecure_permissions = true)"
    )]
    Owner {
        what: &'static str,
        path: PathBuf,
        uid: u32,
        euid: u32,
    },
    #[error("{what} {path}: cannot check its owner and mode: {problem}")]
    Stat {
        what: &'static str,
        path: PathBuf,
        problem: String,
    },
}

/// The user the daemon runs as.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn meta(what: &'static str, path: &Path) -> Result<std::fs::Metadata, PermError> {
    std::fs::metadata(path).map_err(|e| PermError::Stat {
        what,
        path: path.into(),
        problem: e.to_string(),
    })
}

/// Root always may own it; a daemon run as another user may own its own files too.
fn foreign_owner(
    what: &'static str,
    path: &Path,
    m: &std::fs::Metadata,
    euid: u32,
) -> Option<PermError> {
    (m.uid() != 0 && m.uid() != euid).then(|| PermError::Owner {
        what,
        path: path.into(),
        uid: m.uid(),
        euid,
    })
}

/// The directory a file lives in (`.` for a bare name).
fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Everything wrong with the key file and its directory, for a daemon running as `euid`.
/// A file that does not exist is not reported here: reading it says so.
pub fn key_problems(key: &Path, euid: u32) -> Vec<PermError> {
    let mut out = Vec::new();
    match std::fs::metadata(key) {
        Ok(m) => {
            let mode = m.mode() & 0o7777;
            if mode & 0o077 != 0 {
                out.push(PermError::KeyMode {
                    path: key.into(),
                    mode,
                });
            }
            out.extend(foreign_owner("key_file", key, &m, euid));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return out,
        Err(e) => out.push(PermError::Stat {
            what: "key_file",
            path: key.into(),
            problem: e.to_string(),
        }),
    }
    let dir = parent(key);
    match meta("key directory", &dir) {
        Ok(m) => out.extend(foreign_owner("key directory", &dir, &m, euid)),
        Err(e) => out.push(e),
    }
    out
}

/// What is wrong with the state directory (which must exist by now).
pub fn state_dir_problems(dir: &Path, euid: u32) -> Vec<PermError> {
    match meta("state_dir", dir) {
        Ok(m) => foreign_owner("state_dir", dir, &m, euid)
            .into_iter()
            .collect(),
        Err(e) => vec![e],
    }
}

/// Refuses on the first problem, or, when `allow` (the config's
/// `allow_insecure_permissions`), logs each as a warning and goes on.
pub fn enforce(problems: Vec<PermError>, allow: bool) -> Result<(), PermError> {
    for p in problems {
        if !allow {
            return Err(p);
        }
        tracing::warn!(problem = %p, "allow_insecure_permissions = true: going on anyway");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_key_group_or_others_can_read_is_named_with_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "k\n").unwrap();
        chmod(&key, 0o600);
        assert_eq!(key_problems(&key, euid()), vec![]);
        for mode in [0o640, 0o604, 0o660] {
            chmod(&key, mode);
            let p = key_problems(&key, euid());
            assert_eq!(
                p,
                vec![PermError::KeyMode {
                    path: key.clone(),
                    mode
                }]
            );
            let msg = p[0].to_string();
            assert!(
                msg.contains(&key.display().to_string()) && msg.contains(&format!("{mode:04o}")),
                "{msg}"
            );
            assert!(enforce(p.clone(), false).is_err());
            assert!(enforce(p, true).is_ok(), "the override goes on");
        }
        // A missing key is for the reader to report, with its own words.
        assert_eq!(key_problems(&dir.path().join("none"), euid()), vec![]);
    }

    #[test]
    fn files_and_directories_owned_by_another_user_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "k\n").unwrap();
        chmod(&key, 0o600);
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        assert_eq!(state_dir_problems(&state, euid()), vec![]);
        // Owned by root while the daemon runs as someone else: fine (root may).
        assert_eq!(state_dir_problems(&state, 4242), vec![], "root owns it");
        if euid() != 0 {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI runs as root: this test needs it to chown"
            );
            eprintln!("SKIP (not root): cannot chown to test foreign owners");
            return;
        }
        std::os::unix::fs::chown(&state, Some(65534), None).unwrap();
        let p = state_dir_problems(&state, 0);
        assert!(
            matches!(
                &p[..],
                [PermError::Owner {
                    what: "state_dir",
                    uid: 65534,
                    ..
                }]
            ),
            "{p:?}"
        );
        assert!(p[0].to_string().contains("uid 65534"), "{}", p[0]);
        std::os::unix::fs::chown(dir.path(), Some(65534), None).unwrap();
        std::os::unix::fs::chown(&key, Some(65534), None).unwrap();
        let p = key_problems(&key, 0);
        assert!(
            matches!(
                &p[..],
                [
                    PermError::Owner {
                        what: "key_file",
                        ..
                    },
                    PermError::Owner {
                        what: "key directory",
                        ..
                    }
                ]
            ),
            "{p:?}"
        );
        // Run as that user, its own files are its to own.
        assert_eq!(key_problems(&key, 65534), vec![]);
        std::os::unix::fs::chown(dir.path(), Some(0), None).unwrap();
    }
}
