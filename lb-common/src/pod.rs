//! `aya::Pod` for the map types, so the daemon can read and write them.

use crate::maps::{
    Backend, Clock, FlowKey, FlowState, GlobalConfig, LocalMacs, ReverseNat, Service, ServiceSlot,
    SourceKey, SpliceLayout, TrafficCounters, VipKey,
};

// SAFETY: each type is #[repr(C)], Copy, built only from integers and integer arrays,
// with explicit padding fields (checked by the size asserts in maps.rs), so every bit
// pattern is a valid value and no byte is uninitialised padding.
unsafe impl aya::Pod for FlowKey {}
// SAFETY: as above.
unsafe impl aya::Pod for VipKey {}
// SAFETY: as above.
unsafe impl aya::Pod for Service {}
// SAFETY: as above (a `VipKey` and a `Service`, 36 bytes, no padding).
unsafe impl aya::Pod for ServiceSlot {}
// SAFETY: as above.
unsafe impl aya::Pod for Backend {}
// SAFETY: as above.
unsafe impl aya::Pod for FlowState {}
// SAFETY: as above.
unsafe impl aya::Pod for ReverseNat {}
// SAFETY: as above.
unsafe impl aya::Pod for GlobalConfig {}
// SAFETY: as above.
unsafe impl aya::Pod for TrafficCounters {}
// SAFETY: as above.
unsafe impl aya::Pod for SourceKey {}
// SAFETY: as above.
unsafe impl aya::Pod for SpliceLayout {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::syn_proxy::SynRate {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::decap::DecapVip {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::decap::DecapConfig {}
// SAFETY: as above.
unsafe impl aya::Pod for LocalMacs {}
// SAFETY: as above.
unsafe impl aya::Pod for Clock {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::maps::WatchSpec {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::maps::WatchEvent {}
