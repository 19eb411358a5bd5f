//! The apivip daemon and its command-line interface.

pub mod announce;
pub mod config;
pub mod duration;
pub mod netns;
pub mod vip;
