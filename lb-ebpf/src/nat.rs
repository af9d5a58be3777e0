//! The NAT rewrite (addresses, ports, TTL, checksums) and the next hop (FIB lookup,
//! MAC rewrite, XDP_TX or redirect), shared by both directions.

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
    maps::{Backend, FAMILY_V4, NEXT_HOP_TTL_NS, NextHop, PROTO_TCP, ReverseNat},
    stats,
};

use crate::{
    csum,
    maps::{NEXT_HOPS, TX_PORTS},
    parse::{
        IPV4_HLEN, IPV6_HLEN, OFF_MASK, Packet, TCP_HLEN, frame_len, ptr_at, tcp, v4, v6, zeroed,
    },
    stats::{Dir, Verdict, traffic},
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

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
}

impl Target {
    /// Client → VIP becomes SNAT address:port → backend.
    #[inline(always)]
    pub fn set_forward(&mut self, b: &Backend, id: u32, snat_port: u16) {
        self.src = b.snat_addr;
        self.dst = b.addr;
        self.sport = snat_port;
        self.dport = b.port;
        self.backend = id;
    }

    /// Backend → SNAT address:port becomes VIP → client.
    #[inline(always)]
    pub fn set_reverse(&mut self, r: &ReverseNat) {
        self.src = r.flow.dst;
        self.dst = r.flow.src;
        self.sport = r.flow.dport;
        self.dport = r.flow.sport;
        self.backend = r.backend;
        self.service = r.service_id;
    }
}

/// Rewrites the packet to `t` and sends it toward its new destination. The steps are
/// separate functions so their stack frames are not summed on one call chain.
#[inline(never)]
pub fn send(ctx: &XdpContext, pkt: &Packet, t: &Target, dir: Dir) -> Verdict {
    let ok = if pkt.key.family == FAMILY_V4 {
        rewrite_v4(ctx, pkt, t)
    } else {
        rewrite_v6(ctx, pkt, t)
    };
    if !ok {
        // verifier: the parser checked these headers; this path is never taken.
        return Verdict::drop(stats::DROP_MALFORMED);
    }
    next_hop(ctx, pkt, t, dir)
}

/// The two ports as the one 32-bit word they form in the TCP header.
#[inline(always)]
fn ports_word(sport: u16, dport: u16) -> u32 {
    let s = sport.to_ne_bytes();
    let d = dport.to_ne_bytes();
    u32::from_ne_bytes([s[0], s[1], d[0], d[1]])
}

#[inline(never)]
fn rewrite_v4(ctx: &XdpContext, pkt: &Packet, t: &Target) -> bool {
    // verifier: the mask bounds offsets read back from the stack; it never changes them.
    let l3 = pkt.l3 as usize & OFF_MASK;
    let l4 = pkt.l4 as usize & OFF_MASK;
    // One check after the other: the verifier learns nothing from two checks whose
    // results the compiler combines before branching.
    let Some(ip) = ptr_at::<[u8; IPV4_HLEN]>(ctx, l3) else {
        return false;
    };
    let Some(th) = ptr_at::<[u8; TCP_HLEN]>(ctx, l4) else {
        return false;
    };
    let (ip, th) = (ip.cast::<u8>(), th.cast::<u8>());
    // SAFETY: `ptr_at` checked that the 20-byte IPv4 header at `ip` and the 20-byte TCP
    // header at `th` are inside the packet; every offset used is below 20; all accesses
    // are unaligned-safe.
    unsafe {
        let saddr = ip.add(v4::SADDR).cast::<u32>();
        let daddr = ip.add(v4::SADDR + 4).cast::<u32>();
        let ports = th.cast::<u32>();
        let old_src = saddr.read_unaligned();
        let old_dst = daddr.read_unaligned();
        let old_ports = ports.read_unaligned();
        let new_ports = ports_word(t.sport, t.dport);
        let ttl = *ip.add(v4::TTL);

        // IP header checksum: addresses and the TTL/protocol word.
        let ipc = ip.add(v4::CSUM).cast::<u16>();
        let from = [old_src, old_dst, u32::from_ne_bytes([ttl, PROTO_TCP, 0, 0])];
        let to = [
            t.src[0],
            t.dst[0],
            u32::from_ne_bytes([ttl - 1, PROTO_TCP, 0, 0]),
        ];
        ipc.write_unaligned(csum::replace(ipc.read_unaligned(), &from, &to));

        // TCP checksum: pseudo-header addresses and the ports.
        let tcpc = th.add(tcp::CSUM).cast::<u16>();
        let from = [old_src, old_dst, old_ports];
        let to = [t.src[0], t.dst[0], new_ports];
        tcpc.write_unaligned(csum::replace(tcpc.read_unaligned(), &from, &to));

        saddr.write_unaligned(t.src[0]);
        daddr.write_unaligned(t.dst[0]);
        ports.write_unaligned(new_ports);
        *ip.add(v4::TTL) = ttl - 1;
    }
    true
}

