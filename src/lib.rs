//! The apivip daemon and its command-line interface.

pub mod config;
pub mod duration;
pub mod forward;
pub mod health;
pub mod standin;
