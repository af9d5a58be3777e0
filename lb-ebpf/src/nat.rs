//! The NAT rewrite, shared by both directions: addresses, ports, TTL and the checksums
//! that cover them.

use aya_ebpf::programs::XdpContext;
use core::ptr::addr_of_mut;
use lb_common::{
    encap::{self, ENCAP_GUE, gue_source_port},
    maps::{Backend, FAMILY_V4, PROTO_TCP, ReverseNat, Service},
};
use lb_ebpf::csum;
use network_types::{
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
};

use crate::{
    packet::ptr_at,
    parse::{OFF_MASK, Packet},
    unaligned::{load16, load32, store16, store32},
};

/// [`Target::backend`] of a segment the LB answers itself (a SYN cookie's SYN-ACK): no
/// backend's counters, no reply next hop cached.
pub const NO_BACKEND: u32 = u32::MAX;

/// The tuple a packet is rewritten to, and whose counters it bumps.
#[repr(C)]
pub struct Target {
    /// New source address, network order words.
    pub src: [u32; 4],
    /// New destination address, network order words.
    pub dst: [u32; 4],
    /// New source port, network order.
    pub sport: u16,
    /// New destination port, network order.
    pub dport: u16,
    pub backend: u32,
    pub service: u32,
    /// Forward direction: which of the family's SNAT addresses `src` is
    /// (`FlowState::snat_idx`).
    pub snat_idx: u8,
    /// A new flow opened by a SYN cookie's ACK (`syn_proxy`): 1.
    pub proxied: u8,
    /// DSR: the service's `lb_common::encap::ENCAP_*` (the packet is kept whole; `src`,
    /// `dst` and, for GUE, the ports are the outer header's); 0 otherwise.
    pub encap: u8,
    pub _pad: u8,
}

impl Target {
    /// Client → VIP becomes SNAT address:port → backend; the SNAT address and port
    /// (`src`, `sport`, `snat_idx`) are already set (`snat`).
    #[inline(always)]
    pub fn set_forward(&mut self, b: &Backend, id: u32) {
        self.dst = b.addr;
        self.dport = b.port;
        self.backend = id;
    }

    /// DSR toward backend `b` of service `svc`: the packet stays as it is, inside an
    /// outer header from the LB's address toward the backend to the backend's address;
    /// for GUE the ports become the outer UDP header's (the source from the flow hash).
    #[inline(always)]
    pub fn set_encap(&mut self, svc: &Service, b: &Backend, id: u32, hash: u32) {
        self.src = b.snat_addr;
        self.dst = b.addr;
        self.backend = id;
        self.encap = svc.encap;
        if svc.encap == ENCAP_GUE {
            self.sport = gue_source_port(hash).to_be();
            self.dport = svc.gue_port;
        }
    }

    /// Bytes the encapsulation adds in front of the packet.
    #[inline(always)]
    pub fn outer_len(&self, family: u8) -> u32 {
        encap::overhead(self.encap, family != FAMILY_V4) as u32
    }

    /// Backend → SNAT address:port becomes VIP → client.
    #[inline(always)]
    pub fn set_reverse(&mut self, r: &ReverseNat) {
        self.src = r.flow.dst;
        self.dst = r.flow.src;
        self.sport = r.flow.dport;
        self.dport = r.flow.sport;
        self.backend = u32::from(r.backend);
        self.service = r.service_id;
    }
}

/// Rewrites the packet's addresses, ports and TTL to `t`; false only where the verifier
/// needs a branch (the parser checked the headers).
#[inline(always)]
pub fn rewrite(ctx: &XdpContext, pkt: &Packet, t: &Target) -> bool {
    if pkt.key.family == FAMILY_V4 {
        rewrite_v4(ctx, pkt, t)
    } else {
        rewrite_v6(ctx, pkt, t)
    }
}

/// The two ports (network order) as the one 32-bit word they form in the TCP header.
#[inline(always)]
pub fn ports_word(sport: u16, dport: u16) -> u32 {
    let s = sport.to_ne_bytes();
    let d = dport.to_ne_bytes();
    u32::from_ne_bytes([s[0], s[1], d[0], d[1]])
}

/// The IP and TCP headers of a parsed packet, checked one after the other: the verifier
/// learns nothing from two checks whose results the compiler combines before branching.
#[inline(always)]
fn headers<IP>(ctx: &XdpContext, pkt: &Packet) -> Option<(*mut IP, *mut TcpHdr)> {
    // verifier: the mask bounds offsets read back from the stack; it never changes them.
    let ip = ptr_at::<IP>(ctx, pkt.l3 as usize & OFF_MASK)?;
    let th = ptr_at::<TcpHdr>(ctx, pkt.l4 as usize & OFF_MASK)?;
    Some((ip, th))
}

