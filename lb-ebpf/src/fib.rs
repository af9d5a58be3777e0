//! Out of the program toward the next hop: the NAT rewrite, then the FIB lookup (cached
//! per CPU for a while: per backend, and per client for replies), the MAC rewrite, and
//! XDP_TX or a redirect; or, when the next hop has no neighbour entry, the hand-off to
//! the TC program. A DSR packet is encapsulated instead of rewritten, once the route
//! says it fits ([`send_encapsulated`]).

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        bpf_fib_lookup as FibParams, xdp_action,
    },
    helpers::bpf_fib_lookup,
    programs::XdpContext,
};
use core::mem::{MaybeUninit, size_of};
use lb_common::{
    counters,
    encap::{ENCAP_GUE, IPPROTO_UDP},
    handoff,
    maps::{FAMILY_V4, NEXT_HOP_TTL_NS, NextHop, PROTO_TCP, ReplyHop, reply_hop_slot},
};

use crate::{
    encap, events, icmp,
    maps::{HANDOFF_MARK, NEXT_HOPS, REPLY_HOPS, TX_PORTS},
    nat::{self, NO_BACKEND, Target},
    packet::{frame_len, ptr_at},
    parse::Packet,
    stack::zeroed,
    traffic::{Dir, traffic},
    unaligned::store32,
    verdict::Verdict,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Rewrites the packet to `t` and sends it toward its new destination. The steps are
/// separate functions so their stack frames are not summed on one call chain.
#[inline(never)]
pub fn send(ctx: &XdpContext, pkt: &Packet, t: &Target, dir: Dir) -> Verdict {
    if !nat::rewrite(ctx, pkt, t) {
        // verifier: the parser checked these headers; this path is never taken.
        events::unreachable(ctx);
        return Verdict::drop(counters::DROP_MALFORMED);
    }
    next_hop(ctx, pkt, t, dir)
}

/// FIB lookup for the rewritten packet (the cached one while it is fresh: per backend
/// toward backends, per client and VIP for replies), then MACs and XDP_TX or a redirect.
#[inline(never)]
fn next_hop(ctx: &XdpContext, pkt: &Packet, t: &Target, dir: Dir) -> Verdict {
    let mut slot = MaybeUninit::<Hop>::uninit();
    let hop = Hop::start(&mut slot, pkt.now, pkt.ip_len, ctx.ingress_ifindex() as u32);
    if cached(t, dir, hop) {
        return out(ctx, t, dir, hop);
    }
    let mut p = MaybeUninit::<FibParams>::uninit();
    let p = zeroed(&mut p);
    params(ctx, pkt, t, pkt.ip_len, p);
    // SAFETY: `p` is a valid, initialised `bpf_fib_lookup` of the size passed, and the
    // context pointer is this program's own.
    let rc = unsafe { bpf_fib_lookup(ctx.as_ptr(), p, size_of::<FibParams>() as i32, 0) };
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => {
            hop.take(p);
            match dir {
                Dir::In => remember_hop(t, hop),
                // An answer of the LB's own (a cookie SYN-ACK) is not cached: a flood's
                // spoofed sources would each take a slot from a real flow's replies.
                Dir::Out if t.backend == NO_BACKEND => {}
                Dir::Out => remember_reply_hop(t, hop),
            }
            out(ctx, t, dir, hop)
        }
        BPF_FIB_LKUP_RET_NO_NEIGH => hand_off(ctx, t, dir, p),
        BPF_FIB_LKUP_RET_FRAG_NEEDED => Verdict::drop(counters::DROP_FRAG_NEEDED),
        _ => {
            events::dropped(ctx, counters::DROP_NO_ROUTE);
            Verdict::drop(counters::DROP_NO_ROUTE)
        }
    }
}

/// Fills `hop` from this CPU's cache of next hops toward `t` (toward `dir`): per
/// backend, or per client and VIP for replies. False when the entry is missing, stale,
/// or not known to fit a packet of `hop.ip_len`: the route is then looked up. Reads only:
/// the established fast path (`fast`) asks before it changes anything.
#[inline(always)]
pub fn cached(t: &Target, dir: Dir, hop: &mut Hop) -> bool {
    match dir {
        Dir::In => cached_hop(t, hop),
        Dir::Out => cached_reply_hop(t, hop),
    }
}

