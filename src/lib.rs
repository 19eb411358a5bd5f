//! The apivip daemon and its command-line interface.

pub mod announce;
pub mod backoff;
pub mod bgp;
pub mod config;
pub mod control;
pub mod daemon;
pub mod doctor;
pub mod duration;
pub mod fds;
pub mod forward;
pub mod health;
pub mod heartbeat;
pub mod manifest;
pub mod metrics;
pub mod perms;
pub mod state;
pub mod vip;
