//! The README and docs/quickstart.md cannot rot: every command they show is run here,
//! in order, as a newcomer would type it into one shell.
//!
//! # The convention (also stated at the end of docs/quickstart.md)
//!
//! - Commands live in ```` ```sh ```` blocks on lines that start with `$ `. A line ending
//!   in `\` continues on the next line. A command ending in a here-document (`<<'EOF'`)
//!   takes the lines up to the terminator as its input. Every other line in a block is
//!   sample output and is not checked.
//! - A command must exit 0, unless its line carries `# fails: <why>`: then it must exit
//!   non-zero (e.g. `apivip drill` on a one-node cluster, which has nobody to hand to).
//! - A line carrying `# not run by tests: <why>` is skipped; the reason is required
//!   (`make test` would recurse; commands that need a real cluster).
//! - Root: a block whose first line is `# as root` needs root for all its commands (the
//!   reader runs them in a root shell: they share its job control, `&` and `kill %2`), and
//!   so does a command with the word `sudo`, which the test removes. Without root those
//!   commands are skipped (and it says so), except under `CI=true`, where CI is root and a
//!   skip would hide a broken doc: then the test fails.
//! - `make demo` is run as `target/debug/apivip-demo` (a nested `cargo build` would wait
//!   for the lock this `cargo test` holds), and `target/debug/` means the directory cargo
//!   built this test's `apivip` in, where `make test` also builds the testkit's
//!   `apivip-demo` and `apivip-standin`.
//! - Nothing touches the host: the paths `/etc/apivip`, `/var/lib/apivip` and `/run/apivip`
//!   are rewritten into a temporary directory (and `APIVIP_KEY_FILE`, `APIVIP_STATE_DIR`,
//!   `APIVIP_CONTROL__SOCKET` and `APIVIP_SOCKET` point there, so the defaults do
//!   too); the network namespace the quickstart makes, `apivip-try`, gets a name unique
//!   to this run; the demo makes and removes its own namespaces. Whatever a failed doc
//!   left running is killed and its namespace removed.
//! - The directory of the `apivip` built for this test comes first on `PATH`; commands
//!   run from the repository's root with `bash -o pipefail`, within a time limit.

use std::fmt::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A whole document's commands must finish within this.
const DOC_TIMEOUT: Duration = Duration::from_secs(180);

/// One document at a time: both run `apivip-demo`, whose timings are the point, and a
/// second cluster on the same two cores would only make them noisier.
static ONE_DOC_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[derive(Debug, Clone, PartialEq)]
enum Expect {
    Success,
    Failure,
}

#[derive(Debug, Clone)]
struct DocCommand {
    /// 1-based line of the `$ ` line in the doc.
    line: usize,
    /// The command as shown, continuation lines joined, here-document included.
    text: String,
    expect: Expect,
    /// `Some(why)` for commands the doc marks `# not run by tests: why`.
    skip: Option<String>,
    needs_root: bool,
}

const NOT_RUN: &str = "# not run by tests:";
const FAILS: &str = "# fails:";

fn has_word(text: &str, word: &str) -> bool {
    text.split(|c: char| c.is_whitespace() || "();|&$`".contains(c))
        .any(|w| w == word)
}

