//! What must survive a restart: the election's term and vote, and the wire codec's boot
//! epoch.
//!
//! The file is written once at full size and then only overwritten in place, through a
//! descriptor opened at start-up: two fixed 512-byte slots, written alternately, each with
//! a sequence number and a checksum, followed by fdatasync. A crash mid-write tears at
//! most the slot being written; the other still holds the previous state, and the reader
//! takes the valid slot with the highest sequence.
//!
//! Why in place: a vote has to be durable before it is sent, and the old scheme (write a
//! new file, fsync, rename, fsync the directory) needed free blocks and a free
//! descriptor for every vote. On a full disk, or with the process at its descriptor
//! limit (a flood of forwarder connections), the node could not vote at all, and a
//! 2-of-3 majority with the holder dead had no VIP until a person freed space.
//! Overwriting blocks the file already owns needs neither.

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use apivip_proto::election::Persisted;
use apivip_proto::message::{MAX_EPOCH, MAX_TERM};
use thiserror::Error;

const FILE: &str = "state";
const SLOT: usize = 512;
const SLOTS: usize = 2;
/// Each slot is one line starting with `#`: a release that reads the earlier text
/// format (0.1) takes the file for an empty one (state lost: it starts from term 0 and
/// stays silent first) instead of refusing to start after a downgrade.
const MAGIC: &str = "# apivip-state 2";
/// The first line of the text format written before slots (migrated on open).
const OLD_HEADER: &str = "# apivip election state";

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
        "state file {path}, {place}: {problem} (move the file away to start from term 0; the node then stays silent for one election timeout as after any start)"
    )]
    Corrupt {
        path: PathBuf,
        place: String,
        problem: String,
    },
}

impl StateError {
    /// The OS error behind a failed write, for metrics and logs (ENOSPC, EIO, ...).
    pub fn errno(&self) -> Option<i32> {
        match self {
            StateError::Dir { source, .. } | StateError::Io { source, .. } => source.raw_os_error(),
            StateError::Corrupt { .. } => None,
        }
    }
}

/// The contents of the state file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct State {
    pub election: Persisted,
    /// The boot epoch of the last start: the next must be greater.
    pub epoch: u64,
    /// The longest promise (election_timeout_min, ms) this node may have given: a restart
    /// stays silent at least this long even when the timing changed across it.
    pub promise_ms: u64,
}

/// Where the election's term and vote go before any message that depends on them leaves.
/// The daemon's store; tests put a failing one in its place.
pub trait Persist {
    fn persist(&mut self, p: Persisted) -> Result<(), StateError>;
    /// Records the longest promise this node may have outstanding.
    fn record_promise(&mut self, promise: std::time::Duration) -> Result<(), StateError>;
}

pub struct Store {
    path: PathBuf,
    file: File,
    state: State,
    /// Sequence number of the newest valid slot, and which slot that is.
    seq: u64,
    slot: usize,
}

impl Store {
    /// Opens (creating) the state directory and file and reads the last state. A file in
    /// the earlier text format is converted.
    pub fn open(dir: &Path) -> Result<Store, StateError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| StateError::Dir {
                path: dir.into(),
                source,
            })?;
        let path = dir.join(FILE);
        let io = |source| StateError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        let mut bytes = Vec::with_capacity(SLOT * SLOTS);
        (&mut file)
            .take((SLOT * SLOTS * 4) as u64)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        let mut store = Store {
            path: path.clone(),
            file,
            state: State::default(),
            seq: 0,
            slot: 0,
        };
        if bytes.len() == SLOT * SLOTS && bytes.starts_with(MAGIC.as_bytes()) {
            let (seq, slot, state) = read_slots(&path, &bytes)?;
            store.seq = seq;
            store.slot = slot;
            store.state = state;
        } else {
            // New (empty), or the earlier text format: write both slots at full size once,
            // so that later writes only overwrite blocks the file owns.
            let state = if bytes.is_empty() {
                State::default()
            } else {
                parse_old(&path, &bytes)?
            };
            store.format(state)?;
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|source| StateError::Dir {
                    path: dir.into(),
                    source,
                })?;
        }
        Ok(store)
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Picks this run's boot epoch, max(last + 1, Unix time in ms), and makes it durable
    /// before any datagram carries it: peers reject counters of an epoch they saw end.
    pub fn begin_epoch(&mut self) -> Result<u64, StateError> {
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let epoch = self.state.epoch.saturating_add(1).max(unix_ms);
        if epoch > MAX_EPOCH {
            return Err(StateError::Corrupt {
                path: self.path.clone(),
                place: "epoch".into(),
                problem: format!(
                    "the next boot epoch {epoch} is beyond the largest peers accept ({MAX_EPOCH}); is the clock (or the file) far in the future?"
                ),
            });
        }
        self.write(State {
            epoch,
            ..self.state
        })?;
        Ok(epoch)
    }

    fn format(&mut self, s: State) -> Result<(), StateError> {
        let io = |source| StateError::Io {
            path: self.path.clone(),
            source,
        };
        let mut all = Vec::with_capacity(SLOT * SLOTS);
        all.extend_from_slice(&encode(1, s));
        all.extend_from_slice(&encode(0, s));
        self.file.set_len(0).map_err(io)?;
        self.file.write_all_at(&all, 0).map_err(io)?;
        self.file.sync_all().map_err(io)?;
        self.seq = 1;
        self.slot = 0;
        self.state = s;
        Ok(())
    }

    /// Overwrites the older slot and syncs. On failure the state in memory is unchanged
    /// (the caller retries), and the other slot still holds it on disk.
    fn write(&mut self, s: State) -> Result<(), StateError> {
        let io = |source| StateError::Io {
            path: self.path.clone(),
            source,
        };
        let seq = self.seq.saturating_add(1);
        let slot = 1 - self.slot;
        self.file
            .write_all_at(&encode(seq, s), (slot * SLOT) as u64)
            .map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.seq = seq;
        self.slot = slot;
        self.state = s;
        Ok(())
    }
}

