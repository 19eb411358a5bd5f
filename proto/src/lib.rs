//! apivip's protocol core: the wire format and the election state machine.
//!
//! Nothing here performs I/O or reads a clock. Every input carries its own timestamp and
//! every output is an action for the caller to carry out, so a test can drive a whole
//! simulated cluster deterministically.

pub mod election;
pub mod message;
pub mod rng;
pub mod time;
pub mod timing;
pub mod wire;

pub use message::{Body, Flags, Message, MessageKind, NodeId, Priority, Term};
pub use time::Instant;
pub use wire::{ClusterId, Codec, DecodeError, Key, KeyError, Keyring, Received};

#[cfg(feature = "sim")]
pub mod sim;
