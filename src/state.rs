//! What must survive a restart: the election's term and vote, and the wire codec's boot
//! epoch. Each write is a new file fsynced and renamed over the old one, then the
//! directory fsynced, so a crash leaves either the old state or the new, never a torn one.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use apivip_proto::election::Persisted;
use thiserror::Error;

const FILE: &str = "state";

#[derive(Debug, Error)]
pub enum StateError {
    #[error("state directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "state file {path}, line {line}: {problem} (move the file away to start from term 0; the node then stays silent for one election timeout as after any start)"
    )]
    Corrupt {
        path: PathBuf,
        line: usize,
        problem: String,
    },
}

/// The contents of the state file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct State {
    pub election: Persisted,
    /// The boot epoch of the last start: the next must be greater.
    pub epoch: u64,
}

pub struct Store {
    dir: PathBuf,
    state: State,
}

impl Store {
    /// Opens (creating) the state directory and reads the last state, if any.
    pub fn open(dir: &Path) -> Result<Store, StateError> {
        fs::create_dir_all(dir).map_err(|source| StateError::Dir {
            path: dir.into(),
            source,
        })?;
        let path = dir.join(FILE);
        let state = match fs::read_to_string(&path) {
            Ok(text) => parse(&path, &text)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(source) => return Err(StateError::Io { path, source }),
        };
        Ok(Store {
            dir: dir.into(),
            state,
        })
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Picks this run's boot epoch, max(last + 1, Unix time in ms), and makes it durable
    /// before any datagram carries it: peers reject counters of an epoch they saw end.
    pub fn begin_epoch(&mut self) -> Result<u64, StateError> {
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let epoch = (self.state.epoch + 1).max(unix_ms);
        self.write(State {
            epoch,
            ..self.state
        })?;
        Ok(epoch)
    }

    /// Makes the election's term and vote durable (called before any message that
    /// depends on them leaves).
    pub fn persist(&mut self, p: Persisted) -> Result<(), StateError> {
        if p == self.state.election {
            return Ok(());
        }
        self.write(State {
            election: p,
            ..self.state
        })
    }

    fn write(&mut self, s: State) -> Result<(), StateError> {
        let path = self.dir.join(FILE);
        let tmp = self.dir.join(format!("{FILE}.tmp"));
        let io = |source| StateError::Io {
            path: tmp.clone(),
            source,
        };
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        let voted = s
            .election
            .voted_for
            .map_or("none".to_string(), |v| v.to_string());
        write!(f, "# apivip election state: written before every vote; do not edit\nterm {}\nvoted_for {}\nepoch {}\n", s.election.term, voted, s.epoch)
            .map_err(io)?;
        f.sync_all().map_err(io)?;
        fs::rename(&tmp, &path).map_err(|source| StateError::Io {
            path: path.clone(),
            source,
        })?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| StateError::Dir {
                path: self.dir.clone(),
                source,
            })?;
        self.state = s;
        Ok(())
    }
}

fn parse(path: &Path, text: &str) -> Result<State, StateError> {
    let mut s = State::default();
    let corrupt = |line: usize, problem: String| StateError::Corrupt {
        path: path.into(),
        line,
        problem,
    };
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line
            .split_once(' ')
            .ok_or_else(|| corrupt(i + 1, format!("expected `key value`, found {line:?}")))?;
        let num = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| corrupt(i + 1, format!("{key}: {v:?} is not a number")))
        };
        match key {
            "term" => s.election.term = num(value)?,
            "voted_for" if value == "none" => s.election.voted_for = None,
            "voted_for" => {
                let v = num(value)?;
                let id = u32::try_from(v)
                    .map_err(|_| corrupt(i + 1, format!("voted_for: {v} is not a node id")))?;
                s.election.voted_for = Some(id);
            }
            "epoch" => s.epoch = num(value)?,
            other => return Err(corrupt(i + 1, format!("unknown key {other:?}"))),
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_epochs_grow() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        assert_eq!(s.state(), State::default());
        let e1 = s.begin_epoch().unwrap();
        s.persist(Persisted {
            term: 7,
            voted_for: Some(3),
        })
        .unwrap();
        let mut s2 = Store::open(dir.path()).unwrap();
        assert_eq!(
            s2.state().election,
            Persisted {
                term: 7,
                voted_for: Some(3)
            }
        );
        assert_eq!(s2.state().epoch, e1);
        let e2 = s2.begin_epoch().unwrap();
        assert!(e2 > e1);
    }

    #[test]
    fn epoch_grows_even_when_the_clock_went_back() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(FILE),
            "term 1\nvoted_for none\nepoch 99999999999999\n",
        )
        .unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        assert_eq!(s.begin_epoch().unwrap(), 100_000_000_000_000);
    }

    #[test]
    fn corrupt_file_names_path_and_line() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(FILE), "term 1\nvoted_for x\n").unwrap();
        let e = Store::open(dir.path()).err().unwrap().to_string();
        assert!(
            e.contains("line 2") && e.contains("voted_for") && e.contains("state"),
            "{e}"
        );
    }
}
