//! Running a test binary as another user (`nobody`), wherever it was built.
//!
//! A binary inside a directory that user cannot enter (a clone in root's 0700 home, or
//! under `mktemp -d`) cannot be executed by it: the spawn fails with EACCES. So the
//! binary is first copied into a fresh directory every user can enter and read, and run
//! from there.

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `nobody`'s uid and gid on Debian.
pub const NOBODY: u32 = 65534;

/// A copy of an executable that every user may run; removed on drop.
#[derive(Debug)]
pub struct SharedExe {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl SharedExe {
    /// Copies `exe` into a new world-readable directory under the first candidate every
    /// user can enter: the temp dir, else `/tmp`.
    pub fn copy(exe: &Path) -> io::Result<SharedExe> {
        let base = [std::env::temp_dir(), PathBuf::from("/tmp")]
            .into_iter()
            .find(|d| enterable_by_all(d))
            .ok_or_else(|| {
                io::Error::other(format!(
                    "neither {} nor /tmp can be entered by every user",
                    std::env::temp_dir().display()
                ))
            })?;
        let dir = tempfile::Builder::new()
            .prefix("apivip-shared-exe")
            .tempdir_in(&base)?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let name = exe
            .file_name()
            .ok_or_else(|| io::Error::other(format!("{}: no file name", exe.display())))?;
        let path = dir.path().join(name);
        std::fs::copy(exe, &path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        Ok(SharedExe { _dir: dir, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A command that runs the copy as `uid`/`gid`, from `/` (the caller's working
    /// directory may be one that user cannot enter either).
    pub fn command_as(&self, uid: u32, gid: u32) -> Command {
        let mut c = Command::new(&self.path);
        c.uid(uid).gid(gid).current_dir("/");
        c
    }
}

/// True when every directory from `/` down to `dir` has the execute bit for others
/// (or is the sticky, world-writable kind, such as /tmp).
pub fn enterable_by_all(dir: &Path) -> bool {
    dir.ancestors()
        .all(|d| std::fs::metadata(d).is_ok_and(|m| m.is_dir() && m.mode() & 0o001 != 0))
}
