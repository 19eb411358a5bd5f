//! The apivip daemon and its command-line interface.

pub mod config;
pub mod control;
pub mod daemon;
pub mod duration;
pub mod heartbeat;
pub mod state;