/// Sends a DSR packet toward its backend: the next hop first (the route's MTU decides
/// whether the packet may grow), then the encapsulation, MACs and XDP_TX or a redirect.
/// A packet that would not fit once encapsulated is answered with ICMP (`icmp`). Apart
/// from [`send`]: the verifier walks neither path for the other's packets.
#[inline(never)]
pub fn send_encapsulated(ctx: &XdpContext, pkt: &Packet, t: &Target) -> Verdict {
    let outer = t.outer_len(pkt.key.family);
    let mut hop = Hop {
        macs: [0; 12],
        ifindex: 0,
        now: pkt.now,
        ip_len: pkt.ip_len + outer,
        ingress: ctx.ingress_ifindex() as u32,
    };
    if !cached_hop(t, &mut hop) {
        let mut p = MaybeUninit::<FibParams>::uninit();
        let p = zeroed(&mut p);
        params(ctx, pkt, t, hop.ip_len, p);
        p.l4_protocol = if t.encap == ENCAP_GUE {
            IPPROTO_UDP
        } else {
            PROTO_TCP
        };
        // SAFETY: as in `next_hop`.
        let rc = unsafe { bpf_fib_lookup(ctx.as_ptr(), p, size_of::<FibParams>() as i32, 0) };
        match rc as u32 {
            BPF_FIB_LKUP_RET_SUCCESS => {
                hop.take(p);
                remember_hop(t, &hop);
            }
            BPF_FIB_LKUP_RET_NO_NEIGH => {
                if !encap::push(ctx, pkt, t) {
                    return Verdict::drop(counters::DROP_MALFORMED);
                }
                return hand_off(ctx, t, Dir::In, p);
            }
            BPF_FIB_LKUP_RET_FRAG_NEEDED => {
                // SAFETY: on FRAG_NEEDED the lookup stored the route's MTU here.
                let mtu = unsafe { p.__bindgen_anon_1.mtu_result } as u32;
                return icmp::too_big(ctx, pkt, mtu.saturating_sub(outer));
            }
            _ => {
                events::dropped(ctx, counters::DROP_NO_ROUTE);
                return Verdict::drop(counters::DROP_NO_ROUTE);
            }
        }
    }
    if !encap::push(ctx, pkt, t) {
        // The frame had no headroom for the outer header.
        return Verdict::drop(counters::DROP_MALFORMED);
    }
    out(ctx, t, Dir::In, &hop)
}

/// The FIB lookup's question: from `t.src` to `t.dst`, a packet of `ip_len` bytes that
/// came in where this one did, with its ports and traffic class.
#[inline(always)]
fn params(ctx: &XdpContext, pkt: &Packet, t: &Target, ip_len: u32, p: &mut FibParams) {
    p.l4_protocol = PROTO_TCP;
    p.sport = t.sport;
    p.dport = t.dport;
    p.__bindgen_anon_1.tot_len = ip_len as u16;
    p.ifindex = ctx.ingress_ifindex() as u32;
    if pkt.key.family == FAMILY_V4 {
        p.family = AF_INET;
        p.__bindgen_anon_2.tos = pkt.tos_flowinfo as u8;
        p.__bindgen_anon_3.ipv4_src = t.src[0];
        p.__bindgen_anon_4.ipv4_dst = t.dst[0];
    } else {
        p.family = AF_INET6;
        p.__bindgen_anon_2.flowinfo = pkt.tos_flowinfo;
        p.__bindgen_anon_3.ipv6_src = t.src;
        p.__bindgen_anon_4.ipv6_dst = t.dst;
    }
}

