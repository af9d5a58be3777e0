//! Types and pure logic shared by the lb XDP program (`lb-ebpf`) and the daemon (`lb-user`).
//!
//! Everything here compiles for the bpf target (`no_std`, no allocation) except the
//! Maglev table builder and the address helpers, which sit behind the `std` feature.
//! Map keys and values are `#[repr(C)]` with explicit padding: implicit padding in a
//! hash-map key is how lookups silently miss.
#![cfg_attr(not(feature = "std"), no_std)]

pub mod counters;
pub mod decap;
pub mod encap;
pub mod flow;
pub mod handoff;
pub mod hash;
pub mod maglev;
pub mod maps;
pub mod snat_probe;
pub mod source_limit;
pub mod syn_proxy;
pub mod tcp;

#[cfg(feature = "std")]
pub mod addr;
#[cfg(feature = "std")]
pub mod model;

#[cfg(feature = "user")]
mod pod;
