//! Shared secrets that sign and verify datagrams, and the key file that holds them.

use std::fmt;

use hmac::{Hmac, KeyInit};
use sha2::{Digest, Sha256};

/// HMAC-SHA256, the only MAC of protocol version 1.
pub(crate) type HmacSha256 = Hmac<Sha256>;

/// The shortest key accepted, in bytes. 32 random bytes, or the 44 characters of
/// `openssl rand -base64 32`, carry more entropy than HMAC-SHA256 can use; anything much
/// shorter is likely a typed password.
pub const MIN_KEY_LEN: usize = 32;

/// The most keys a ring holds. A datagram whose MAC is bad is checked against every key,
/// so the limit bounds the work a forger can cause per datagram; rotation needs two.
pub const MAX_KEYS: usize = 8;

/// Why a key or key file was refused. Messages name the line and the problem, never the
/// key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The file has no key line, only blank lines and comments.
    #[error("key file holds no key (only blank lines or '#' comments); put one key per line")]
    Empty,
    /// A key line is shorter than [`MIN_KEY_LEN`].
    #[error(
        "key file line {line}: key is {len} bytes, need at least {MIN_KEY_LEN} \
         (generate one with `openssl rand -base64 32`)"
    )]
    LineTooShort {
        /// 1-based line number in the file.
        line: usize,
        /// The key's length in bytes.
        len: usize,
    },
    /// A key given directly (not through a file) is shorter than [`MIN_KEY_LEN`].
    #[error("key is {len} bytes, need at least {MIN_KEY_LEN}")]
    TooShort {
        /// The key's length in bytes.
        len: usize,
    },
    /// The same key appears twice; almost certainly a paste mistake during a rotation.
    #[error("key file line {line}: same key as line {first}")]
    Duplicate {
        /// The line of the repeat.
        line: usize,
        /// The line where the key first appears.
        first: usize,
    },
    /// More than [`MAX_KEYS`] keys.
    #[error("key file line {line}: more than {MAX_KEYS} keys; remove retired keys")]
    TooMany {
        /// The line of the first key over the limit.
        line: usize,
    },
}

/// One shared secret. `Debug` shows only its fingerprint.
#[derive(Clone)]
pub struct Key {
    bytes: Vec<u8>,
    /// HMAC state with the key already absorbed, cloned per datagram so the key's two
    /// block hashes are not recomputed for every message.
    mac: HmacSha256,
}

impl Key {
    /// A key from raw secret bytes (at least [`MIN_KEY_LEN`]).
    pub fn new(bytes: &[u8]) -> Result<Key, KeyError> {
        let too_short = KeyError::TooShort { len: bytes.len() };
        if bytes.len() < MIN_KEY_LEN {
            return Err(too_short);
        }
        Key::build(bytes).ok_or(too_short)
    }

    /// HMAC accepts keys of any length, so this returns `None` only if that ever changes;
    /// the caller then refuses the key rather than signing with some substitute.
    fn build(bytes: &[u8]) -> Option<Key> {
        let mac = HmacSha256::new_from_slice(bytes).ok()?;
        Some(Key {
            bytes: bytes.to_vec(),
            mac,
        })
    }

    /// Short hex of SHA-256 of the key: safe to log, and the same on every node that
    /// holds the same key, so operators can compare nodes. Computable by hand with
    /// `printf %s "$KEY" | sha256sum | cut -c1-12`.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(&self.bytes);
        digest[..FINGERPRINT_BYTES]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    pub(crate) fn mac(&self) -> HmacSha256 {
        self.mac.clone()
    }
}

const FINGERPRINT_BYTES: usize = 6;

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for Key {}

/// The keys a node uses: the first signs, every key verifies. Rotating means adding the
/// new key second everywhere, then moving it first everywhere, then removing the old one
/// (docs/protocol.md), so no node ever sees a MAC it cannot check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keyring {
    /// Never empty; `keys[0]` signs.
    keys: Vec<Key>,
}

impl Keyring {
    /// Parses a key file: one key per line, surrounding whitespace trimmed, blank lines
    /// and lines starting with `#` skipped. A line's bytes are the key as written (a
    /// base64 string is used as text, not decoded).
    pub fn parse(contents: &str) -> Result<Keyring, KeyError> {
        let mut keys: Vec<(usize, Key)> = Vec::new();
        for (index, raw) in contents.lines().enumerate() {
            let line = index + 1;
            let text = raw.trim();
            if text.is_empty() || text.starts_with('#') {
                continue;
            }
            let too_short = KeyError::LineTooShort {
                line,
                len: text.len(),
            };
            if text.len() < MIN_KEY_LEN {
                return Err(too_short);
            }
            if let Some((first, _)) = keys.iter().find(|(_, k)| k.bytes == text.as_bytes()) {
                return Err(KeyError::Duplicate {
                    line,
                    first: *first,
                });
            }
            if keys.len() == MAX_KEYS {
                return Err(KeyError::TooMany { line });
            }
            keys.push((line, Key::build(text.as_bytes()).ok_or(too_short)?));
        }
        if keys.is_empty() {
            return Err(KeyError::Empty);
        }
        Ok(Keyring {
            keys: keys.into_iter().map(|(_, k)| k).collect(),
        })
    }

    /// A ring of one key that both signs and verifies.
    pub fn single(bytes: &[u8]) -> Result<Keyring, KeyError> {
        Ok(Keyring {
            keys: vec![Key::new(bytes)?],
        })
    }

    /// Fingerprint of the signing key (see [`Key::fingerprint`]), for logs.
    pub fn fingerprint(&self) -> String {
        self.signing().fingerprint()
    }

    /// Fingerprints of every key, signing key first, for logs after a reload.
    pub fn fingerprints(&self) -> Vec<String> {
        self.keys.iter().map(Key::fingerprint).collect()
    }

    /// How many keys verify (at least 1).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always `false`: a ring holds at least one key. Present for clippy's `len` rule.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub(crate) fn signing(&self) -> &Key {
        // `keys` is never empty: both constructors guarantee it.
        &self.keys[0]
    }

    pub(crate) fn verifying(&self) -> impl Iterator<Item = &Key> {
        self.keys.iter()
    }
}