/// The next hop has no neighbour entry, and XDP cannot make the kernel resolve one: the
/// rewritten packet is passed with the host's hand-off mark and the FIB's egress
/// interface written over its Ethernet addresses (`lb_common::handoff`), for `lb_neigh`
/// (TC ingress, `handoff`) to send out through the kernel's neighbour resolution. Passing
/// it bare would not do: the kernel would deliver it locally when the VIP is a local
/// address.
#[inline(never)]
fn hand_off(ctx: &XdpContext, t: &Target, dir: Dir, p: &FibParams) -> Verdict {
    let mark = HANDOFF_MARK.get(0).copied().unwrap_or(0);
    let Some(eth) = ptr_at::<[u8; handoff::LEN]>(ctx, 0) else {
        // verifier: the parser read past the Ethernet header; never taken.
        events::unreachable(ctx);
        return Verdict::drop(counters::DROP_MALFORMED);
    };
    if !handoff::is_mark(mark) {
        // The daemon has not written the mark yet: no TC program would take the frame.
        events::dropped(ctx, counters::DROP_NO_NEIGH);
        return Verdict::drop(counters::DROP_NO_NEIGH);
    }
    let eth = eth.cast::<u8>();
    // SAFETY: `ptr_at` checked the 12 address bytes are inside the packet. Three words,
    // as in `out`. On NO_NEIGH the lookup has filled in the egress interface.
    unsafe {
        store32(eth, mark as u32);
        store32(eth.add(4), (mark >> 32) as u32);
        store32(eth.add(8), p.ifindex);
    }
    traffic(t.service, t.backend, dir, frame_len(ctx) as u64);
    match dir {
        Dir::In => Verdict::pass(counters::PASS_NO_NEIGH_IN),
        Dir::Out => Verdict::pass(counters::PASS_NO_NEIGH_OUT),
    }
}

/// Where a packet leaves: its MACs and interface; with the packet's time and length,
/// which the next-hop cache needs (in here, so its functions take few arguments: BPF
/// calls pass at most five, in registers).
#[repr(C)]
pub struct Hop {
    /// Destination MAC, then source MAC.
    macs: [u8; 12],
    ifindex: u32,
    /// The packet's `Packet::now`.
    now: u64,
    /// The packet's `Packet::ip_len`.
    ip_len: u32,
    /// The interface the packet came in on.
    ingress: u32,
}

impl Hop {
    /// A hop still to be found, in `slot`, for a packet of `ip_len` bytes that came in
    /// on `ingress` at `now`. codegen: zeroed word by word in the caller's slot; a `Hop`
    /// literal or value (`macs: [0; 12]`, a returned copy) becomes a call of the BPF
    /// backend's byte-loop `memset`, a twentieth of an established packet's cost.
    #[inline(always)]
    pub fn start(slot: &mut MaybeUninit<Hop>, now: u64, ip_len: u32, ingress: u32) -> &mut Hop {
        let hop = zeroed(slot);
        hop.now = now;
        hop.ip_len = ip_len;
        hop.ingress = ingress;
        hop
    }

    /// The MACs and interface of a successful FIB lookup.
    #[inline(always)]
    fn take(&mut self, p: &FibParams) {
        self.macs[..6].copy_from_slice(&p.dmac);
        self.macs[6..].copy_from_slice(&p.smac);
        self.ifindex = p.ifindex;
    }

    /// Takes the MACs and interface of the cached hop `nh` toward `dst` if it is fresh,
    /// for that address and this packet's ingress interface, and known to fit a packet
    /// of this length.
    #[inline(always)]
    fn take_cached(&mut self, nh: &NextHop, dst: &[u32; 4]) -> bool {
        if self.now >= nh.expires_ns
            || nh.dst != *dst
            || nh.ingress != self.ingress
            || self.ip_len > nh.max_len
        {
            return false;
        }
        self.macs = nh.macs;
        self.ifindex = nh.ifindex;
        true
    }

    /// The cache entry toward `dst` for the hop a FIB lookup just found. A lookup while
    /// the entry is fresh and for the same hop happens only for a packet longer than it
    /// has checked, so this packet's length is the longest the route was checked for.
    #[inline(always)]
    fn to_cache(&self, dst: &[u32; 4]) -> NextHop {
        NextHop {
            dst: *dst,
            expires_ns: self.now + NEXT_HOP_TTL_NS,
            ifindex: self.ifindex,
            max_len: self.ip_len,
            macs: self.macs,
            ingress: self.ingress,
        }
    }
}