/// Extracts the commands of every ```sh block, following the convention above.
fn commands(doc: &str, md: &str) -> Vec<DocCommand> {
    let lines: Vec<&str> = md.lines().collect();
    let mut out = Vec::new();
    let mut in_sh = false;
    let mut root_block = false;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            in_sh = !in_sh && trimmed == "```sh";
            root_block = in_sh && lines.get(i + 1).is_some_and(|l| l.trim() == "# as root");
            i += 1;
            continue;
        }
        let Some(first) = line.strip_prefix("$ ").filter(|_| in_sh) else {
            i += 1;
            continue;
        };
        let start = i + 1;
        let mut text = first.to_string();
        while text.ends_with('\\') {
            i += 1;
            let next = lines
                .get(i)
                .unwrap_or_else(|| panic!("{doc}:{start}: `\\` on the last line"));
            text.push('\n');
            text.push_str(next);
        }
        if let Some(pos) = text.find("<<") {
            let term = text[pos + 2..]
                .split_whitespace()
                .next()
                .unwrap_or("")
                .trim_matches(|c| c == '\'' || c == '"')
                .to_string();
            assert!(
                !term.is_empty(),
                "{doc}:{start}: here-document without a terminator"
            );
            loop {
                i += 1;
                let body = lines.get(i).unwrap_or_else(|| {
                    panic!("{doc}:{start}: here-document never ends (no `{term}` line)")
                });
                text.push('\n');
                text.push_str(body);
                if body.trim() == term {
                    break;
                }
            }
        }
        let skip = text.find(NOT_RUN).map(|p| {
            let why = text[p + NOT_RUN.len()..]
                .lines()
                .next()
                .unwrap_or("")
                .trim();
            assert!(
                !why.is_empty(),
                "{doc}:{start}: `{NOT_RUN}` needs a reason after the colon"
            );
            why.to_string()
        });
        let expect = if text.contains(FAILS) {
            Expect::Failure
        } else {
            Expect::Success
        };
        let needs_root =
            root_block || has_word(&text, "sudo") || text.trim_start().starts_with("make demo");
        out.push(DocCommand {
            line: start,
            text,
            expect,
            skip,
            needs_root,
        });
        i += 1;
    }
    out
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The command as the test runs it: sudo removed, `make demo` as `target/debug/apivip-demo`,
/// `target/debug/` as `bin_dir`, host paths and the namespace name moved to this run's own.
fn rewrite(text: &str, tmp: &Path, netns: &str, bin_dir: &Path) -> String {
    let mut t = text.to_string();
    if let Some(rest) = t.trim_start().strip_prefix("make demo") {
        t = format!("target/debug/apivip-demo{rest}");
    }
    t = t.replace("target/debug/", &format!("{}/", bin_dir.display()));
    assert!(
        !has_word(&t, "make"),
        "a doc command runs make; mark it `{NOT_RUN} <why>` or add it to rewrite(): {text}"
    );
    // `sudo` only as a word: the leading one, after a pipe, `&&`, `;` or `$(`.
    let words: Vec<String> = t
        .split_inclusive(char::is_whitespace)
        .filter(|w| w.trim() != "sudo")
        .map(str::to_string)
        .collect();
    t = words.concat().replace("$(sudo ", "$(");
    for p in ["/etc/apivip", "/var/lib/apivip", "/run/apivip"] {
        t = t.replace(p, &format!("{}{p}", tmp.display()));
    }
    t.replace("apivip-try", netns)
}

