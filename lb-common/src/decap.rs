//! `lb decap`, the backends' half of direct server return: the types of its maps and
//! its counters, shared by its XDP program and the command that loads it.

/// A VIP the backend takes encapsulated packets for (key of `DECAP_VIPS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecapVip {
    /// Network order words; IPv4 in the first.
    pub addr: [u32; 4],
    /// `maps::FAMILY_V4` or `FAMILY_V6`.
    pub family: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<DecapVip>() == 20);

/// The settings of `lb decap` (the one entry of `DECAP_CONFIG`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecapConfig {
    /// The GUE port, network order; 0: GUE is not taken.
    pub gue_port: u16,
    /// 1: take IPv4 / IPv6 outer packets only from the sources in `DECAP_FROM4` /
    /// `DECAP_FROM6` (`--from` gave some of that family); 0: from any source.
    pub from_v4: u8,
    pub from_v6: u8,
    /// 1: ipip (IPv4 protocol 4, IPv6 next header 41) is taken.
    pub ipip: u8,
    pub _pad: u8,
    /// `--clamp-mss`: the largest MSS the VIP's SYN-ACKs may announce, host order; 0:
    /// not clamped.
    pub clamp_mss: u16,
}
const _: () = assert!(core::mem::size_of::<DecapConfig>() == 8);

/// Counters (`DECAP_COUNTERS`, per CPU).
pub const DECAPSULATED: u32 = 0;
/// Not encapsulated for us (anything else the interface receives): passed untouched.
pub const PASSED: u32 = 1;
/// Encapsulated, but the inner destination is not a configured VIP: passed untouched, so
/// the host is no open tunnel (its kernel has no decapsulation of its own).
pub const NOT_VIP: u32 = 2;
/// Encapsulated from a source outside `--from`: passed untouched.
pub const NOT_FROM_LB: u32 = 3;
/// Encapsulated, but cut short or inconsistent: passed untouched.
pub const MALFORMED: u32 = 4;
/// SYN-ACKs from a VIP whose MSS was lowered to `--clamp-mss`.
pub const MSS_CLAMPED: u32 = 5;
pub const NUM_COUNTERS: u32 = 6;

/// The counters' names, by index.
pub const COUNTER_NAMES: [&str; NUM_COUNTERS as usize] = [
    "decapsulated",
    "passed",
    "not_vip",
    "not_from_lb",
    "malformed",
    "mss_clamped",
];
