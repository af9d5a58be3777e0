//! The SYN proxy on the packet path (`lb_common::syn_proxy` has the rules and why):
//! - a VIP's SYN under pressure is answered with a cookie SYN-ACK and forgotten;
//! - an ACK with a valid cookie opens the flow (half-open, `PROXY_PENDING`): the ACK is
//!   rewritten into the client's SYN toward the backend;
//! - the backend's SYN-ACK fixes the translation and becomes the client's window update
//!   (its SYN-ACK held it at window 0); the client's next segment completes the
//!   backend's handshake; a repeated SYN-ACK is acknowledged to the backend directly;
//! - every later segment is translated: backend → client its sequence number, TSval and
//!   window, client → backend its acknowledgment, SACK blocks and TSecr.

use aya_ebpf::{bindings::BPF_ANY, programs::XdpContext};
use core::intrinsics::{AtomicOrdering, atomic_xadd};
use core::mem::MaybeUninit;
use core::ptr::addr_of_mut;
use lb_common::{
    counters,
    maps::{FlowState, GlobalConfig, Service, SourceKey},
    syn_proxy::{
        COOKIES_ALWAYS, COOKIES_AUTO, COOKIES_OFF, ClientOptions, LB_WSCALE, PROXY_CLIENT_TS,
        PROXY_ON, PROXY_PENDING, SynRate, cookie_tsval, lb_mss, pack_wscale, rescale_window,
        short_mark, trusted, unpack_wscale, use_cookie, window_allowance,
    },
    tcp::{ACK, OPT_SACK, RST, SYN},
};
use lb_ebpf::csum;
use network_types::tcp::TcpHdr;

use crate::{
    cookie,
    maps::{PORTS_OUT, SYN_RATE, TRUSTED_SOURCES},
    nat::{NO_BACKEND, Target},
    options::{self, OPT_OFF_MASK, Timestamps},
    packet::ptr_at,
    parse::{OFF_MASK, Packet},
    reset,
    segment::{self, NO_WSCALE, Shape},
    stack::zeroed,
    verdict::Verdict,
};

/// Offsets in the TCP header: sequence number, acknowledgment number, the word with the
/// data offset, flags and window.
const SEQ_OFF: u32 = 4;
const ACK_OFF: u32 = 8;
const WIN_WORD_OFF: u32 = 12;
/// A SACK option's blocks: at most 4, two edges each.
const MAX_SACK_EDGES: u32 = 8;
/// The window the LB's own ACK to a backend offers: 64 KiB at the scale the LB offers
/// clients (the client's next segment brings its real window).
const BACKEND_ACK_WINDOW: u16 = (u16::MAX as u32 >> LB_WSCALE) as u16;

/// What answers a SYN that opens a new flow.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum SynAnswer {
    /// Its flow, as without SYN pressure.
    Flow,
    /// A cookie SYN-ACK from the LB.
    Cookie,
    /// Its flow, though the VIP is under SYN pressure: its source passed a cookie lately
    /// (`lb_common::syn_proxy::TRUST_NS`).
    Trusted,
}

/// Counts a SYN opening a new flow of `svc` as unanswered (until its handshake
/// completes, [`answered`]) and says what answers it.
#[inline(never)]
pub fn answer_for_syn(pkt: &Packet, svc: &Service, cfg: &GlobalConfig) -> SynAnswer {
    if cfg.syn_cookies == COOKIES_ALWAYS {
        return SynAnswer::Cookie;
    }
    let Some(r) = auto_rate(pkt.now, svc.id, cfg) else {
        // Off.
        return SynAnswer::Flow;
    };
    // SAFETY: `count` is an aligned u64 inside the map value.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut r.count, 1) };
    if !use_cookie(cfg.syn_cookies, r, cfg.syn_cookie_rate) {
        SynAnswer::Flow
    } else if source_trusted(pkt, svc.id) {
        SynAnswer::Trusted
    } else {
        SynAnswer::Cookie
    }
}

/// Whether the packet's source passed a cookie lately and `svc`'s SNAT ports have not
/// run out (`lb_common::syn_proxy::trusted`).
#[inline(always)]
fn source_trusted(pkt: &Packet, svc: u32) -> bool {
    let key = SourceKey::of(&pkt.key.src, pkt.key.family);
    let Some(p) = TRUSTED_SOURCES.get_ptr(&key) else {
        return false;
    };
    // SAFETY: a map value stays valid for the whole program run (RCU); a u64 store by
    // another CPU is never seen half done.
    let passed = unsafe { *p };
    let short = PORTS_OUT.get(svc).copied().unwrap_or(0);
    trusted(passed, pkt.now, short)
}