#[inline(never)]
fn rewrite_v6(ctx: &XdpContext, pkt: &Packet, t: &Target) -> bool {
    // verifier: the mask bounds offsets read back from the stack; it never changes them.
    let l3 = pkt.l3 as usize & OFF_MASK;
    let l4 = pkt.l4 as usize & OFF_MASK;
    // One check after the other: the verifier learns nothing from two checks whose
    // results the compiler combines before branching.
    let Some(ip) = ptr_at::<[u8; IPV6_HLEN]>(ctx, l3) else {
        return false;
    };
    let Some(th) = ptr_at::<[u8; TCP_HLEN]>(ctx, l4) else {
        return false;
    };
    let (ip, th) = (ip.cast::<u8>(), th.cast::<u8>());
    // SAFETY: `ptr_at` checked that the 40-byte IPv6 header at `ip` and the 20-byte TCP
    // header at `th` are inside the packet; every offset used is inside them; all
    // accesses are unaligned-safe.
    unsafe {
        let addrs = ip.add(v6::SADDR).cast::<[u32; 8]>();
        let ports = th.cast::<u32>();
        let old = addrs.read_unaligned();
        let old_ports = ports.read_unaligned();
        let new_ports = ports_word(t.sport, t.dport);
        let from = [
            old[0], old[1], old[2], old[3], old[4], old[5], old[6], old[7], old_ports,
        ];
        let to = [
            t.src[0], t.src[1], t.src[2], t.src[3], t.dst[0], t.dst[1], t.dst[2], t.dst[3],
            new_ports,
        ];
        let tcpc = th.add(tcp::CSUM).cast::<u16>();
        tcpc.write_unaligned(csum::replace(tcpc.read_unaligned(), &from, &to));
        addrs.write_unaligned([
            t.src[0], t.src[1], t.src[2], t.src[3], t.dst[0], t.dst[1], t.dst[2], t.dst[3],
        ]);
        ports.write_unaligned(new_ports);
        *ip.add(v6::HOP_LIMIT) = pkt.ttl - 1;
    }
    true
}

/// FIB lookup for the rewritten packet (toward a backend: the cached one while it is
/// fresh), then MACs and XDP_TX or a redirect.
#[inline(never)]
fn next_hop(ctx: &XdpContext, pkt: &Packet, t: &Target, dir: Dir) -> Verdict {
    let mut hop = Hop {
        macs: [0; 12],
        ifindex: 0,
        now: pkt.now,
        ip_len: pkt.ip_len,
        ingress: ctx.ingress_ifindex() as u32,
    };
    if dir == Dir::In && cached_hop(t, &mut hop) {
        return out(ctx, t, dir, &hop);
    }
    let mut p = MaybeUninit::<FibParams>::uninit();
    let p = zeroed(&mut p);
    let ingress = ctx.ingress_ifindex() as u32;
    p.l4_protocol = PROTO_TCP;
    p.sport = t.sport;
    p.dport = t.dport;
    p.__bindgen_anon_1.tot_len = pkt.ip_len as u16;
    p.ifindex = ingress;
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
    // SAFETY: `p` is a valid, initialised `bpf_fib_lookup` of the size passed, and the
    // context pointer is this program's own.
    let rc = unsafe { bpf_fib_lookup(ctx.as_ptr(), p, size_of::<FibParams>() as i32, 0) };
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => {
            hop.macs[..6].copy_from_slice(&p.dmac);
            hop.macs[6..].copy_from_slice(&p.smac);
            hop.ifindex = p.ifindex;
            if dir == Dir::In {
                remember_hop(t, &hop);
            }
            out(ctx, t, dir, &hop)
        }
        // The daemon resolves the backends' neighbours; until then, drop.
        BPF_FIB_LKUP_RET_NO_NEIGH if dir == Dir::In => Verdict::drop(stats::DROP_NO_NEIGH),
        // The source is now the VIP, not a local address, so the kernel forwards the
        // rewritten packet and resolves the client's neighbour itself.
        BPF_FIB_LKUP_RET_NO_NEIGH => {
            traffic(t.service, t.backend, dir, frame_len(ctx) as u64);
            Verdict::pass(stats::PASS_NO_NEIGH_OUT)
        }
        BPF_FIB_LKUP_RET_FRAG_NEEDED => Verdict::drop(stats::DROP_FRAG_NEEDED),
        _ => Verdict::drop(stats::DROP_NO_ROUTE),
    }
}

