//! The lb daemon as a library: `main.rs` parses flags and calls into it.
#![deny(unsafe_code)]

pub mod cli;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod health;
pub mod neigh;
pub mod object;
pub mod pin;
pub mod runtime;
pub mod stats;
pub mod sys;