/// Notes that the packet's source just passed a cookie (its ACK carried a valid one):
/// it is trusted from now on (`TRUSTED_SOURCES`).
#[inline(never)]
pub fn passed(pkt: &Packet) {
    let key = SourceKey::of(&pkt.key.src, pkt.key.family);
    // A full map forgets its least recently used source.
    let _ = TRUSTED_SOURCES.insert(&key, &pkt.now, BPF_ANY as u64);
}

/// Service `svc`'s count of unanswered SYNs, moved on to `now`'s window; `None` unless
/// cookies are `auto`, the only mode it decides.
#[inline(always)]
fn auto_rate(now: u64, svc: u32, cfg: &GlobalConfig) -> Option<&'static mut SynRate> {
    if cfg.syn_cookies != COOKIES_AUTO {
        return None;
    }
    let r = SYN_RATE.get_ptr_mut(svc)?;
    // SAFETY: a map value stays valid for the whole program run, the only time the
    // reference is used. Other CPUs write it too (see `maps::SYN_RATE`).
    let r = unsafe { &mut *r };
    r.roll(now);
    Some(r)
}

/// A flow of service `svc` completed its handshake (the client acknowledged the
/// backend's SYN-ACK): under `auto`, its SYN is answered and no longer counts toward
/// the VIP's unanswered SYNs (`lb_common::syn_proxy::SynRate`).
#[inline(never)]
pub fn answered(now: u64, svc: u32, cfg: &GlobalConfig) {
    if let Some(r) = auto_rate(now, svc, cfg) {
        // SAFETY: `count` is an aligned u64 inside the map value; adding 2^64 - 1 is
        // subtracting one from the signed count.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut r.count, u64::MAX) };
    }
}

/// SNAT ports run short for a new flow of service `svc` (the walk's tries found none
/// free): under `auto`, its SYNs are answered by cookie for the rest of this rate window
/// and the next, as over the rate, so a flood below the rate does not take the ports
/// that remain (only a client that completes the handshake, or a trusted one, then
/// claims one). A store racing with other CPUs' additions loses at most their few SYNs
/// of the count.
#[inline(never)]
pub fn ports_short(now: u64, svc: u32, cfg: &GlobalConfig) {
    if let Some(r) = auto_rate(now, svc, cfg) {
        let over = window_allowance(cfg.syn_cookie_rate) + 1;
        if (r.count as i64) < over as i64 {
            r.count = over;
        }
    }
}

/// SNAT ports ran out for a new flow of service `svc` (its sweep found none free, or
/// one lately did): for the rest of this second and the next, trusted sources get
/// cookies too (`lb_common::syn_proxy::trusted`), so none takes a port another flow
/// gives back before a client that completes a handshake can.
#[inline(never)]
pub fn ports_out(now: u64, svc: u32, cfg: &GlobalConfig) {
    if cfg.syn_cookies != COOKIES_AUTO {
        return;
    }
    if let Some(m) = PORTS_OUT.get_ptr_mut(svc) {
        // SAFETY: a map value stays valid for the whole program run; a u64 store is
        // never seen half done, and whichever CPU's mark lands last is as good.
        unsafe { *m = short_mark(now) };
    }
}

/// Whether `svc`'s new flows are being opened by cookie now (a SYN would get one).
#[inline(never)]
pub fn cookies_on(pkt: &Packet, svc: &Service, cfg: &GlobalConfig) -> bool {
    if cfg.syn_cookies == COOKIES_OFF {
        return false;
    }
    let Some(r) = SYN_RATE.get(svc.id) else {
        return false;
    };
    let mut r = *r;
    r.roll(pkt.now);
    use_cookie(cfg.syn_cookies, &r, cfg.syn_cookie_rate)
}