/// Inlined: IPv4 is the common packet (see `select::service`); `rewrite_v6` stays a
/// call of its own.
#[inline(always)]
fn rewrite_v4(ctx: &XdpContext, pkt: &Packet, t: &Target) -> bool {
    let Some((ip, th)) = headers::<Ipv4Hdr>(ctx, pkt) else {
        return false;
    };
    // SAFETY: `headers` checked that both headers are inside the packet.
    unsafe { rewrite_v4_at(ip, th, t) };
    true
}

/// Rewrites the IPv4 header at `ip` and the TCP header at `th` to `t` (`fast` has
/// them without a `Packet`).
///
/// # Safety
/// Both headers must lie inside the packet. Every access is to their fields, by
/// `unaligned`'s single loads and stores.
#[inline(always)]
pub unsafe fn rewrite_v4_at(ip: *mut Ipv4Hdr, th: *mut TcpHdr, t: &Target) {
    // SAFETY: the caller guarantees both headers are inside the packet; every access is
    // to their fields.
    unsafe {
        let saddr = addr_of_mut!((*ip).src_addr).cast::<u8>();
        let daddr = addr_of_mut!((*ip).dst_addr).cast::<u8>();
        // The ports open the TCP header.
        let ports = th.cast::<u8>();
        let old_src = load32(saddr);
        let old_dst = load32(daddr);
        let old_ports = load32(ports);
        let new_ports = ports_word(t.sport, t.dport);
        let ttl = (*ip).ttl;

        // IP header checksum: addresses and the TTL/protocol word.
        let ipc = addr_of_mut!((*ip).check).cast::<u8>();
        let from = [old_src, old_dst, u32::from_ne_bytes([ttl, PROTO_TCP, 0, 0])];
        let to = [
            t.src[0],
            t.dst[0],
            u32::from_ne_bytes([ttl - 1, PROTO_TCP, 0, 0]),
        ];
        store16(ipc, csum::replace(load16(ipc), &from, &to));

        // TCP checksum: pseudo-header addresses and the ports.
        let tcpc = addr_of_mut!((*th).check).cast::<u8>();
        let from = [old_src, old_dst, old_ports];
        let to = [t.src[0], t.dst[0], new_ports];
        store16(tcpc, csum::replace(load16(tcpc), &from, &to));

        store32(saddr, t.src[0]);
        store32(daddr, t.dst[0]);
        store32(ports, new_ports);
        (*ip).ttl = ttl - 1;
    }
}

#[inline(never)]
fn rewrite_v6(ctx: &XdpContext, pkt: &Packet, t: &Target) -> bool {
    let Some((ip, th)) = headers::<Ipv6Hdr>(ctx, pkt) else {
        return false;
    };
    // SAFETY: `headers` checked that both headers are inside the packet.
    unsafe { rewrite_v6_at(ip, th, t) };
    true
}

/// Rewrites the IPv6 header at `ip` and the TCP header at `th` to `t` (`fast` has
/// them without a `Packet`). A call of its own: inlined into the IPv6 fast path, the
/// rewrite's temporaries took that frame past the verifier's stack limit.
///
/// # Safety
/// Both headers must lie inside the packet. Every access is to their fields, by
/// `unaligned`'s single loads and stores.
#[inline(never)]
pub unsafe fn rewrite_v6_at(ip: *mut Ipv6Hdr, th: *mut TcpHdr, t: &Target) {
    // SAFETY: the caller guarantees both headers are inside the packet; the addresses
    // are the IPv6 header's last 32 bytes (source, then destination).
    unsafe {
        let addrs = addr_of_mut!((*ip).src_addr).cast::<u8>();
        let tcpc = addr_of_mut!((*th).check).cast::<u8>();
        let mut sum = csum::Update::new(load16(tcpc));
        let mut i = 0;
        while i < 4 {
            swap_word(&mut sum, addrs.add(4 * i), t.src[i]);
            swap_word(&mut sum, addrs.add(16 + 4 * i), t.dst[i]);
            i += 1;
        }
        swap_word(&mut sum, th.cast::<u8>(), ports_word(t.sport, t.dport));
        store16(tcpc, sum.finish());
        (*ip).hop_limit -= 1;
    }
}

/// Writes `to` over the covered word at `w`, counting the change into `sum`.
///
/// # Safety
/// `w` must point at four bytes inside the packet.
#[inline(always)]
unsafe fn swap_word(sum: &mut csum::Update, w: *mut u8, to: u32) {
    // SAFETY: the caller guarantees the word is inside the packet.
    unsafe {
        sum.word(load32(w), to);
        store32(w, to);
    }
}
