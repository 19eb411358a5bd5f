//! The apivip daemon and its command-line interface.

pub mod config;
pub mod doctor;
pub mod duration;
pub mod manifest;
pub mod metrics;
