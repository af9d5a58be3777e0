//! The established fast path: most packets of a NAT flow change nothing but the flow's
//! clock and count (an ACK or data, no SYN, FIN or RST). Such a packet is forwarded
//! here, in either direction, with one bounds check for all its headers and none of
//! the general path's scratch (`Packet`, `Target`) to zero: plain IPv4 (no VLAN tag, no
//! options, not a fragment) or IPv6, its flow in
//! `FLOWS` and not closing, its next hop cached on this CPU. Such a segment for no VIP
//! and no NAT flow (the host's own traffic) is passed here. The lookups are as few as
//! the result allows: a flow's service comes from its backend's slot in
//! `SERVICE_SLOTS` (an array), and a segment to a SNAT port skips `SERVICES` while no
//! VIP has such a port (`REPLIES_NO_VIP`). Anything else goes the
//! general way (`dispatch`), and so does anything this path is unsure of: it is only a
//! shorter road to the result the general path gives these packets, with the same
//! rewrite, map writes and counter, and the differential fuzzer holds it to that.
//! IPv6 (no extension header) has a call of its own, [`established_v6`]: both families
//! in one call made the frame, on top of `lb_xdp`'s, deeper than the verifier's 512
//! bytes.
//!
//! Every check comes before the first write, so a packet handed back to the general
//! path has not been touched.

use aya_ebpf::programs::XdpContext;
use core::{mem::MaybeUninit, ptr::addr_of};
use lb_common::{
    flow,
    maps::{
        ACCESS_LIST, ACCESS_WATCH, FAMILY_V4, FAMILY_V6, FLOW_CLOSED, FLOW_RST, FlowKey, FlowState,
        GlobalConfig, MODE_NAT, PROTO_TCP, VipKey,
    },
    tcp,
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
};

use crate::{
    conntrack::{self, now},
    fib::{self, Hop},
    forward::{aim, serving_backend},
    maps::{CONFIG, FLOWS, REVERSE_NAT, SERVICE_SLOTS, SERVICES},
    nat::{self, Target},
    packet::{frame_len, ptr_at},
    parse::{addressed_here, dst_mac, offset_flags, port_pair, words},
    reverse::{port_in_snat_range, remember_syn_ack},
    traffic::Dir,
    unaligned::{load16, load32},
    verdict::Verdict,
};

/// Returned when the packet must go the general way. Not a verdict any path gives: its
/// action is none of XDP's.
pub const GENERAL: Verdict = Verdict::new(0xff, 0);

/// Returned by [`established`] for an IPv6 frame: [`established_v6`] is its fast path.
pub const IPV6: Verdict = Verdict::new(0xfe, 0);

/// IPv4 and IPv6 in the Ethernet type, network order as in the header.
const ETH_P_IP: u16 = 0x0800_u16.to_be();
const ETH_P_IPV6: u16 = 0x86dd_u16.to_be();
/// Version 4, a 20-byte header: no options.
const VIHL_PLAIN: u8 = 0x45;
/// The "more fragments" flag and the fragment offset, host order of `frags`.
const IPV4_FRAGMENT: u16 = 0x3fff;
const L3: usize = EthHdr::LEN;
const L4: usize = L3 + Ipv4Hdr::LEN;
const L4_V6: usize = L3 + Ipv6Hdr::LEN;

/// The packet's headers, all inside it, and what the paths need of them.
struct Headers {
    /// The IP header: IPv4 or IPv6 as the key's family says.
    ip: *mut u8,
    th: *mut TcpHdr,
    key: FlowKey,
    /// The IPv4 total length, or the IPv6 header and payload length.
    ip_len: u32,
    tcp_flags: u8,
}

/// Forwards the packet if it is an established NAT flow's plain IPv4 segment (see the
/// module note), passes it if it is for no VIP and no NAT flow; [`IPV6`] for an IPv6
/// frame, [`GENERAL`] otherwise, with nothing changed.
#[inline(never)]
pub fn established(ctx: &XdpContext) -> Verdict {
    match headers(ctx) {
        Ok(h) => path::<FAMILY_V4>(ctx, &h),
        Err(v) => v,
    }
}

/// [`established`] for a frame it found IPv6 (the Ethernet type is not read again):
/// the segment directly after the IPv6 header.
#[inline(never)]
pub fn established_v6(ctx: &XdpContext) -> Verdict {
    match headers_v6(ctx) {
        Some(h) => path::<FAMILY_V6>(ctx, &h),
        None => GENERAL,
    }
}

