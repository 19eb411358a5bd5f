//! The apivip daemon and its command-line interface.