/// Rewrites the client's SYN into the LB's cookie SYN-ACK, window 0 (so the client
/// sends nothing but its ACK until the backend's leg is open), and sets `t` to its
/// addresses (VIP → client; no backend) for the route out. False only where the
/// verifier needs a branch, or when the helper cannot make a cookie.
#[inline(never)]
pub fn answer_syn(ctx: &XdpContext, pkt: &mut Packet, t: &mut Target) -> bool {
    let Some((seq, _, _)) = options::numbers(ctx, pkt) else {
        return false;
    };
    let so = options::syn_options(ctx, pkt);
    let client_ts = options::timestamps(ctx, pkt);
    let ts = client_ts.is_some();
    let tsecr = client_ts.map_or(0, |t| t.tsval);
    let Some(cookie) = cookie::generate(pkt, seq, so.mss) else {
        return false;
    };
    let opts = ClientOptions::of_syn(pkt.key.family, so.mss, so.wscale, so.sack);
    let s = Shape {
        seq: cookie,
        ack: seq.wrapping_add(1),
        tsval: cookie_tsval(pkt.now, &opts),
        tsecr,
        window: 0,
        mss: lb_mss(pkt.key.family),
        flags: SYN | ACK,
        // Only what the TSval can bring back is offered.
        wscale: if ts && opts.wscale().is_some() {
            LB_WSCALE
        } else {
            NO_WSCALE
        },
        sack_ok: (ts && opts.sack) as u8,
        ts: ts as u8,
        answer: 1,
        _pad: [0; 3],
    };
    t.src = pkt.key.dst;
    t.dst = pkt.key.src;
    t.sport = pkt.key.dport;
    t.dport = pkt.key.sport;
    t.backend = NO_BACKEND;
    segment::write(ctx, pkt, &s)
}

/// Rewrites the ACK with a valid cookie whose flow `select::new_flow` just entered
/// ([`pending_flow`]) into the client's SYN toward the backend (sent on as any
/// forwarded packet, counted as `SYN_COOKIE_VALID`).
#[inline(never)]
pub fn open(ctx: &XdpContext, pkt: &mut Packet) -> bool {
    // codegen: zeroed word by word; `FlowState::default()` was a byte-loop `memset` call.
    let mut slot = MaybeUninit::uninit();
    let fs = zeroed(&mut slot);
    pending_flow(ctx, pkt, fs) && backend_syn(ctx, pkt, fs)
}

/// Makes a zero-window probe that acknowledges a cookie look like the client's lost ACK
/// (its sequence number one up), which then opens the flow.
#[inline(never)]
pub fn probe_as_ack(ctx: &XdpContext, pkt: &Packet) -> bool {
    set_word(ctx, pkt, SEQ_OFF, |s| s.wrapping_add(1))
}

/// Makes `fs` (its backend and SNAT port set) the flow entry of a cookie ACK:
/// half-open, marked `PROXY_PENDING`, with what the backend's answer needs (the
/// client's ISN, the cookie, the TSval the client was given, which holds its options).
/// False only where the verifier needs a branch.
#[inline(never)]
pub fn pending_flow(ctx: &XdpContext, pkt: &Packet, fs: &mut FlowState) -> bool {
    let Some((seq, ack, _)) = options::numbers(ctx, pkt) else {
        return false;
    };
    let ts = options::timestamps(ctx, pkt);
    // The TSecr echoes the cookie SYN-ACK's TSval, which holds the client's options.
    let lb_tsval = ts.map_or(0, |t| t.tsecr);
    let mut proxy = PROXY_ON | PROXY_PENDING;
    let mut client_shift = 0;
    if ts.is_some() {
        proxy |= PROXY_CLIENT_TS;
        if ClientOptions::decode(lb_tsval).wscale().is_some() {
            client_shift = LB_WSCALE;
        }
    }
    fs.flags = 0;
    fs.proxy = proxy;
    fs.wscale = pack_wscale(client_shift, 0);
    fs.close_seq = seq.wrapping_sub(1);
    fs.seq_delta = ack.wrapping_sub(1);
    fs.ts_delta = lb_tsval;
    true
}

/// Rewrites a client segment of a pending flow into the client's SYN toward the backend
/// (before the NAT rewrite): its ISN, its options from the cookie SYN-ACK's TSval (the
/// safe ones without timestamps), its TSval.
#[inline(never)]
fn backend_syn(ctx: &XdpContext, pkt: &mut Packet, fs: &FlowState) -> bool {
    let Some((_, _, win)) = options::numbers(ctx, pkt) else {
        return false;
    };
    let client_ts = negotiated_timestamps(ctx, pkt, fs);
    let ts = client_ts.is_some();
    let tsval = client_ts.map_or(0, |t| t.tsval);
    let opts = if fs.proxy & PROXY_CLIENT_TS != 0 {
        ClientOptions::decode(fs.ts_delta)
    } else {
        ClientOptions::without_timestamps()
    };
    let s = Shape {
        seq: fs.close_seq,
        ack: 0,
        tsval,
        tsecr: 0,
        // A SYN's window is not scaled: the client's window in bytes, as far as it goes.
        window: rescale_window(win, opts.wscale().unwrap_or(0), 0),
        mss: opts.mss(pkt.key.family),
        flags: SYN,
        wscale: opts.wscale().unwrap_or(NO_WSCALE),
        sack_ok: opts.sack as u8,
        ts: ts as u8,
        answer: 0,
        _pad: [0; 3],
    };
    segment::write(ctx, pkt, &s)
}