impl Persist for Store {
    /// Makes the election's term and vote durable (called before any message that
    /// depends on them leaves).
    fn persist(&mut self, p: Persisted) -> Result<(), StateError> {
        if p == self.state.election {
            return Ok(());
        }
        self.write(State {
            election: p,
            ..self.state
        })
    }

    fn record_promise(&mut self, promise: std::time::Duration) -> Result<(), StateError> {
        let ms = u64::try_from(promise.as_millis()).unwrap_or(u64::MAX);
        if ms == self.state.promise_ms {
            return Ok(());
        }
        self.write(State {
            promise_ms: ms,
            ..self.state
        })
    }
}

/// FNV-1a 64: torn or bit-flipped slots, not an adversary, are what it must catch.
fn checksum(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn encode(seq: u64, s: State) -> [u8; SLOT] {
    let voted = s
        .election
        .voted_for
        .map_or("none".to_string(), |v| v.to_string());
    let record = format!(
        "{MAGIC} seq {seq} term {} voted_for {voted} epoch {} promise_ms {}",
        s.election.term, s.epoch, s.promise_ms
    );
    let line = format!("{record} sum {:016x}", checksum(record.as_bytes()));
    let mut out = [b' '; SLOT];
    let n = line.len().min(SLOT - 1);
    out[..n].copy_from_slice(&line.as_bytes()[..n]);
    out[SLOT - 1] = b'\n';
    out
}

/// One slot: `Ok(None)` when torn or unwritten, `Err` when intact but out of range.
fn decode(path: &Path, index: usize, bytes: &[u8]) -> Result<Option<(u64, State)>, StateError> {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Ok(None);
    };
    let line = text.trim_end();
    let Some((record, sum)) = line.rsplit_once(" sum ") else {
        return Ok(None);
    };
    if u64::from_str_radix(sum, 16).ok() != Some(checksum(record.as_bytes())) {
        return Ok(None);
    }
    let Some(rest) = record.strip_prefix(MAGIC) else {
        return Ok(None);
    };
    let place = format!("slot {index}");
    let corrupt = |problem: String| StateError::Corrupt {
        path: path.into(),
        place: place.clone(),
        problem,
    };
    let words: Vec<&str> = rest.split_whitespace().collect();
    let mut seq = None;
    let mut s = State::default();
    for pair in words.chunks(2) {
        let [key, value] = pair else {
            return Err(corrupt(format!("{rest:?} is not `key value` pairs")));
        };
        let num = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| corrupt(format!("{key}: {v:?} is not a number")))
        };
        match *key {
            "seq" => seq = Some(num(value)?),
            "term" => s.election.term = num(value)?,
            "voted_for" if *value == "none" => s.election.voted_for = None,
            "voted_for" => {
                let v = num(value)?;
                s.election.voted_for = Some(
                    u32::try_from(v)
                        .map_err(|_| corrupt(format!("voted_for: {v} is not a node id")))?,
                );
            }
            "epoch" => s.epoch = num(value)?,
            "promise_ms" => s.promise_ms = num(value)?,
            other => return Err(corrupt(format!("unknown key {other:?}"))),
        }
    }
    check_range(&s).map_err(corrupt)?;
    Ok(seq.map(|q| (q, s)))
}

/// Terms and epochs past the protocol's bounds would wrap or be refused by every peer.
fn check_range(s: &State) -> Result<(), String> {
    if s.election.term > MAX_TERM {
        return Err(format!(
            "term {} is beyond the largest any node uses ({MAX_TERM})",
            s.election.term
        ));
    }
    if s.epoch > MAX_EPOCH {
        return Err(format!(
            "epoch {} is beyond the largest peers accept ({MAX_EPOCH})",
            s.epoch
        ));
    }
    Ok(())
}

