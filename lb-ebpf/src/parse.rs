//! Header parsing. All packet access goes through [`ptr_at`], which checks the access
//! against `data_end`; variable-length headers (`ihl`, `doff`) are validated before any
//! offset derived from them is used.

use aya_ebpf::{bindings::xdp_md, programs::XdpContext};
use core::mem::{MaybeUninit, align_of, size_of};
use lb_common::maps::{FAMILY_V4, FAMILY_V6, FlowKey, PROTO_TCP};

pub const ETH_HLEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const VLAN_HLEN: usize = 4;
pub const IPV4_HLEN: usize = 20;
pub const IPV6_HLEN: usize = 40;
pub const TCP_HLEN: usize = 20;

/// Offsets inside an IPv4 header.
pub mod v4 {
    pub const TOT_LEN: usize = 2;
    pub const FRAG_OFF: usize = 6;
    pub const TTL: usize = 8;
    pub const PROTO: usize = 9;
    pub const CSUM: usize = 10;
    pub const SADDR: usize = 12;
}
/// Offsets inside an IPv6 header.
pub mod v6 {
    pub const PAYLOAD_LEN: usize = 4;
    pub const NEXT_HDR: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SADDR: usize = 8;
}
/// Offsets inside a TCP header.
pub mod tcp {
    pub const DOFF: usize = 12;
    pub const FLAGS: usize = 13;
    pub const CSUM: usize = 16;
    pub const FIN: u8 = 0x01;
    pub const RST: u8 = 0x04;
}

/// Largest offset of a TCP header: Ethernet + VLAN tag + IPv4 header with options.
pub const MAX_L4_OFF: usize = ETH_HLEN + VLAN_HLEN + 60;
/// Mask that keeps every valid header offset (all are `<= MAX_L4_OFF`) unchanged; used to
/// give the verifier a bound on offsets read back from the stack.
pub const OFF_MASK: usize = 0x7f;
const _: () = assert!(MAX_L4_OFF <= OFF_MASK);

/// The context pointer, read with a volatile load so that the context field loads
/// below stay in the function that uses them. verifier: otherwise LLVM may hoist the
/// 32-bit `data`/`data_end` loads into the caller of an `#[inline(never)]` function and
/// zero-extend them in the callee, and the verifier rejects any arithmetic on packet
/// pointers before a bounds check (a plain 32-bit context load needs no extension).
#[inline(always)]
fn raw(ctx: &XdpContext) -> *mut xdp_md {
    // SAFETY: `ctx` is a valid reference; reading its field has no other precondition.
    unsafe { core::ptr::addr_of!(ctx.ctx).read_volatile() }
}

/// Start of the packet.
#[inline(always)]
pub fn data(ctx: &XdpContext) -> usize {
    // SAFETY: the context pointer is valid for the whole program run.
    unsafe { (*raw(ctx)).data as usize }
}

/// End of the packet.
#[inline(always)]
pub fn data_end(ctx: &XdpContext) -> usize {
    // SAFETY: as in `data`.
    unsafe { (*raw(ctx)).data_end as usize }
}

/// Length of the frame in bytes.
#[inline(always)]
pub fn frame_len(ctx: &XdpContext) -> usize {
    data_end(ctx) - data(ctx)
}

/// Zeroes a stack value with 32-bit stores the compiler cannot merge into a `memset`
/// call. verifier/codegen: the BPF backend turns such calls into a byte-loop subprogram.
#[inline(always)]
pub fn zeroed<T>(v: &mut MaybeUninit<T>) -> &mut T {
    const { assert!(size_of::<T>() % 4 == 0 && align_of::<T>() >= 4) };
    let p = v.as_mut_ptr().cast::<u32>();
    let mut i = 0;
    while i < size_of::<T>() / 4 {
        // SAFETY: `i * 4 < size_of::<T>()` and `T` is 4-byte aligned, so the store is
        // inside `v` and aligned.
        unsafe { p.add(i).write_volatile(0) };
        i += 1;
    }
    // SAFETY: every byte is now zero, and the callers' types are plain integers, valid
    // when zeroed.
    unsafe { v.assume_init_mut() }
}

/// A pointer to a `T` at `off` bytes into the packet, if the whole `T` is inside it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    let start = data(ctx);
    let end = data_end(ctx);
    if start + off + size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *mut T)
}