/// Toward the backend for a VIP, else toward the client of a NAT flow. A segment to a
/// port no VIP has (the daemon's `REPLIES_NO_VIP`) is no VIP's: a reply's lookups skip
/// `SERVICES`.
#[inline(always)]
fn path<const FAMILY: u8>(ctx: &XdpContext, h: &Headers) -> Verdict {
    let Some(cfg) = CONFIG.get(0) else {
        return GENERAL;
    };
    if cfg.no_vip_on(h.key.dport) {
        return to_client::<FAMILY>(ctx, h, cfg);
    }
    // A segment that may be a reply asks `SERVICES` first (a reply is for no VIP); any
    // other looks for its flow first.
    let vip = vip_of::<FAMILY>(&h.key);
    let maybe_reply = cfg.reply_port(h.key.dport);
    if maybe_reply && SERVICES.get_ptr(&vip).is_none() {
        return to_client::<FAMILY>(ctx, h, cfg);
    }
    if let Some(fs) = FLOWS.get_ptr_mut(&h.key) {
        // SAFETY: a map value stays valid for the whole program run; concurrent writers
        // on other CPUs only store timestamps and flag bits (see `conntrack::touch_client`).
        return to_backend::<FAMILY>(ctx, h, unsafe { &mut *fs }, cfg);
    }
    // No flow: the general way for a VIP (a flow to open), else the host's own segment.
    if maybe_reply || SERVICES.get_ptr(&vip).is_some() {
        return GENERAL;
    }
    to_client::<FAMILY>(ctx, h, cfg)
}

/// The segment's destination as a `SERVICES` key.
#[inline(always)]
fn vip_of<const FAMILY: u8>(key: &FlowKey) -> VipKey {
    VipKey {
        addr: key.dst,
        port: key.dport,
        proto: PROTO_TCP,
        family: FAMILY,
    }
}

/// The headers of a plain IPv4 TCP segment addressed to this host, as `parse` would
/// accept them, with no SYN, FIN or RST and a TTL left to decrement; `Err` with
/// [`IPV6`] or [`GENERAL`] otherwise.
#[inline(always)]
fn headers(ctx: &XdpContext) -> Result<Headers, Verdict> {
    let start = ptr_at::<[u8; L4 + TcpHdr::LEN]>(ctx, 0)
        .ok_or(GENERAL)?
        .cast::<u8>();
    let eth = start.cast::<EthHdr>();
    // SAFETY: `ptr_at` checked that the Ethernet, IPv4 and TCP headers (at their fixed
    // offsets when there is no VLAN tag and no IPv4 option) are inside the packet; every
    // read is of their fields.
    let (ip, th) = unsafe {
        let ether_type = load16(addr_of!((*eth).ether_type).cast());
        if ether_type != ETH_P_IP {
            return Err(if ether_type == ETH_P_IPV6 {
                IPV6
            } else {
                GENERAL
            });
        }
        (
            start.add(L3).cast::<Ipv4Hdr>(),
            start.add(L4).cast::<TcpHdr>(),
        )
    };
    // SAFETY: as above.
    if !addressed_here(ctx, unsafe { dst_mac(start) }) {
        return Err(GENERAL);
    }
    // SAFETY: as above.
    let v4 = unsafe { &*ip };
    // SAFETY: as above.
    let (frags, tot_len) = unsafe {
        (
            u16::from_be(load16(v4.frags.as_ptr())),
            u16::from_be(load16(v4.tot_len.as_ptr())) as usize,
        )
    };
    if v4.vihl != VIHL_PLAIN || v4.proto != PROTO_TCP || v4.ttl <= 1 || frags & IPV4_FRAGMENT != 0 {
        return Err(GENERAL);
    }
    if tot_len < Ipv4Hdr::LEN + TcpHdr::LEN || L3 + tot_len > frame_len(ctx) {
        return Err(GENERAL);
    }
    let (ports, tcp_flags) = plain_segment(th, tot_len - Ipv4Hdr::LEN).ok_or(GENERAL)?;
    // SAFETY: as above.
    let (src, dst) = unsafe { (load32(v4.src_addr.as_ptr()), load32(v4.dst_addr.as_ptr())) };
    Ok(Headers {
        ip: ip.cast(),
        th,
        key: FlowKey {
            src: [src, 0, 0, 0],
            dst: [dst, 0, 0, 0],
            sport: ports[0],
            dport: ports[1],
            proto: PROTO_TCP,
            family: FAMILY_V4,
            _pad: [0; 2],
        },
        ip_len: tot_len as u32,
        tcp_flags,
    })
}

