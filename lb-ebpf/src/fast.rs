//! The established fast path: most packets of a NAT flow change nothing but the flow's
//! clock and count (an ACK or data, no SYN, FIN or RST). Such a packet is forwarded
//! here, in either direction, with one bounds check for all its headers and none of
//! the general path's scratch (`Packet`, `Target`) to zero: plain IPv4 (no VLAN tag, no
//! options, not a fragment), its flow in
//! `FLOWS` and not closing, its next hop cached on this CPU. Such a segment for no VIP
//! and no NAT flow (the host's own traffic) is passed here. Anything else goes the
//! general way (`dispatch`), and so does anything this path is unsure of: it is only a
//! shorter road to the result the general path gives these packets, with the same
//! rewrite, map writes and counter, and the differential fuzzer holds it to that.
//! IPv6 goes the general way for now: both families in one call made the fast path's
//! stack frame, on top of `lb_xdp`'s, deeper than the verifier's 512 bytes.
//!
//! Every check comes before the first write, so a packet handed back to the general
//! path has not been touched.

use aya_ebpf::programs::XdpContext;
use core::{mem::MaybeUninit, ptr::addr_of};
use lb_common::{
    flow,
    maps::{
        ACCESS_LIST, ACCESS_WATCH, FAMILY_V4, FLOW_CLOSED, FLOW_RST, FlowKey, GlobalConfig,
        MODE_NAT, PROTO_TCP, Service, VipKey,
    },
    tcp,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, tcp::TcpHdr};

use crate::{
    conntrack::{self, now},
    fib::{self, Hop},
    forward::{aim, serving_backend},
    maps::{CONFIG, FLOWS, REVERSE_NAT, SERVICES},
    nat::{self, Target},
    packet::{frame_len, ptr_at},
    parse::{addressed_here, offset_flags},
    reverse::{port_in_snat_range, remember_syn_ack},
    traffic::Dir,
    verdict::Verdict,
};

/// Returned when the packet must go the general way. Not a verdict any path gives: its
/// action is none of XDP's.
pub const GENERAL: Verdict = Verdict::new(0xff, 0);

/// IPv4 in the Ethernet type, network order as in the header.
const ETH_P_IP: u16 = 0x0800_u16.to_be();
/// Version 4, a 20-byte header: no options.
const VIHL_PLAIN: u8 = 0x45;
/// The "more fragments" flag and the fragment offset, host order of `frags`.
const IPV4_FRAGMENT: u16 = 0x3fff;
const L3: usize = EthHdr::LEN;
const L4: usize = L3 + Ipv4Hdr::LEN;

/// The packet's headers, all inside it, and what the paths need of them.
struct Headers {
    ip: *mut Ipv4Hdr,
    th: *mut TcpHdr,
    key: FlowKey,
    /// The IPv4 total length.
    ip_len: u32,
    tcp_flags: u8,
}

/// Forwards the packet if it is an established NAT flow's plain segment (see the module
/// note), passes it if it is for no VIP and no NAT flow; [`GENERAL`] otherwise, with
/// nothing changed.
#[inline(never)]
pub fn established(ctx: &XdpContext) -> Verdict {
    let Some(h) = headers(ctx) else {
        return GENERAL;
    };
    let vip = VipKey {
        addr: h.key.dst,
        port: h.key.dport,
        proto: PROTO_TCP,
        family: FAMILY_V4,
    };
    let Some(cfg) = CONFIG.get(0) else {
        return GENERAL;
    };
    match SERVICES.get_ptr(&vip) {
        // SAFETY: a map value stays valid for the whole program run (RCU).
        Some(svc) => to_backend(ctx, &h, unsafe { &*svc }, cfg),
        None => to_client(ctx, &h, cfg),
    }
}

/// The headers of a plain IPv4 TCP segment addressed to this host, as `parse` would
/// accept them, with no SYN, FIN or RST and a TTL left to decrement.
#[inline(always)]
fn headers(ctx: &XdpContext) -> Option<Headers> {
    let start = ptr_at::<[u8; L4 + TcpHdr::LEN]>(ctx, 0)?.cast::<u8>();
    let eth = start.cast::<EthHdr>();
    // SAFETY: `ptr_at` checked that the Ethernet, IPv4 and TCP headers (at their fixed
    // offsets when there is no VLAN tag and no IPv4 option) are inside the packet; every
    // read is of their fields, unaligned.
    let (ip, th) = unsafe {
        let ether_type = addr_of!((*eth).ether_type).cast::<u16>().read_unaligned();
        if ether_type != ETH_P_IP {
            return None;
        }
        (
            start.add(L3).cast::<Ipv4Hdr>(),
            start.add(L4).cast::<TcpHdr>(),
        )
    };
    // SAFETY: as above.
    let dst = unsafe { addr_of!((*eth).dst_addr).read_unaligned() };
    if !addressed_here(ctx, &dst) {
        return None;
    }
    // SAFETY: as above.
    let v4 = unsafe { &*ip };
    if v4.vihl != VIHL_PLAIN
        || v4.proto != PROTO_TCP
        || v4.ttl <= 1
        || u16::from_be_bytes(v4.frags) & IPV4_FRAGMENT != 0
    {
        return None;
    }
    let tot_len = u16::from_be_bytes(v4.tot_len) as usize;
    if tot_len < Ipv4Hdr::LEN + TcpHdr::LEN || L3 + tot_len > frame_len(ctx) {
        return None;
    }
    // SAFETY: as above.
    let ([doff, flags], ports) =
        unsafe { (offset_flags(th), th.cast::<[u16; 2]>().read_unaligned()) };
    let doff = (doff >> 4) as usize * 4;
    if doff < TcpHdr::LEN || doff > tot_len - Ipv4Hdr::LEN {
        return None;
    }
    if flags & (tcp::SYN | tcp::FIN | tcp::RST) != 0 {
        return None;
    }
    Some(Headers {
        ip,
        th,
        key: FlowKey {
            src: [u32::from_ne_bytes(v4.src_addr), 0, 0, 0],
            dst: [u32::from_ne_bytes(v4.dst_addr), 0, 0, 0],
            sport: ports[0],
            dport: ports[1],
            proto: PROTO_TCP,
            family: FAMILY_V4,
            _pad: [0; 2],
        },
        ip_len: tot_len as u32,
        tcp_flags: flags,
    })
}