/// Reads a `T` at `off` bytes into the packet (any alignment).
#[inline(always)]
fn load<T: Copy>(ctx: &XdpContext, off: usize) -> Option<T> {
    let p = ptr_at::<T>(ctx, off)?;
    // SAFETY: `ptr_at` checked that the `size_of::<T>()` bytes at `p` are packet data;
    // `T` is a plain integer (array), valid for any bytes, read without alignment.
    Some(unsafe { p.read_unaligned() })
}

#[inline(always)]
fn load_be16(ctx: &XdpContext, off: usize) -> Option<u16> {
    load::<u16>(ctx, off).map(u16::from_be)
}

/// What the parser found.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Parsed {
    /// Not TCP over IP, or cut off before the ports: not ours to judge, pass untouched.
    Skip,
    /// A well-formed TCP segment; every field of [`Packet`] is set.
    Tcp,
    /// The ports are known (`key` is set) but a header is inconsistent.
    Malformed,
    /// An IPv4 fragment: only the first one has ports (`key` set, `l4` valid).
    FirstFragment,
    /// An IPv4 fragment after the first: no ports.
    LaterFragment,
}

/// The fields of a parsed packet the rest of the program uses.
#[repr(C)]
pub struct Packet {
    /// The packet's own 5-tuple (addresses and ports as in the packet).
    pub key: FlowKey,
    /// `bpf_ktime_get_coarse_ns()` when the packet arrived.
    pub now: u64,
    /// Offset of the IP header.
    pub l3: u32,
    /// Offset of the TCP header.
    pub l4: u32,
    /// IPv4 total length, or IPv6 header + payload length, host order.
    pub ip_len: u32,
    /// IPv4: the TOS byte; IPv6: the first header word masked to the flow info
    /// (traffic class and flow label), as the packet's bytes.
    pub tos_flowinfo: u32,
    /// TTL or hop limit.
    pub ttl: u8,
    /// TCP flags byte.
    pub tcp_flags: u8,
    pub _pad: [u8; 2],
}

/// Parses Ethernet, one optional VLAN tag, IPv4/IPv6 and TCP into `pkt`.
#[inline(never)]
pub fn parse(ctx: &XdpContext, pkt: &mut Packet) -> Parsed {
    let Some(mut proto) = load_be16(ctx, 12) else {
        return Parsed::Skip;
    };
    let mut l3 = ETH_HLEN;
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        let Some(inner) = load_be16(ctx, ETH_HLEN + 2) else {
            return Parsed::Skip;
        };
        proto = inner;
        l3 += VLAN_HLEN;
    }
    pkt.l3 = l3 as u32;
    match proto {
        ETH_P_IPV4 => parse_v4(ctx, l3, pkt),
        ETH_P_IPV6 => parse_v6(ctx, l3, pkt),
        _ => Parsed::Skip,
    }
}

/// Reads a `T` at `off` bytes past `base`, which a bounds check covered.
///
/// # Safety
/// `base..base + off + size_of::<T>()` must be inside the packet.
#[inline(always)]
unsafe fn at<T: Copy>(base: *const u8, off: usize) -> T {
    // SAFETY: the caller guarantees the bytes are packet data; `T` is a plain integer
    // (array), valid for any bytes; the read is unaligned-safe.
    unsafe { base.add(off).cast::<T>().read_unaligned() }
}