/// [`headers`] for IPv6: TCP directly after the IPv6 header, a hop left to count down.
#[inline(always)]
fn headers_v6(ctx: &XdpContext) -> Option<Headers> {
    let start = ptr_at::<[u8; L4_V6 + TcpHdr::LEN]>(ctx, 0)?.cast::<u8>();
    // SAFETY: `ptr_at` checked that the Ethernet, IPv6 and TCP headers (at their fixed
    // offsets when there is no VLAN tag and no extension header) are inside the packet;
    // every read is of their fields, unaligned.
    let (ip, th, dst) = unsafe {
        (
            start.add(L3).cast::<Ipv6Hdr>(),
            start.add(L4_V6).cast::<TcpHdr>(),
            dst_mac(start),
        )
    };
    if !addressed_here(ctx, dst) {
        return None;
    }
    // SAFETY: as above.
    let v6 = unsafe { &*ip };
    if v6.vcf[0] >> 4 != 6 || v6.next_hdr != PROTO_TCP || v6.hop_limit <= 1 {
        return None;
    }
    // SAFETY: as above.
    let payload = u16::from_be(unsafe { load16(v6.payload_len.as_ptr()) }) as usize;
    if payload < TcpHdr::LEN || L4_V6 + payload > frame_len(ctx) {
        return None;
    }
    let (ports, tcp_flags) = plain_segment(th, payload)?;
    Some(Headers {
        ip: ip.cast(),
        th,
        key: FlowKey {
            src: words(&v6.src_addr),
            dst: words(&v6.dst_addr),
            sport: ports[0],
            dport: ports[1],
            proto: PROTO_TCP,
            family: FAMILY_V6,
            _pad: [0; 2],
        },
        ip_len: (Ipv6Hdr::LEN + payload) as u32,
        tcp_flags,
    })
}

/// The ports and flags of the TCP header at `th`, in a segment of `len` bytes, if its
/// header fits and it has no SYN, FIN or RST.
#[inline(always)]
fn plain_segment(th: *mut TcpHdr, len: usize) -> Option<([u16; 2], u8)> {
    // SAFETY: the callers checked the TCP header is inside the packet.
    let ([doff, flags], ports) = unsafe { (offset_flags(th), port_pair(th.cast())) };
    let doff = (doff >> 4) as usize * 4;
    if doff < TcpHdr::LEN || doff > len || flags & (tcp::SYN | tcp::FIN | tcp::RST) != 0 {
        return None;
    }
    Some((ports, flags))
}

/// Client → VIP: `forward`'s existing-flow case for a NAT service without an allowlist
/// or a watch, whose flow `fs` is in `FLOWS`, live, not closing, not SYN-proxied, and
/// whose backend still serves it. The service is the backend's slot in `SERVICE_SLOTS`
/// (an array read, not a hash lookup of the VIP), taken only if its VIP is this
/// segment's destination, as `SERVICES` would say; else the general way decides.
#[inline(always)]
fn to_backend<const FAMILY: u8>(
    ctx: &XdpContext,
    h: &Headers,
    fs: &mut FlowState,
    cfg: &GlobalConfig,
) -> Verdict {
    let now = now();
    if fs.proxy != 0 || fs.flags & (FLOW_CLOSED | FLOW_RST) != 0 || flow::expired(fs, cfg, now) {
        return GENERAL;
    }
    let Some(b) = serving_backend(u32::from(fs.backend)) else {
        return GENERAL;
    };
    let Some(slot) = SERVICE_SLOTS.get(b.service_id) else {
        return GENERAL;
    };
    let svc = &slot.service;
    if slot.vip != vip_of::<FAMILY>(&h.key)
        || svc.mode != MODE_NAT
        || svc.access & (ACCESS_LIST | ACCESS_WATCH) != 0
    {
        return GENERAL;
    }
    let mut t = target(svc.id);
    if !aim(b, fs, FAMILY, &mut t) {
        return GENERAL;
    }
    let mut slot = MaybeUninit::uninit();
    let hop = Hop::start(&mut slot, now, h.ip_len, ctx.ingress_ifindex() as u32);
    if !fib::cached(&t, Dir::In, hop) {
        return GENERAL;
    }
    conntrack::touch_client(fs, now, h.tcp_flags);
    send::<FAMILY>(ctx, h, &t, Dir::In, hop)
}

/// Backend → SNAT address: `reverse`'s case of a reply whose flow is in `FLOWS` with
/// the reverse entry's backend, and not SYN-proxied. A segment for no VIP and no NAT
/// flow is passed here, as `reverse` would pass it.
#[inline(always)]
fn to_client<const FAMILY: u8>(ctx: &XdpContext, h: &Headers, cfg: &GlobalConfig) -> Verdict {
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
    send::<FAMILY>(ctx, h, &t, Dir::Out, hop)
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
fn send<const FAMILY: u8>(
    ctx: &XdpContext,
    h: &Headers,
    t: &Target,
    dir: Dir,
    hop: &Hop,
) -> Verdict {
    // SAFETY: `headers` (`headers_v6`) checked both headers are inside the packet.
    unsafe {
        if FAMILY == FAMILY_V4 {
            nat::rewrite_v4_at(h.ip.cast(), h.th, t);
        } else {
            nat::rewrite_v6_at(h.ip.cast(), h.th, t);
        }
    }
    fib::out(ctx, t, dir, hop)
}
