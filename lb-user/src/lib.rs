//! The lb daemon as a library: `main.rs` parses flags and calls into it.
//!
//! Layers, lowest first (a module imports only from layers below it):
//! - `sys`: the few libc calls (the only `unsafe`); `net`: socket helpers.
//! - `config` (typed settings from the file and flags), `dataplane` (the only code that
//!   loads, attaches and writes the maps), `health` (probes, rise/fall), `proxy` (the
//!   PROXY protocol codec and the splice engines; the sockmap engine's maps are
//!   `dataplane`'s).
//! - `control`: services and backends, and every change to them as ordered map writes.
//! - `api` (the admin API's types, server, metrics and client), `daemon` (start, run,
//!   shutdown), `cli` (flags, `lb ctl`, `lb stats`).
#![deny(unsafe_code)]

pub mod api;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod health;
pub mod net;
pub mod proxy;
pub mod sys;