/// Client → VIP: `forward`'s existing-flow case for a NAT service without an allowlist
/// or a watch, whose flow is in `FLOWS`, live, not closing, not SYN-proxied, and whose
/// backend still serves it.
#[inline(always)]
fn to_backend(ctx: &XdpContext, h: &Headers, svc: &Service, cfg: &GlobalConfig) -> Verdict {
    if svc.mode != MODE_NAT || svc.access & (ACCESS_LIST | ACCESS_WATCH) != 0 {
        return GENERAL;
    }
    let Some(fs) = FLOWS.get_ptr_mut(&h.key) else {
        return GENERAL;
    };
    // SAFETY: a map value stays valid for the whole program run; concurrent writers on
    // other CPUs only store timestamps and flag bits (see `conntrack::touch_client`).
    let fs = unsafe { &mut *fs };
    let now = now();
    if fs.proxy != 0 || fs.flags & (FLOW_CLOSED | FLOW_RST) != 0 || flow::expired(fs, cfg, now) {
        return GENERAL;
    }
    let Some(b) = serving_backend(u32::from(fs.backend)) else {
        return GENERAL;
    };
    let mut t = target(svc.id);
    if !aim(b, fs, FAMILY_V4, &mut t) {
        return GENERAL;
    }
    let mut slot = MaybeUninit::uninit();
    let hop = Hop::start(&mut slot, now, h.ip_len, ctx.ingress_ifindex() as u32);
    if !fib::cached(&t, Dir::In, hop) {
        return GENERAL;
    }
    conntrack::touch_client(fs, now, h.tcp_flags);
    send(ctx, h, &t, Dir::In, hop)
}

/// Backend → SNAT address: `reverse`'s case of a reply whose flow is in `FLOWS` with
/// the reverse entry's backend, and not SYN-proxied. A segment for no VIP and no NAT
/// flow is passed here, as `reverse` would pass it.
#[inline(always)]
fn to_client(ctx: &XdpContext, h: &Headers, cfg: &GlobalConfig) -> Verdict {
    if !port_in_snat_range(cfg, h.key.dport) {
        return Verdict::PASS;
    }
    let Some(r) = REVERSE_NAT.get_ptr_mut(&h.key) else {
        return Verdict::PASS;
    };
    // SAFETY: as in `reverse::reverse`.
    let r = unsafe { &mut *r };
    let Some(fs) = FLOWS.get_ptr_mut(&r.flow) else {
        return GENERAL;
    };
    // SAFETY: as in `to_backend`.
    let fs = unsafe { &mut *fs };
    if fs.backend != r.backend || fs.proxy != 0 {
        return GENERAL;
    }
    let now = now();
    let mut t = target(0);
    t.set_reverse(r);
    let mut slot = MaybeUninit::uninit();
    let hop = Hop::start(&mut slot, now, h.ip_len, ctx.ingress_ifindex() as u32);
    if !fib::cached(&t, Dir::Out, hop) {
        return GENERAL;
    }
    conntrack::touch_backend_plain(fs, now, h.tcp_flags);
    remember_syn_ack(r, fs, false, now);
    send(ctx, h, &t, Dir::Out, hop)
}

/// A target with every field set: the paths fill in the tuple.
#[inline(always)]
fn target(service: u32) -> Target {
    Target {
        src: [0; 4],
        dst: [0; 4],
        sport: 0,
        dport: 0,
        backend: 0,
        service,
        snat_idx: 0,
        proxied: 0,
        encap: 0,
        _pad: 0,
    }
}

/// The rewrite to `t` and out through `hop`, as `fib::send` does.
#[inline(always)]
fn send(ctx: &XdpContext, h: &Headers, t: &Target, dir: Dir, hop: &Hop) -> Verdict {
    // SAFETY: `headers` checked both headers are inside the packet.
    unsafe { nat::rewrite_v4_at(h.ip, h.th, t) };
    fib::out(ctx, t, dir, hop)
}
