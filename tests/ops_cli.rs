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
fn an_unknown_shell_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_apivip"))
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("tcsh"));
}
