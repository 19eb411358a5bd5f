//! The cluster identifier carried in every header.

use std::fmt;

use sha2::{Digest, Sha256};

/// Which cluster a datagram belongs to: the first 8 bytes of
/// SHA-256(`"apivip-cluster-v1\0"` ‖ cluster name), big-endian.
///
/// It is not a secret (the MAC is the authentication). It lets two clusters that share a
/// network, or a key by mistake, drop each other's datagrams cheaply and with a clear
/// reason, before any MAC is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClusterId(pub u64);

/// Domain separation: a hash of a bare cluster name could collide with some other use of
/// SHA-256 over the same string.
const CLUSTER_DOMAIN: &[u8] = b"apivip-cluster-v1\0";

impl ClusterId {
    /// The id of the cluster called `name` (the name is hashed as UTF-8, unchanged).
    pub fn from_name(name: &str) -> ClusterId {
        let digest = Sha256::new()
            .chain_update(CLUSTER_DOMAIN)
            .chain_update(name.as_bytes())
            .finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        ClusterId(u64::from_be_bytes(first))
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}