/// Where a packet leaves: its MACs and interface; with the packet's time and length,
/// which the next-hop cache needs (in here, so its functions take few arguments: BPF
/// calls pass at most five, in registers).
#[repr(C)]
struct Hop {
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

/// Fills `hop` from this CPU's cached next hop toward `t`'s backend if it is fresh, for
/// the same address and ingress interface, and known to fit a packet of `hop.ip_len`.
#[inline(never)]
fn cached_hop(t: &Target, hop: &mut Hop) -> bool {
    let Some(nh) = NEXT_HOPS.get_ptr(t.backend) else {
        return false;
    };
    // SAFETY: a map value stays valid for the whole program run, and this CPU's slot
    // has no other writer.
    let nh = unsafe { &*nh };
    if hop.now >= nh.expires_ns
        || nh.dst != t.dst
        || nh.ingress != hop.ingress
        || hop.ip_len > nh.max_len
    {
        return false;
    }
    hop.macs = nh.macs;
    hop.ifindex = nh.ifindex;
    true
}

/// Caches the FIB lookup's answer toward `t`'s backend for this CPU.
#[inline(never)]
fn remember_hop(t: &Target, hop: &Hop) {
    let Some(nh) = NEXT_HOPS.get_ptr_mut(t.backend) else {
        return;
    };
    // SAFETY: as in `cached_hop`.
    let nh = unsafe { &mut *nh };
    // A lookup while the entry is fresh and for the same hop happens only for a packet
    // longer than it has checked, so this packet's length is the longest the route was
    // checked for.
    *nh = NextHop {
        dst: t.dst,
        expires_ns: hop.now + NEXT_HOP_TTL_NS,
        ifindex: hop.ifindex,
        max_len: hop.ip_len,
        macs: hop.macs,
        ingress: hop.ingress,
    };
}

/// Writes the MACs and sends the packet out of the hop's interface: XDP_TX if that is
/// where it came in, a redirect otherwise; counts its traffic.
#[inline(always)]
fn out(ctx: &XdpContext, t: &Target, dir: Dir, hop: &Hop) -> Verdict {
    let (macs, ifindex) = (hop.macs, hop.ifindex);
    let Some(eth) = ptr_at::<[u8; 12]>(ctx, 0) else {
        // verifier: the parser read past the Ethernet header; never taken.
        return Verdict::drop(stats::DROP_MALFORMED);
    };
    // SAFETY: `ptr_at` checked the 12 MAC bytes are inside the packet.
    unsafe { eth.write_unaligned(macs) };
    let fwd = match dir {
        Dir::In => stats::FWD_IN,
        Dir::Out => stats::FWD_OUT,
    };
    let verdict = if ifindex == ctx.ingress_ifindex() as u32 {
        Verdict::new(xdp_action::XDP_TX, fwd)
    } else {
        match TX_PORTS.redirect(ifindex, xdp_action::XDP_DROP as u64) {
            Ok(action) => Verdict::new(action, fwd),
            Err(_) => return Verdict::drop(stats::DROP_NO_TX_PORT),
        }
    };
    traffic(t.service, t.backend, dir, frame_len(ctx) as u64);
    verdict
}
