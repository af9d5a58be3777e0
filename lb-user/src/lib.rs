//! The lb daemon as a library: `main.rs` parses flags and calls into it.
#![deny(unsafe_code)]

pub mod admin;
pub mod cli;
pub mod config;
pub mod control;
pub mod ctl;
pub mod daemon;
pub mod dataplane;
pub mod ebpf_log;
pub mod health;
pub mod histogram;
pub mod metrics;
pub mod neigh;
pub mod object;
pub mod pin;
pub mod proxy;
pub mod runtime;
pub mod stats;
pub mod sys;
