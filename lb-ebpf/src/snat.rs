//! SNAT addresses and ports: a new flow claims the source address and port it uses
//! toward its backend by inserting the reverse NAT entry that maps the backend's
//! replies back to it.

use core::{
    intrinsics::{AtomicOrdering, atomic_xchg},
    ptr::{addr_of_mut, null_mut},
};

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    cty::c_void,
    helpers::bpf_loop,
    macros::map,
    maps::Array,
};
use lb_common::{
    flow::{self, Opening},
    maps::{Backend, FlowKey, GlobalConfig, MAX_SNAT_ADDRS, ReverseNat, snat_addrs_base},
    snat_probe::{PROBES, SWEEP_HOLD_NS, Search},
};

use crate::{
    conntrack,
    maps::{CLAIM_SCRATCH, CONFIG, REVERSE_NAT, SNAT_ADDRS, SNAT_SWEPT},
    nat::Target,
    parse::Packet,
    syn_proxy,
};

/// Lock words of port takeovers ([`take_over`]), a port's word picked by a hash of its
/// reverse NAT key: a CPU takes a word by swapping in 1 (`BPF_XCHG`, atomic and fully
/// ordered) and finding 0 there, and gives it back by swapping in 0. Two CPUs that both
/// find the same taken port reusable cannot then both take it: without this, both
/// flows went out on that port, the entry named only the second, and the first never
/// saw its SYN-ACK. Two ports that share a word only send one claim on to its next
/// candidate now and then. A word is held for one takeover of one program run; the
/// program's own map, not the daemon's, so it lives here rather than in `maps`.
#[map]
static TAKEOVER_LOCKS: Array<u64> = Array::with_max_entries(TAKEOVER_SLOTS, 0);

/// Lock words: a power of two, many more than the CPUs that can take over at once.
const TAKEOVER_SLOTS: u32 = 4096;

/// What a new flow has chosen so far, for [`claim_snat_port`].
pub struct Ids {
    pub backend: u32,
    pub service: u32,
    pub hash: u32,
    /// The flow's opening segment, for `flow::port_free_for`.
    pub opening: Opening,
}

/// Claims a SNAT address and port toward backend `b` by inserting the reverse NAT entry,
/// and sets them in `t` (`src`, `sport`, `snat_idx`). A port `t.sport` already names
/// (see [`previous`]) is tried first, on its address `t.snat_idx`; otherwise, with
/// several SNAT addresses for the family, the flow hash picks one. The family's other
/// addresses follow in turn while one has no port free, so a flow finds a port whenever
/// any address has one.
#[inline(never)]
pub fn claim_snat_port(
    pkt: &Packet,
    cfg: &GlobalConfig,
    b: &Backend,
    ids: &Ids,
    t: &mut Target,
) -> bool {
    let n = cfg.snat_addr_count(pkt.key.family).max(1);
    let first = if t.sport != 0 {
        u32::from(t.snat_idx)
    } else {
        ids.hash.rotate_right(8) % n
    };
    let mut k = 0;
    while k < MAX_SNAT_ADDRS && k < n {
        if address(b, pkt.key.family, (first + k) % n, t) && claim_on(pkt, cfg, b, ids, t) {
            return true;
        }
        t.sport = 0;
        k += 1;
    }
    false
}

/// Sets `t.snat_idx` and `t.sport` to the SNAT address index and port of the packet's
/// own previous flow (the client reuses its port) if that flow went to backend `backend`
/// and its port is still in the range; else sets `t.sport` to 0. Taking that port again
/// (when the backend accepts this SYN there) leaves no port naming this flow while
/// another port carries it: such a port looks free to [`reusable`], although the backend
/// may still hold the old connection in TIME_WAIT, with this client port's TSval clock,
/// which another client port's SYN need not be newer than (the backend answers with an
/// ACK, the client resets and sends its SYN again).
#[inline(never)]
pub fn previous(pkt: &Packet, cfg: &GlobalConfig, backend: u32, t: &mut Target) {
    t.sport = 0;
    let Some(entry) = conntrack::lookup(&pkt.key) else {
        return;
    };
    // SAFETY: a map value stays valid for the whole program run.
    let fs = unsafe { &*entry.state };
    let port = u16::from_be(fs.snat_port);
    if u32::from(fs.backend) == backend
        && u32::from(fs.snat_idx) < cfg.snat_addr_count(pkt.key.family).max(1)
        && port >= cfg.snat_port_min
        && port <= cfg.snat_port_max
    {
        t.snat_idx = fs.snat_idx;
        t.sport = fs.snat_port;
    }
}

/// Sets SNAT address `idx` (see `FlowState::snat_idx`) as `t`'s source; false if the
/// daemon wrote no such entry.
#[inline(always)]
pub fn address(b: &Backend, family: u8, idx: u32, t: &mut Target) -> bool {
    t.snat_idx = idx as u8;
    if idx == 0 {
        t.src = b.snat_addr;
        return true;
    }
    match SNAT_ADDRS.get(snat_addrs_base(family) + idx) {
        Some(a) => {
            t.src = *a;
            true
        }
        None => false,
    }
}