/// Fills `hop` from this CPU's cached next hop toward `t`'s backend if it is fresh, for
/// the same address and ingress interface, and known to fit a packet of `hop.ip_len`.
#[inline(always)]
fn cached_hop(t: &Target, hop: &mut Hop) -> bool {
    let Some(nh) = NEXT_HOPS.get_ptr(t.backend) else {
        return false;
    };
    // SAFETY: a map value stays valid for the whole program run, and this CPU's slot
    // has no other writer.
    hop.take_cached(unsafe { &*nh }, &t.dst)
}

/// Caches the FIB lookup's answer toward `t`'s backend for this CPU.
#[inline(never)]
fn remember_hop(t: &Target, hop: &Hop) {
    let Some(nh) = NEXT_HOPS.get_ptr_mut(t.backend) else {
        return;
    };
    // SAFETY: as in `cached_hop`.
    unsafe { *nh = hop.to_cache(&t.dst) };
}

/// Fills `hop` from this CPU's cached next hop of replies from `t.src` to `t.dst`, on
/// the same terms as [`cached_hop`].
#[inline(never)]
fn cached_reply_hop(t: &Target, hop: &mut Hop) -> bool {
    let Some(e) = REPLY_HOPS.get_ptr(reply_hop_slot(&t.src, &t.dst)) else {
        return false;
    };
    // SAFETY: as in `cached_hop`.
    let e = unsafe { &*e };
    e.src == t.src && hop.take_cached(&e.hop, &t.dst)
}

/// Caches the FIB lookup's answer for replies from `t.src` to `t.dst` for this CPU, in
/// place of whatever its slot held.
#[inline(never)]
fn remember_reply_hop(t: &Target, hop: &Hop) {
    let Some(e) = REPLY_HOPS.get_ptr_mut(reply_hop_slot(&t.src, &t.dst)) else {
        return;
    };
    // SAFETY: as in `cached_hop`.
    unsafe {
        *e = ReplyHop {
            src: t.src,
            hop: hop.to_cache(&t.dst),
        }
    };
}

/// Writes the MACs and sends the packet out of the hop's interface: XDP_TX if that is
/// where it came in, a redirect otherwise; counts its traffic.
#[inline(always)]
pub fn out(ctx: &XdpContext, t: &Target, dir: Dir, hop: &Hop) -> Verdict {
    let ifindex = hop.ifindex;
    let Some(eth) = ptr_at::<[u8; 12]>(ctx, 0) else {
        // verifier: the parser read past the Ethernet header; never taken.
        events::unreachable(ctx);
        return Verdict::drop(counters::DROP_MALFORMED);
    };
    let eth = eth.cast::<u8>();
    let m = &hop.macs;
    // SAFETY: `ptr_at` checked the 12 MAC bytes are inside the packet. Three words, not
    // a 12-byte copy: that is a call of a byte-loop `memmove`.
    unsafe {
        store32(eth, u32::from_ne_bytes([m[0], m[1], m[2], m[3]]));
        store32(eth.add(4), u32::from_ne_bytes([m[4], m[5], m[6], m[7]]));
        store32(eth.add(8), u32::from_ne_bytes([m[8], m[9], m[10], m[11]]));
    }
    let fwd = match dir {
        Dir::In => counters::FWD_IN,
        Dir::Out => counters::FWD_OUT,
    };
    let verdict = if ifindex == hop.ingress {
        Verdict::new(xdp_action::XDP_TX, fwd)
    } else {
        match TX_PORTS.redirect(ifindex, xdp_action::XDP_DROP as u64) {
            Ok(action) => Verdict::new(action, fwd),
            Err(_) => return Verdict::drop(counters::DROP_NO_TX_PORT),
        }
    };
    traffic(t.service, t.backend, dir, frame_len(ctx) as u64);
    verdict
}