#[inline(always)]
fn parse_v4(ctx: &XdpContext, l3: usize, pkt: &mut Packet) -> Parsed {
    let Some(h) = ptr_at::<[u8; IPV4_HLEN]>(ctx, l3) else {
        return Parsed::Skip;
    };
    let h = h.cast::<u8>().cast_const();
    // SAFETY (all `at(h, ..)` below): `ptr_at` checked the 20-byte header at `h`, and
    // every offset + size read is at most 20.
    let (vihl, proto) = unsafe { (at::<u8>(h, 0), at::<u8>(h, v4::PROTO)) };
    if vihl >> 4 != 4 || proto != PROTO_TCP {
        return Parsed::Skip;
    }
    let ihl = (vihl & 0x0f) as usize * 4;
    let frag = u16::from_be(unsafe { at::<u16>(h, v4::FRAG_OFF) });
    let key = &mut pkt.key;
    key.src = [unsafe { at::<u32>(h, v4::SADDR) }, 0, 0, 0];
    key.dst = [unsafe { at::<u32>(h, v4::SADDR + 4) }, 0, 0, 0];
    key.proto = PROTO_TCP;
    key.family = FAMILY_V4;
    key._pad = [0; 2];
    if frag & 0x1fff != 0 {
        return Parsed::LaterFragment;
    }
    if ihl < IPV4_HLEN {
        // Where the ports would be is unknown: cannot tell whether it is ours.
        return Parsed::Skip;
    }
    let l4 = l3 + ihl;
    let Some(ports) = load::<[u16; 2]>(ctx, l4) else {
        return Parsed::Skip;
    };
    key.sport = ports[0];
    key.dport = ports[1];
    pkt.l4 = l4 as u32;
    if frag & 0x2000 != 0 {
        return Parsed::FirstFragment;
    }
    let tot_len = u16::from_be(unsafe { at::<u16>(h, v4::TOT_LEN) }) as usize;
    if tot_len < ihl + TCP_HLEN || l3 + tot_len > frame_len(ctx) {
        return Parsed::Malformed;
    }
    let Some(doff) = tcp_doff(ctx, l4, pkt) else {
        return Parsed::Malformed;
    };
    if doff > tot_len - ihl {
        return Parsed::Malformed;
    }
    pkt.ip_len = tot_len as u32;
    pkt.tos_flowinfo = unsafe { at::<u8>(h, 1) } as u32;
    pkt.ttl = unsafe { at::<u8>(h, v4::TTL) };
    Parsed::Tcp
}

#[inline(always)]
fn parse_v6(ctx: &XdpContext, l3: usize, pkt: &mut Packet) -> Parsed {
    let Some(h) = ptr_at::<[u8; IPV6_HLEN]>(ctx, l3) else {
        return Parsed::Skip;
    };
    let h = h.cast::<u8>().cast_const();
    // SAFETY (all `at(h, ..)` below): `ptr_at` checked the 40-byte header at `h`, and
    // every offset + size read is at most 40.
    let (ver, next) = unsafe { (at::<u8>(h, 0), at::<u8>(h, v6::NEXT_HDR)) };
    // Extension headers are not followed: only TCP directly after the header is ours.
    if ver >> 4 != 6 || next != PROTO_TCP {
        return Parsed::Skip;
    }
    let l4 = l3 + IPV6_HLEN;
    let Some(ports) = load::<[u16; 2]>(ctx, l4) else {
        return Parsed::Skip;
    };
    let key = &mut pkt.key;
    key.src = unsafe { at::<[u32; 4]>(h, v6::SADDR) };
    key.dst = unsafe { at::<[u32; 4]>(h, v6::SADDR + 16) };
    key.sport = ports[0];
    key.dport = ports[1];
    key.proto = PROTO_TCP;
    key.family = FAMILY_V6;
    key._pad = [0; 2];
    pkt.l4 = l4 as u32;
    let payload = u16::from_be(unsafe { at::<u16>(h, v6::PAYLOAD_LEN) }) as usize;
    if l4 + payload > frame_len(ctx) {
        return Parsed::Malformed;
    }
    let Some(doff) = tcp_doff(ctx, l4, pkt) else {
        return Parsed::Malformed;
    };
    if doff > payload {
        return Parsed::Malformed;
    }
    pkt.ip_len = (IPV6_HLEN + payload) as u32;
    // Traffic class and flow label: the first word without the version nibble.
    pkt.tos_flowinfo = unsafe { at::<u32>(h, 0) } & u32::from_be(0x0fff_ffff);
    pkt.ttl = unsafe { at::<u8>(h, v6::HOP_LIMIT) };
    Parsed::Tcp
}

/// Validates the TCP header at `l4` and returns its length; records its flags.
#[inline(always)]
fn tcp_doff(ctx: &XdpContext, l4: usize, pkt: &mut Packet) -> Option<usize> {
    let t = ptr_at::<[u8; TCP_HLEN]>(ctx, l4)?.cast::<u8>().cast_const();
    // SAFETY: `ptr_at` checked the 20-byte TCP header at `t`.
    let (doff, flags) = unsafe { (at::<u8>(t, tcp::DOFF), at::<u8>(t, tcp::FLAGS)) };
    let doff = (doff >> 4) as usize * 4;
    if doff < TCP_HLEN {
        return None;
    }
    pkt.tcp_flags = flags;
    Some(doff)
}