/// Claims a port on the address in `t.src`, into `t.sport`: the flow's search
/// (`lb_common::snat_probe::Search`), the port `t.sport` names first if any. The walk's
/// candidates first; if none is free, every port of the range, unless a sweep toward
/// this backend's address found none within `SWEEP_HOLD_NS` (`SNAT_SWEPT`); either way
/// the service's untrusted SYNs are answered by cookie for a while
/// (`syn_proxy::ports_short`). A taken port is reused when [`reusable`].
#[inline(never)]
fn claim_on(pkt: &Packet, cfg: &GlobalConfig, b: &Backend, ids: &Ids, t: &mut Target) -> bool {
    let (min, max) = (cfg.snat_port_min, cfg.snat_port_max);
    if min == 0 || max < min {
        return false;
    }
    let range = (max - min) as u32 + 1;
    let named = u16::from_be(t.sport);
    let named = (named >= min && named <= max).then(|| u32::from(named - min));
    let Some(c) = CLAIM_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's slot of a per-CPU array, valid for the program run; nothing
    // else runs on this CPU while the program does. Written through the raw pointer and
    // no reference kept: `try_port` changes the slot inside `bpf_loop`'s call. Every
    // field but `seen`, which `reusable` writes before `take_over` reads it: zeroed
    // here, it and the padding byte before it made a 49-byte `memset`, a byte loop of
    // about 250 instructions per new flow.
    unsafe {
        addr_of_mut!((*c).key).write(FlowKey {
            src: b.addr,
            dst: t.src,
            sport: b.port,
            dport: 0,
            proto: pkt.key.proto,
            family: pkt.key.family,
            _pad: [0; 2],
        });
        addr_of_mut!((*c).val).write(ReverseNat {
            flow: pkt.key,
            backend: ids.backend as u16,
            syn_acks: flow::SynAcks::sent(pkt.now),
            service_id: ids.service,
        });
        addr_of_mut!((*c).search).write(Search::new(ids.hash, u32::from(t.snat_idx), range, named));
        addr_of_mut!((*c).opening).write(ids.opening);
        addr_of_mut!((*c).now).write(pkt.now);
        addr_of_mut!((*c).base).write(0);
        addr_of_mut!((*c).min).write(min);
        addr_of_mut!((*c).snat_idx).write(t.snat_idx);
        addr_of_mut!((*c).found).write(0);
    }
    if let Some(port) = run(PROBES) {
        t.sport = port;
        return true;
    }
    // The range is nearly full: let SYN cookies answer, not more untrusted flows take
    // ports.
    syn_proxy::ports_short(pkt.now, ids.service, cfg);
    let swept = (ids.backend << 3) | u32::from(t.snat_idx);
    // SAFETY: a map value stays valid for the whole program run.
    if unsafe { SNAT_SWEPT.get(&swept) }
        .is_some_and(|&at| pkt.now.saturating_sub(at) < SWEEP_HOLD_NS)
    {
        return false;
    }
    // SAFETY: as above; `run` has returned, so nothing else touches the slot.
    let sweep = unsafe {
        (*c).base = PROBES;
        (*c).search.candidates() - PROBES
    };
    if let Some(port) = run(sweep) {
        t.sport = port;
        return true;
    }
    let _ = SNAT_SWEPT.insert(&swept, &pkt.now, BPF_ANY as u64);
    false
}

/// A port search in progress: what [`try_port`] needs. `bpf_loop` runs the candidates,
/// so the verifier checks the loop's body once, not once per candidate, and a search
/// can cover a whole range of ports. It lives in this CPU's slot of `CLAIM_SCRATCH`,
/// not on the stack: the longest call chain has no room for its 150 bytes.
#[repr(C)]
pub struct Claim {
    /// The reverse NAT key, its `dport` the candidate being tried.
    key: FlowKey,
    val: ReverseNat,
    search: Search,
    opening: Opening,
    now: u64,
    /// Candidate number of the loop's first turn.
    base: u32,
    min: u16,
    snat_idx: u8,
    /// Set when `key.dport` was claimed.
    found: u8,
    /// The reverse entry found on `key.dport`, as it was when judged reusable: written by
    /// `reusable` before `take_over` reads it, and left from an earlier claim otherwise.
    seen: ReverseNat,
}

/// Whether reverse entry `now` is still `seen`, compared word by word without a branch
/// per field (each one would be another path for the verifier to walk).
#[inline(always)]
fn unchanged(now: &ReverseNat, seen: &ReverseNat) -> bool {
    const WORDS: usize = size_of::<ReverseNat>() / 4;
    // SAFETY: both are `ReverseNat`s, 48 bytes of plain integers, 4-byte aligned
    // (asserted below), read as the twelve words they are made of.
    let (a, b) = unsafe {
        (
            &*(now as *const ReverseNat).cast::<[u32; WORDS]>(),
            &*(seen as *const ReverseNat).cast::<[u32; WORDS]>(),
        )
    };
    let mut diff = 0;
    let mut i = 0;
    while i < WORDS {
        diff |= a[i] ^ b[i];
        i += 1;
    }
    diff == 0
}
const _: () = assert!(size_of::<ReverseNat>() % 4 == 0 && align_of::<ReverseNat>() >= 4);