/// Runs one document's commands in one bash, in order, and fails naming the doc, the line
/// and the output of the first command that did not do what the doc says.
fn run_doc(name: &str) {
    let _serial = ONE_DOC_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let md = std::fs::read_to_string(root.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let cmds = commands(name, &md);
    assert!(!cmds.is_empty(), "{name}: no `$ ` commands in ```sh blocks");

    let root_ok = is_root();
    if !root_ok && cmds.iter().any(|c| c.needs_root && c.skip.is_none()) {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{name}: commands need root, and CI=true forbids skipping them"
        );
        eprintln!("{name}: not root: skipping the commands marked sudo (and make demo)");
    }

    let tmp = tempfile::tempdir().unwrap();
    let netns = format!("apivip-try-{}", std::process::id());
    for d in ["etc/apivip", "var/lib/apivip", "run/apivip"] {
        std::fs::create_dir_all(tmp.path().join(d)).unwrap();
    }
    let bin = Path::new(env!("CARGO_BIN_EXE_apivip"));
    let bin_dir = bin.parent().unwrap();
    for tool in ["apivip-demo", "apivip-standin"] {
        apivip_testkit::bin_beside(bin, tool).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );

    let mut script = String::from("set -o pipefail\n");
    // Whatever the doc started in the background, and its namespace, go when we do.
    let _ = writeln!(
        script,
        "trap 'kill $(jobs -p) 2>/dev/null; wait; ip netns del {netns} 2>/dev/null' EXIT"
    );
    let mut ran = 0;
    for c in &cmds {
        if let Some(why) = &c.skip {
            eprintln!("{name}:{}: not run: {why}", c.line);
            continue;
        }
        if c.needs_root && !root_ok {
            eprintln!("{name}:{}: skipped (needs root)", c.line);
            continue;
        }
        let text = rewrite(&c.text, tmp.path(), &netns, bin_dir);
        let background = text.trim_end().ends_with('&');
        let _ = writeln!(script, "echo '@@@ begin {}'", c.line);
        let _ = writeln!(script, "{text}");
        if background {
            let _ = writeln!(script, "echo '@@@ end {} rc=0'", c.line);
        } else {
            let _ = writeln!(script, "rc=$?; echo \"@@@ end {} rc=$rc\"", c.line);
            let _ = match c.expect {
                Expect::Success => writeln!(script, "[ $rc -eq 0 ] || exit 97"),
                Expect::Failure => writeln!(script, "[ $rc -ne 0 ] || exit 98"),
            };
        }
        ran += 1;
    }
    if ran == 0 {
        return;
    }

    let log_path = tmp.path().join("output.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(&script)
        .current_dir(root)
        .env("PATH", &path)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .process_group(0);
    for (k, _) in std::env::vars() {
        if k.starts_with("APIVIP_") {
            cmd.env_remove(k);
        }
    }
    let t = tmp.path().display();
    cmd.env("APIVIP_KEY_FILE", format!("{t}/etc/apivip/key"))
        .env("APIVIP_STATE_DIR", format!("{t}/var/lib/apivip"))
        .env(
            "APIVIP_CONTROL__SOCKET",
            format!("{t}/run/apivip/apivip.sock"),
        )
        .env("APIVIP_SOCKET", format!("{t}/run/apivip/apivip.sock"));
    let mut child = cmd.spawn().expect("cannot start bash");
    let pgid = child.id() as i32;
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if started.elapsed() > DOC_TIMEOUT {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Anything still in the group (a timed-out command, a daemon the trap missed).
    // SAFETY: kill with a negative pid signals our own child's process group only.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    let _ = child.wait();
    let _ = Command::new("ip")
        .args(["netns", "del", &netns])
        .stderr(Stdio::null())
        .status();

    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    let ok = status.is_some_and(|s| s.success());
    if ok {
        let ends = output.matches("@@@ end ").count();
        assert_eq!(ends, ran, "{name}: {ran} commands, {ends} ran:\n{output}");
        return;
    }
    // The last command that began is the one that failed or hung.
    let last = output.rfind("@@@ begin ").map_or(0, |p| p);
    let tail = &output[last..];
    let line: usize = tail
        .strip_prefix("@@@ begin ")
        .and_then(|r| r.lines().next())
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    let shown = cmds
        .iter()
        .find(|c| c.line == line)
        .map_or(String::new(), |c| c.text.clone());
    let why = match status {
        None => format!("did not finish within {DOC_TIMEOUT:?}"),
        Some(s) if s.code() == Some(98) => "exited 0, but the doc says it fails".into(),
        Some(s) => format!("failed ({s})"),
    };
    panic!(
        "{name}:{line}: `{shown}` {why}\n--- its output ---\n{}\n--- full script ---\n{script}",
        tail.lines().skip(1).collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn readme_commands_run() {
    run_doc("README.md");
}

#[test]
fn quickstart_commands_run() {
    run_doc("docs/quickstart.md");
}

#[test]
fn the_convention_is_parsed_as_documented() {
    let md = "text\n```sh\n$ echo a \\\n  b   # comment\noutput line\n$ make test   # not run by tests: it is the suite\n```\n```sh\n# as root\n$ apivip drill   # fails: one node\n$ sudo tee /etc/apivip/x <<'EOF'\nk = 1\nEOF\n```\n```toml\n$ not a command\n```\n";
    let c = commands("t.md", md);
    assert_eq!(c.len(), 4, "{c:?}");
    assert_eq!((c[0].line, c[0].expect.clone()), (3, Expect::Success));
    assert!(c[0].text.contains("b   # comment") && !c[0].needs_root);
    assert_eq!(c[1].skip.as_deref(), Some("it is the suite"));
    assert_eq!(c[2].expect, Expect::Failure);
    assert!(c[2].needs_root);
    assert!(c[3].text.ends_with("k = 1\nEOF"), "{:?}", c[3].text);
    let bd = Path::new("/b");
    let r = rewrite(&c[3].text, Path::new("/tmp/x"), "ns", bd);
    assert!(r.starts_with("tee /tmp/x/etc/apivip/x <<'EOF'"), "{r}");
    assert_eq!(
        rewrite(
            "head -c 32 /dev/urandom | sudo tee /etc/apivip/key",
            Path::new("/t"),
            "n",
            bd
        ),
        "head -c 32 /dev/urandom | tee /t/etc/apivip/key"
    );
    assert_eq!(
        rewrite(
            "sudo ip netns add apivip-try",
            Path::new("/t"),
            "apivip-try-7",
            bd
        ),
        "ip netns add apivip-try-7"
    );
    assert_eq!(
        rewrite("make demo", Path::new("/t"), "n", bd),
        "/b/apivip-demo"
    );
    assert_eq!(
        rewrite("target/debug/apivip-demo --ipv6", Path::new("/t"), "n", bd),
        "/b/apivip-demo --ipv6"
    );
}