/// A client segment of a proxied flow, before the NAT rewrite toward the backend: while
/// the backend's leg opens, the SYN again (the client's repeats and zero-window probes
/// drive its retransmission); then translated. False only where the verifier needs a
/// branch.
#[inline(never)]
pub fn from_client(ctx: &XdpContext, pkt: &mut Packet, fs: &FlowState) -> bool {
    if fs.proxy & PROXY_PENDING != 0 {
        backend_syn(ctx, pkt, fs)
    } else {
        translate_from_client(ctx, pkt, fs)
    }
}

/// What the reverse path does with a backend segment of a proxied flow.
pub enum Onward {
    /// Rewritten toward the client: NAT and send it as any reply.
    Forward,
    /// Handled here (the verdict says how).
    Done(Verdict),
}

/// A backend segment of a proxied flow (`fs`, already refreshed by it), before the
/// reverse NAT.
#[inline(never)]
pub fn from_backend(ctx: &XdpContext, pkt: &mut Packet, fs: &mut FlowState) -> Onward {
    let synack = pkt.tcp_flags & (SYN | ACK) == SYN | ACK;
    let ok = if fs.proxy & PROXY_PENDING != 0 {
        if synack {
            opened(ctx, pkt, fs)
        } else if pkt.tcp_flags & RST != 0 {
            refused(ctx, pkt, fs)
        } else if pkt.tcp_flags & ACK != 0 {
            // The backend still holds an older connection on this SNAT port and
            // answered the SYN with that one's ACK: reset it; the client's next probe
            // brings the SYN again.
            return Onward::Done(reset::answer(ctx, pkt, counters::DROP_STALE_BACKEND_ANSWER));
        } else {
            return Onward::Done(Verdict::drop(counters::DROP_MALFORMED));
        }
    } else if synack {
        return Onward::Done(ack_backend(ctx, pkt, fs));
    } else {
        translate_from_backend(ctx, pkt, fs)
    };
    if ok {
        Onward::Forward
    } else {
        Onward::Done(Verdict::drop(counters::DROP_MALFORMED))
    }
}

/// The backend's first SYN-ACK: fixes the translation (its ISN, TSval clock and window
/// scale against what the client was given) and becomes the client's window update.
#[inline(never)]
fn opened(ctx: &XdpContext, pkt: &mut Packet, fs: &mut FlowState) -> bool {
    let Some((seq, ack, win)) = options::numbers(ctx, pkt) else {
        return false;
    };
    let cookie = fs.seq_delta;
    let lb_tsval = fs.ts_delta;
    let backend_ts = negotiated_timestamps(ctx, pkt, fs);
    let ts = backend_ts.is_some();
    let (tsval, tsecr) = backend_ts.map_or((0, 0), |t| (t.tsval, t.tsecr));
    let backend_shift = match options::wscale(ctx, pkt) {
        NO_WSCALE => 0,
        w => w,
    };
    let (client_shift, _) = unpack_wscale(fs.wscale);
    fs.seq_delta = seq.wrapping_sub(cookie);
    fs.ts_delta = if ts { tsval.wrapping_sub(lb_tsval) } else { 0 };
    fs.wscale = pack_wscale(client_shift, backend_shift);
    fs.proxy &= !PROXY_PENDING;
    let s = Shape {
        seq: cookie.wrapping_add(1),
        ack,
        tsval: lb_tsval,
        tsecr,
        // A SYN-ACK's window is not scaled.
        window: rescale_window(win, 0, client_shift),
        mss: 0,
        flags: ACK,
        wscale: NO_WSCALE,
        sack_ok: 0,
        ts: ts as u8,
        answer: 0,
        _pad: [0; 3],
    };
    segment::write(ctx, pkt, &s)
}

/// The backend refused the pending flow's SYN (a RST): on to the client at the sequence
/// number it expects, so it learns at once.
#[inline(never)]
fn refused(ctx: &XdpContext, pkt: &Packet, fs: &FlowState) -> bool {
    set_word(ctx, pkt, SEQ_OFF, |_| fs.seq_delta.wrapping_add(1))
}

