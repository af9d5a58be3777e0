//! The lb daemon as a library: `main.rs` parses flags and calls into it.
//!
//! Layers, lowest first (a module imports only from layers below it):
//! - `sys`: the few libc calls (the only `unsafe`); `iproute`: runs `ip`; `net`: socket
//!   helpers; `health`: one check spec, probes, rise/fall, one task per backend.
//! - `config`: typed settings from the file and the flags layered over it.
//! - `dataplane`: the only code that loads, attaches, pins and writes the maps (the
//!   sockmap splice engine's maps too).
//! - `proxy`: the PROXY protocol codec, the splice engines, the accept path.
//! - `announce`: the routes of the VIPs a routing daemon announces.
//! - `control`: services and backends, and every change to them as ordered map writes.
//! - `api` (the admin API's types, server, metrics and client), then `daemon` (start, run,
//!   shutdown) and `cli` (flags, `lb ctl`, `lb stats`).
//! - `fuzz`: what must hold for any admin request or config file (the fuzz targets').
#![deny(unsafe_code)]

pub mod announce;
pub mod api;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod fuzz;
pub mod health;
pub mod iproute;
pub mod net;
pub mod proxy;
pub mod sys;
