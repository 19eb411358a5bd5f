//! deploy/Containerfile builds an image holding one static binary. Containers cannot run
//! on the CI machines, so the image is inspected and its binary run outside it.
//! Skips without buildah, except under CI=true where it fails.

use std::path::Path;
use std::process::Command;

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
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

/// Removes the test's container and image even when an assertion fails.
struct Cleanup {
    container: Option<String>,
    tag: String,
}

impl Drop for Cleanup {
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

#[test]
fn the_containerfile_builds_a_static_image() {
    let have = Command::new("buildah").arg("--version").output().is_ok();
    if !have {
        assert!(
            !in_ci(),
            "buildah is missing; scripts/install-deps.sh test installs it"
        );
        eprintln!("SKIP: buildah not installed (scripts/install-deps.sh test installs it)");
        return;
    }
    if !nix_is_root() {
        assert!(!in_ci(), "CI runs as root");
        eprintln!("SKIP: building images needs root here");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tag = format!("localhost/apivip-test:{}", std::process::id());
    let mut guard = Cleanup {
        container: None,
        tag: tag.clone(),
    };
    // The dev profile: the image is the same shape, and the test stays fast.
    let printed = run(Command::new(root.join("deploy/build-image.sh"))
        .arg(&tag)
        .env("PROFILE", "dev")
        .env("BUILDER", "buildah"));
    assert_eq!(printed.trim(), tag);

    let inspect: serde_json::Value = serde_json::from_str(&run(
        Command::new("buildah").args(["inspect", "--type", "image", &tag])
    ))
    .unwrap();
    let config = &inspect["OCIv1"]["config"];
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
        inspect["OCIv1"]["rootfs"]["diff_ids"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let ctr = run(Command::new("buildah").args(["from", &tag]))
        .trim()
        .to_owned();
    guard.container = Some(ctr.clone());
    let mnt = run(Command::new("buildah").args(["mount", &ctr]))
        .trim()
        .to_owned();
    let bin = Path::new(&mnt).join("usr/local/bin/apivip");
    let elf = std::fs::read(&bin).unwrap();
    assert!(
        !has_interpreter(&elf),
        "the image's binary is dynamically linked"
    );
    let entries: Vec<_> = std::fs::read_dir(&mnt).unwrap().collect();
    assert_eq!(entries.len(), 1, "only /usr in the image: {entries:?}");

    // The binary from the image runs on its own (outside any container).
    let version = run(Command::new(&bin).arg("--version"));
    assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");
    drop(guard);
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