fn read_slots(path: &Path, bytes: &[u8]) -> Result<(u64, usize, State), StateError> {
    let mut best: Option<(u64, usize, State)> = None;
    for (i, chunk) in bytes.chunks(SLOT).enumerate().take(SLOTS) {
        if let Some((seq, s)) = decode(path, i, chunk)?
            && best.is_none_or(|(b, _, _)| seq > b)
        {
            best = Some((seq, i, s));
        }
    }
    best.ok_or_else(|| StateError::Corrupt {
        path: path.into(),
        place: "both slots".into(),
        problem: "neither slot holds a valid record (checksum mismatch)".into(),
    })
}

/// The text format of earlier versions: `term N`, `voted_for N|none`, `epoch N` lines.
fn parse_old(path: &Path, bytes: &[u8]) -> Result<State, StateError> {
    let corrupt = |line: usize, problem: String| StateError::Corrupt {
        path: path.into(),
        place: format!("line {line}"),
        problem,
    };
    let text = std::str::from_utf8(bytes)
        .map_err(|_| corrupt(1, "neither a state file of this version nor text".into()))?;
    if !text.is_empty() && !text.starts_with(OLD_HEADER) && !text.starts_with("term ") {
        return Err(corrupt(1, "not an apivip state file".into()));
    }
    let mut s = State::default();
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
    check_range(&s).map_err(|p| corrupt(1, p))?;
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
        drop(s);
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

    /// Every write lands in blocks the file already owns: its size never changes after
    /// the first open, so a full disk cannot refuse a vote.
    #[test]
    fn writes_never_grow_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        let size = || fs::metadata(dir.path().join(FILE)).unwrap().len();
        assert_eq!(size(), (SLOT * SLOTS) as u64);
        for term in 1..50 {
            s.persist(Persisted {
                term,
                voted_for: Some(u32::try_from(term % 3 + 1).unwrap()),
            })
            .unwrap();
            assert_eq!(size(), (SLOT * SLOTS) as u64);
        }
        assert_eq!(Store::open(dir.path()).unwrap().state().election.term, 49);
    }

    /// A write torn in the middle (a crash) leaves the previous state readable.
    #[test]
    fn a_torn_slot_falls_back_to_the_other() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        s.persist(Persisted {
            term: 5,
            voted_for: Some(2),
        })
        .unwrap();
        s.persist(Persisted {
            term: 6,
            voted_for: None,
        })
        .unwrap();
        let newest = s.slot;
        drop(s);
        let path = dir.path().join(FILE);
        let mut bytes = fs::read(&path).unwrap();
        bytes[newest * SLOT + 40] ^= 0x55;
        fs::write(&path, &bytes).unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(
            s.state().election,
            Persisted {
                term: 5,
                voted_for: Some(2)
            }
        );
    }

    #[test]
    fn the_earlier_text_format_is_converted() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(FILE),
            "# apivip election state: written before every vote; do not edit\nterm 4\nvoted_for 2\nepoch 99\n",
        )
        .unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.state().election.term, 4);
        assert_eq!(s.state().election.voted_for, Some(2));
        assert_eq!(s.state().epoch, 99);
        drop(s);
        let again = Store::open(dir.path()).unwrap();
        assert_eq!(again.state().election.term, 4);
        assert_eq!(
            fs::metadata(dir.path().join(FILE)).unwrap().len(),
            (SLOT * SLOTS) as u64
        );
    }

    /// The promise floor survives restarts, and the release before slots (0.1) would
    /// read the file as empty rather than refuse it: every slot is a comment to it.
    #[test]
    fn promise_floor_survives_and_slots_are_comments_to_the_old_format() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        s.record_promise(std::time::Duration::from_millis(2200))
            .unwrap();
        drop(s);
        assert_eq!(Store::open(dir.path()).unwrap().state().promise_ms, 2200);
        let text = fs::read_to_string(dir.path().join(FILE)).unwrap();
        assert!(
            text.lines()
                .all(|l| l.trim().is_empty() || l.starts_with('#')),
            "{text}"
        );
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

    /// A term or epoch at u64::MAX (or anything past the protocol's bounds) is refused
    /// with the file and the field named, instead of wrapping to 0 at the next election.
    #[test]
    fn out_of_range_terms_and_epochs_are_refused() {
        for (text, field) in [
            (
                format!("term {}\nvoted_for none\nepoch 1\n", u64::MAX),
                "term",
            ),
            (
                format!("term {}\nvoted_for none\nepoch 1\n", MAX_TERM + 1),
                "term",
            ),
            (
                format!("term 1\nvoted_for none\nepoch {}\n", u64::MAX),
                "epoch",
            ),
        ] {
            let dir = tempfile::tempdir().unwrap();
            fs::write(dir.path().join(FILE), &text).unwrap();
            let e = Store::open(dir.path()).err().expect("refused").to_string();
            assert!(e.contains(field) && e.contains("state"), "{e}");
        }
        // At the bound itself the epoch cannot grow: refused, not wrapped.
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(FILE),
            format!("term 1\nvoted_for none\nepoch {MAX_EPOCH}\n"),
        )
        .unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        let e = s.begin_epoch().expect_err("refused").to_string();
        assert!(e.contains("epoch"), "{e}");
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