/// A repeated SYN-ACK of an open flow (the backend has not seen the client's ACK):
/// acknowledged to the backend directly, with XDP_TX.
#[inline(never)]
fn ack_backend(ctx: &XdpContext, pkt: &mut Packet, fs: &FlowState) -> Verdict {
    let Some((seq, ack, _)) = options::numbers(ctx, pkt) else {
        return Verdict::drop(counters::DROP_MALFORMED);
    };
    let backend_ts = negotiated_timestamps(ctx, pkt, fs);
    let ts = backend_ts.is_some();
    // The backend last saw the client's TSval that it echoes.
    let (tsval, tsecr) = backend_ts.map_or((0, 0), |t| (t.tsecr, t.tsval));
    let s = Shape {
        seq: ack,
        ack: seq.wrapping_add(1),
        tsval,
        tsecr,
        window: BACKEND_ACK_WINDOW,
        mss: 0,
        flags: ACK,
        wscale: NO_WSCALE,
        sack_ok: 0,
        ts: ts as u8,
        answer: 1,
        _pad: [0; 3],
    };
    if !segment::write(ctx, pkt, &s) {
        return Verdict::drop(counters::DROP_MALFORMED);
    }
    Verdict::tx(counters::SYN_PROXY_BACKEND_ACK)
}

/// Client → backend: the acknowledgment and SACK blocks into the backend's sequence
/// space, the TSecr into its clock.
#[inline(never)]
fn translate_from_client(ctx: &XdpContext, pkt: &Packet, fs: &FlowState) -> bool {
    let delta = fs.seq_delta;
    if pkt.tcp_flags & ACK != 0 && !set_word(ctx, pkt, ACK_OFF, |a| a.wrapping_add(delta)) {
        return false;
    }
    if fs.ts_delta != 0 {
        if let Some(t) = options::timestamps(ctx, pkt) {
            let d = fs.ts_delta;
            set_word(ctx, pkt, t.off + 6, |v| v.wrapping_add(d));
        }
    }
    if let Some((sack, len)) = options::find(ctx, pkt, OPT_SACK) {
        let mut i = 0;
        while i < MAX_SACK_EDGES {
            let off = sack + 2 + 4 * i;
            if off + 4 > sack + len {
                break;
            }
            set_word(ctx, pkt, off, |v| v.wrapping_add(delta));
            i += 1;
        }
    }
    true
}

/// Backend → client: the sequence number into the client's view, the TSval into the
/// clock the client was given, the window into the scale it was given.
#[inline(never)]
fn translate_from_backend(ctx: &XdpContext, pkt: &Packet, fs: &FlowState) -> bool {
    let delta = fs.seq_delta;
    if !set_word(ctx, pkt, SEQ_OFF, |s| s.wrapping_sub(delta)) {
        return false;
    }
    let (client_shift, backend_shift) = unpack_wscale(fs.wscale);
    if client_shift != backend_shift {
        set_word(ctx, pkt, WIN_WORD_OFF, |w| {
            let win = rescale_window(w as u16, backend_shift, client_shift);
            (w & 0xffff_0000) | win as u32
        });
    }
    if fs.ts_delta != 0 {
        if let Some(t) = options::timestamps(ctx, pkt) {
            let d = fs.ts_delta;
            set_word(ctx, pkt, t.off + 2, |v| v.wrapping_sub(d));
        }
    }
    true
}

/// The segment's timestamps option if the flow's client uses timestamps (else the
/// option is not the proxy's to carry over).
#[inline(always)]
fn negotiated_timestamps(ctx: &XdpContext, pkt: &Packet, fs: &FlowState) -> Option<Timestamps> {
    if fs.proxy & PROXY_CLIENT_TS != 0 {
        options::timestamps(ctx, pkt)
    } else {
        None
    }
}

/// Replaces the 32-bit field (host order) at `off` bytes into the TCP header with
/// `f(old)` and updates the TCP checksum; false if it is not in the packet.
#[inline(always)]
fn set_word(ctx: &XdpContext, pkt: &Packet, off: u32, f: impl Fn(u32) -> u32) -> bool {
    let l4 = pkt.l4 as usize & OFF_MASK;
    let Some(p) = ptr_at::<[u8; 4]>(ctx, (l4 + off as usize) & OPT_OFF_MASK) else {
        return false;
    };
    let Some(th) = ptr_at::<TcpHdr>(ctx, l4) else {
        return false;
    };
    // SAFETY: `ptr_at` checked the 4 bytes at `p` and the TCP header at `th` are inside
    // the packet; accesses are unaligned-safe.
    unsafe {
        let old = p.read_unaligned();
        let new = f(u32::from_be_bytes(old)).to_be_bytes();
        let c = addr_of_mut!((*th).check).cast::<u16>();
        c.write_unaligned(csum::replace_at(
            c.read_unaligned(),
            off as usize,
            u32::from_ne_bytes(old),
            u32::from_ne_bytes(new),
        ));
        p.write_unaligned(new);
    }
    true
}
