//! `apivip completions` and `apivip man` describe the real command line.

use std::process::Command;

fn run(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_apivip"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "apivip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn completions_for_every_shell_name_the_subcommands() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let text = run(&["completions", shell]);
        for sub in ["run", "check-config", "manifest", "doctor"] {
            assert!(text.contains(sub), "{shell} completions lack {sub}");
        }
    }
    let bash = run(&["completions", "bash"]);
    assert!(bash.contains("complete -F"), "not a bash completion script");
}

#[test]
fn the_man_page_is_roff_naming_the_subcommands() {
    let man = run(&["man"]);
    assert!(man.contains(".TH apivip 1"), "{man}");
    for sub in ["run", "check\\-config", "manifest", "doctor"] {
        assert!(man.contains(sub), "man page lacks {sub}");
    }
}

#[test]
fn man_pages_per_subcommand_go_into_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    run(&["man", "--out-dir", dir.path().to_str().unwrap()]);
    for page in [
        "apivip.1",
        "apivip-run.1",
        "apivip-check-config.1",
        "apivip-doctor.1",
        "apivip-manifest-static-pod.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page))
            .unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.starts_with(".ie") || text.contains(".TH"), "{page}");
    }
    let doctor = std::fs::read_to_string(dir.path().join("apivip-doctor.1")).unwrap();
    assert!(doctor.contains("\\-\\-json"), "{doctor}");
}

#[test]
fn an_unknown_shell_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_apivip"))
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("tcsh"));
}