/// Tries the next `n` candidates of the search in this CPU's `CLAIM_SCRATCH` slot; the
/// port claimed (network order), if one was.
#[inline(always)]
fn run(n: u32) -> Option<u16> {
    // SAFETY: `try_port` is a static function of the program; it takes no context and
    // finds the search in `CLAIM_SCRATCH`.
    unsafe {
        bpf_loop(n, try_port as *mut c_void, null_mut(), 0);
    }
    let c = CLAIM_SCRATCH.get_ptr(0)?;
    // SAFETY: this CPU's slot, valid for the program run; read after the loop is done.
    unsafe { ((*c).found != 0).then_some((*c).key.dport) }
}

/// One turn of [`run`]'s loop: tries candidate `base + i`; 1 (stop) once a port is
/// claimed.
#[inline(never)]
extern "C" fn try_port(i: u32, _: *mut c_void) -> i64 {
    let (Some(c), Some(cfg)) = (CLAIM_SCRATCH.get_ptr_mut(0), CONFIG.get(0)) else {
        return 1;
    };
    // SAFETY: this CPU's slot, filled by `claim_on`, which waits in `bpf_loop` for this.
    let c = unsafe { &mut *c };
    let port = (c.min + c.search.offset(c.base + i) as u16).to_be();
    c.key.dport = port;
    if REVERSE_NAT
        .insert(&c.key, &c.val, BPF_NOEXIST as u64)
        .is_ok()
    {
        c.found = 1;
        return 1;
    }
    let Some(old) = REVERSE_NAT.get_ptr(&c.key) else {
        return 0;
    };
    // SAFETY: a map value stays valid for the whole program run.
    if reusable(unsafe { &*old }, c, cfg) && take_over(c) {
        c.found = 1;
        return 1;
    }
    0
}

/// Takes the port `c.key` names, found reusable as `c.seen`, for `c`'s flow, holding its
/// lock word (`TAKEOVER_LOCKS`) meanwhile; false if another CPU holds the word, or
/// changed the entry since (took the port: its flow's fresh entry would not be
/// reusable). The judgement is not made again: an entry as it was is a port as free as
/// it was. A call of its own: inlined, it deepened `try_port`'s frame past the stack
/// the verifier allows the port search's call chain.
#[inline(never)]
fn take_over(c: &Claim) -> bool {
    let Some(word) = TAKEOVER_LOCKS.get_ptr_mut(lock_slot(&c.key)) else {
        return false;
    };
    // SAFETY: an aligned u64 of an array map's value, valid for the whole program run;
    // every CPU touches it only with these atomic swaps.
    if unsafe { atomic_xchg::<u64, { AtomicOrdering::SeqCst }>(word, 1) } != 0 {
        return false;
    }
    // SAFETY: as in `try_port`.
    let same = REVERSE_NAT
        .get_ptr(&c.key)
        .is_some_and(|now| unchanged(unsafe { &*now }, &c.seen));
    let taken = same && REVERSE_NAT.insert(&c.key, &c.val, BPF_ANY as u64).is_ok();
    // SAFETY: as above; the word is this CPU's since the swap that found 0.
    unsafe { atomic_xchg::<u64, { AtomicOrdering::SeqCst }>(word, 0) };
    taken
}

/// The lock word of the port the reverse NAT key `k` names (backend address and port,
/// SNAT address and port): a multiplicative hash of what tells two SNAT ports apart.
#[inline(always)]
fn lock_slot(k: &FlowKey) -> u32 {
    let ports = (u32::from(k.dport) << 16) | u32::from(k.sport);
    let mixed = k.src[0] ^ k.src[3] ^ k.dst[0] ^ k.dst[3] ^ ports;
    mixed.wrapping_mul(0x9e37_79b1) >> (32 - TAKEOVER_SLOTS.trailing_zeros())
}
const _: () = assert!(TAKEOVER_SLOTS.is_power_of_two());

/// Whether the reverse NAT entry `old`, holding the port `c` tries, may be taken over by
/// `c`'s flow (`flow::entry_free_for`); keeps a copy of it in `c.seen` first, for
/// [`take_over`] (an entry changed during the judgement no longer matches the copy).
/// Not inlined: keeps the comparison's loads off the loop's stack.
#[inline(never)]
fn reusable(old: &ReverseNat, c: &mut Claim, cfg: &GlobalConfig) -> bool {
    c.seen = *old;
    // SAFETY: a map value stays valid for the whole program run.
    let fs = conntrack::lookup(&old.flow)
        .map(|entry| unsafe { &*entry.state })
        .filter(|fs| {
            fs.backend == old.backend && fs.snat_port == c.key.dport && fs.snat_idx == c.snat_idx
        });
    flow::entry_free_for(
        old.syn_acks,
        fs,
        old.flow == c.val.flow,
        cfg,
        c.now,
        &c.opening,
    )
}
