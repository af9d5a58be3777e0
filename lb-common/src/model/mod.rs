//! A reference model of the XDP program's per-packet state machine, written as plainly
//! as the rules allow (hash maps, no verifier, no pointers into maps), so a differential
//! fuzzer can run the same packets through the loaded program (BPF_PROG_TEST_RUN) and
//! through the model and compare what each decided and what each remembered, packet by
//! packet (`tests/tests/model_fuzz.rs`).
//!
//! Covered: TCP to a `nat` or `dnat` VIP and its backends' replies. The parser
//! ([`parse`]: VLAN tags, IPv4 options, IPv6, fragments, truncated and inconsistent
//! frames); the service match; the flow table with its half-open part (promotion, a
//! closed flow's port reuse, a SYN on a closed flow); the Maglev pick; the SNAT port claim (the client's previous port, the
//! probe sequence, stale and reusable reverse entries, TIME_WAIT); the forward and
//! reverse rewrites; the RST for a connection no backend takes; allowlists (drop or
//! RST, new flows only or established ones too); the verdict and its counter; per-flow
//! packet counts.
//!
//! Not covered yet: the other modes (proxy-v2, DSR), SYN cookies and the SYN proxy,
//! per-source limits, ICMP errors, frames to another host's MAC (the interface list is
//! empty in the model) and a full table.
//!
//! Time: the model's clock ([`Model::now`]) stands still while the program's runs, so a
//! run must stay far inside every timeout; entries age by [`Model::age`] (and the fuzzer
//! ages the program's entry alike) by amounts far past the timeouts they cross.

mod parse;

pub use parse::{Parsed, parse};

use std::collections::HashMap;

use crate::flow::{self, Opening};
use crate::hash::flow_hash;
use crate::maglev::{self, NO_BACKEND};
use crate::maps::{
    ACCESS_CUT_ESTABLISHED, ACCESS_LIST, ACCESS_RESET, BACKEND_DRAINING, BACKEND_UP, Backend,
    FLOW_BACKEND_TIME_WAIT, FLOW_CLIENT_TS, FLOW_ESTABLISHED, FLOW_FIN_BACKEND, FLOW_FIN_CLIENT,
    FLOW_RST, FlowKey, FlowState, GlobalConfig, MODE_DNAT, MODE_NAT, MODE_PROXY, ReverseNat,
    Service, VipKey, snat_addrs_base,
};
use crate::snat_probe::{PROBES, SWEEP_HOLD_NS, Search};
use crate::{counters, tcp};

/// A TCP segment as the program sees it once parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Its 5-tuple, as the program keys it (network order words and ports).
    pub key: FlowKey,
    pub flags: u8,
    /// Sequence and acknowledgment numbers, host order.
    pub seq: u32,
    pub ack: u32,
    /// Bytes after the TCP header.
    pub payload_len: u32,
    /// The timestamps option's TSval, if the segment has one.
    pub tsval: Option<u32>,
    /// TTL or hop limit.
    pub ttl: u8,
}

impl Segment {
    /// The sequence number after the segment (SYN and FIN count one each).
    pub fn end(&self) -> u32 {
        let mut end = self.seq.wrapping_add(self.payload_len);
        if self.flags & tcp::SYN != 0 {
            end = end.wrapping_add(1);
        }
        if self.flags & tcp::FIN != 0 {
            end = end.wrapping_add(1);
        }
        end
    }
}

/// Which way a forwarded packet goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Toward {
    Backend,
    Client,
}

/// What the program does with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Passed to the kernel untouched.
    Pass,
    Drop,
    /// Rewritten to `src:sport → dst:dport` (TTL one less) and sent toward `toward`.
    Forward {
        toward: Toward,
        src: [u32; 4],
        sport: u16,
        dst: [u32; 4],
        dport: u16,
    },
    /// Answered in place, back out where it came from, with a RST of these numbers and
    /// flags (no options, no payload, window 0).
    Reset {
        seq: u32,
        ack: u32,
        flags: u8,
    },
}

/// A decision and the one counter it bumps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub decision: Decision,
    pub counter: u32,
}

impl Outcome {
    fn new(decision: Decision, counter: u32) -> Outcome {
        Outcome { decision, counter }
    }
}

/// The model: the maps the daemon writes (as inputs) and the ones the program writes.
#[derive(Clone, Debug, Default)]
pub struct Model {
    /// The clock entries are stamped with (ns); it does not move by itself.
    pub now: u64,
    pub cfg: GlobalConfig,
    pub services: HashMap<VipKey, Service>,
    /// The Maglev tables of every service, indexed as the program indexes them
    /// (`Service::table_offset` + slot).
    pub maglev: HashMap<u32, u32>,
    pub backends: HashMap<u32, Backend>,
    /// The extra SNAT addresses (`SNAT_ADDRS`), by index.
    pub snat_addrs: HashMap<u32, [u32; 4]>,
    /// The established flows (`FLOWS`) and the half-open ones (`HALF_OPEN`).
    pub flows: HashMap<FlowKey, FlowState>,
    pub half_open: HashMap<FlowKey, FlowState>,
    /// Backend → SNAT address:port tuple → its flow (`REVERSE_NAT`).
    pub reverse: HashMap<FlowKey, ReverseNat>,
    /// The allowlists (`ALLOW`), a service's ranges applying while its `access` has
    /// `ACCESS_LIST`.
    pub allow: Vec<AllowRange>,
    /// (backend, SNAT address index) → when a sweep of its ports last found none
    /// (`SNAT_SWEPT`).
    pub swept: HashMap<(u32, u32), u64>,
}

/// A range of an allowlist: addresses whose first `prefix` bits are `addr`'s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllowRange {
    pub service: u32,
    pub family: u8,
    /// The address's bytes (IPv4 in the first 4).
    pub addr: [u8; 16],
    pub prefix: u8,
}

impl AllowRange {
    fn holds(&self, service: u32, key: &FlowKey) -> bool {
        if self.service != service || self.family != key.family {
            return false;
        }
        let mut src = [0u8; 16];
        for (i, w) in key.src.iter().enumerate() {
            src[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        let bits = usize::from(self.prefix);
        (0..bits).all(|b| (src[b / 8] ^ self.addr[b / 8]) & (0x80 >> (b % 8)) == 0)
    }
}

/// A flow's entry and the table it is in.
#[derive(Clone, Copy)]
struct Found {
    fs: FlowState,
    half_open: bool,
}

impl Model {
    /// What the program does with `frame`, and the state it leaves; `None` for a frame
    /// outside the model's scope.
    pub fn frame(&mut self, frame: &[u8]) -> Option<Outcome> {
        let pass = |c| Some(Outcome::new(Decision::Pass, c));
        match parse(frame) {
            Parsed::Skip => pass(counters::PASS),
            Parsed::Tcp(s) => self.packet(&s),
            Parsed::LaterFragment => pass(counters::PASS_FRAGMENT),
            Parsed::FirstFragment(k) if self.services.contains_key(&vip_of(&k)) => {
                pass(counters::PASS_FRAGMENT)
            }
            Parsed::FirstFragment(_) => pass(counters::PASS),
            Parsed::Malformed(k)
                if self.services.contains_key(&vip_of(&k))
                    || (self.in_snat_range(&k) && self.reverse.contains_key(&k)) =>
            {
                Some(Outcome::new(Decision::Drop, counters::DROP_MALFORMED))
            }
            Parsed::Malformed(_) => pass(counters::PASS),
            Parsed::IcmpError => None,
        }
    }

    /// Whether a reply's tuple may be in the reverse table: a port of the SNAT range,
    /// or any while a DNAT service exists.
    fn in_snat_range(&self, k: &FlowKey) -> bool {
        self.cfg.reply_port(k.dport)
    }

    /// What the program does with segment `s`, and the state it leaves; `None` for a
    /// segment to a service of a mode the model does not cover (proxy-v2, DSR).
    pub fn packet(&mut self, s: &Segment) -> Option<Outcome> {
        match self.services.get(&vip_of(&s.key)).copied() {
            Some(svc) if self.refused(s, &svc) => Some(refusal(s, &svc)),
            Some(svc) if svc.mode == MODE_NAT => Some(self.forward(s, &svc)),
            Some(svc) if svc.mode == MODE_DNAT => Some(self.forward_dnat(s, &svc)),
            Some(_) => None,
            None => Some(self.reverse(s)),
        }
    }

    /// Makes flow `key`'s entries (established and half-open) `by` ns older, as if no
    /// packet of it had come for that long.
    pub fn age(&mut self, key: &FlowKey, by: u64) {
        for table in [&mut self.flows, &mut self.half_open] {
            if let Some(fs) = table.get_mut(key) {
                fs.last_seen_ns = fs.last_seen_ns.saturating_sub(by);
            }
        }
        for r in self.reverse.values_mut().filter(|r| r.flow == *key) {
            r.syn_acks = flow::SynAcks::aged(r.syn_acks, by);
        }
    }

    /// Whether the service's allowlist refuses the segment: its source is not listed,
    /// and the segment would open a flow (a SYN, or a segment no flow knows) or the
    /// service cuts such sources' flows too.
    fn refused(&self, s: &Segment, svc: &Service) -> bool {
        if svc.access & ACCESS_LIST == 0 || self.allow.iter().any(|r| r.holds(svc.id, &s.key)) {
            return false;
        }
        if svc.access & ACCESS_CUT_ESTABLISHED != 0 || s.flags & tcp::SYN != 0 {
            return true;
        }
        svc.mode != MODE_PROXY && self.lookup(&s.key).is_none()
    }

    // -- The flow table ----------------------------------------------------------------

    fn lookup(&self, key: &FlowKey) -> Option<Found> {
        if let Some(fs) = self.flows.get(key) {
            return Some(Found {
                fs: *fs,
                half_open: false,
            });
        }
        self.half_open.get(key).map(|fs| Found {
            fs: *fs,
            half_open: true,
        })
    }

    fn store(&mut self, key: &FlowKey, f: &Found) {
        let table = if f.half_open {
            &mut self.half_open
        } else {
            &mut self.flows
        };
        table.insert(*key, f.fs);
    }

    /// A new flow: half-open ones in their own table (the key's closed entry in the
    /// flow table goes), others in the flow table.
    fn enter(&mut self, key: &FlowKey, fs: FlowState) {
        if fs.flags & FLOW_ESTABLISHED == 0 {
            self.flows.remove(key);
            self.half_open.insert(*key, fs);
        } else {
            self.flows.insert(*key, fs);
        }
    }

    // -- Client → VIP ------------------------------------------------------------------

    fn forward(&mut self, s: &Segment, svc: &Service) -> Outcome {
        if s.ttl <= 1 {
            return Outcome::new(Decision::Pass, counters::PASS);
        }
        if let Some(out) = self.existing_flow(s) {
            return out;
        }
        match self.new_flow(s, svc) {
            Ok(out) => out,
            Err(counters::DROP_NO_BACKEND) => reset(s, counters::DROP_NO_BACKEND),
            Err(c) => Outcome::new(Decision::Drop, c),
        }
    }

    /// Client → VIP of a `dnat` service: only the destination changes, to the flow's
    /// backend; a new flow's reverse entry is keyed by the client's own address and
    /// port, where the backend's replies go.
    fn forward_dnat(&mut self, s: &Segment, svc: &Service) -> Outcome {
        if s.ttl <= 1 {
            return Outcome::new(Decision::Pass, counters::PASS);
        }
        let dnat_to = |b: &Backend| {
            Outcome::new(
                Decision::Forward {
                    toward: Toward::Backend,
                    src: s.key.src,
                    sport: s.key.sport,
                    dst: b.addr,
                    dport: b.port,
                },
                counters::FWD_IN,
            )
        };
        if let Some(mut f) = self.lookup(&s.key)
            && let Some(b) = self.live_backend(s, &f.fs)
        {
            f.fs.last_seen_ns = self.now;
            f.fs.packets += 1;
            f.fs.flags |= flow::client_segment(f.fs.flags, s.flags);
            self.store(&s.key, &f);
            if f.half_open && f.fs.flags & FLOW_ESTABLISHED != 0 {
                self.flows.insert(s.key, f.fs);
            }
            return dnat_to(&b);
        }
        let (id, _) = match self.maglev_pick(s, svc) {
            Ok(picked) => picked,
            Err(counters::DROP_NO_BACKEND) => return reset(s, counters::DROP_NO_BACKEND),
            Err(c) => return Outcome::new(Decision::Drop, c),
        };
        let b = self.backends[&id];
        let back = FlowKey {
            src: b.addr,
            dst: s.key.src,
            sport: b.port,
            dport: s.key.sport,
            ..s.key
        };
        self.reverse.insert(
            back,
            ReverseNat {
                flow: s.key,
                backend: id as u16,
                syn_acks: 0,
                service_id: svc.id,
            },
        );
        self.enter(
            &s.key,
            FlowState {
                backend: id as u16,
                flags: flow::new_flow_flags(s.flags),
                packets: 1,
                last_seen_ns: self.now,
                first_seen_ns: self.now,
                ..FlowState::default()
            },
        );
        dnat_to(&b)
    }

    /// The backend Maglev gives a new flow of `svc`, and the flow hash: it must be up
    /// and of the packet's family.
    fn maglev_pick(&self, s: &Segment, svc: &Service) -> Result<(u32, u32), u32> {
        if self.cfg.ring_size == 0 {
            return Err(counters::DROP_INTERNAL);
        }
        let hash = flow_hash(&s.key);
        let slot = maglev::slot(hash, self.cfg.ring_size);
        let id = *self
            .maglev
            .get(&svc.table_offset.wrapping_add(slot))
            .ok_or(counters::DROP_INTERNAL)?;
        if id == NO_BACKEND {
            return Err(counters::DROP_NO_BACKEND);
        }
        let b = self.backends.get(&id).ok_or(counters::DROP_NO_BACKEND)?;
        if b.state != BACKEND_UP || b.family != s.key.family {
            return Err(counters::DROP_NO_BACKEND);
        }
        Ok((id, hash))
    }

    /// The packet's flow, if it has a live one: refreshed, and the packet sent on.
    fn existing_flow(&mut self, s: &Segment) -> Option<Outcome> {
        let mut f = self.lookup(&s.key)?;
        let b = self.live_backend(s, &f.fs)?;
        f.fs.last_seen_ns = self.now;
        f.fs.packets += 1;
        f.fs.flags |= flow::client_segment(f.fs.flags, s.flags);
        if flow::records_close(f.fs.flags, s.flags) {
            f.fs.close_seq = s.end();
            match s.tsval {
                Some(ts) => {
                    f.fs.close_tsval = ts;
                    f.fs.flags |= FLOW_CLIENT_TS;
                }
                None => f.fs.flags &= !FLOW_CLIENT_TS,
            }
        }
        self.store(&s.key, &f);
        let src = self.snat_address(&b, s.key.family, u32::from(f.fs.snat_idx))?;
        if f.half_open && f.fs.flags & FLOW_ESTABLISHED != 0 {
            self.flows.insert(s.key, f.fs);
        }
        Some(to_backend(&b, src, f.fs.snat_port))
    }

    /// The backend of flow entry `fs`, if the entry is live and the backend serves it.
    fn live_backend(&self, s: &Segment, fs: &FlowState) -> Option<Backend> {
        if flow::expired(fs, &self.cfg, self.now) {
            return None;
        }
        if s.flags & (tcp::SYN | tcp::ACK) == tcp::SYN && flow::closed(fs.flags) {
            return None;
        }
        let b = *self.backends.get(&u32::from(fs.backend))?;
        (b.state == BACKEND_UP || b.state == BACKEND_DRAINING).then_some(b)
    }

    fn new_flow(&mut self, s: &Segment, svc: &Service) -> Result<Outcome, u32> {
        let (id, hash) = self.maglev_pick(s, svc)?;
        let b = self.backends[&id];
        let opening = Opening::new(s.seq, s.tsval);
        let claim = Claim {
            backend: id,
            service: svc.id,
            hash,
            opening,
        };
        let (src, port, idx) = self
            .claim_snat_port(s, &b, &claim)
            .ok_or(counters::DROP_SNAT_EXHAUSTED)?;
        self.enter(
            &s.key,
            FlowState {
                backend: id as u16,
                snat_port: port,
                flags: flow::new_flow_flags(s.flags),
                snat_idx: idx as u8,
                packets: 1,
                last_seen_ns: self.now,
                first_seen_ns: self.now,
                ..FlowState::default()
            },
        );
        Ok(to_backend(&b, src, port))
    }

    // -- SNAT ports --------------------------------------------------------------------

    /// SNAT address `idx` toward backend `b`: 0 is the backend's own.
    fn snat_address(&self, b: &Backend, family: u8, idx: u32) -> Option<[u32; 4]> {
        if idx == 0 {
            return Some(b.snat_addr);
        }
        self.snat_addrs
            .get(&(snat_addrs_base(family) + idx))
            .copied()
    }

    /// The client's previous flow's SNAT address index and port (network order), if it
    /// went to the same backend and the port is in the range.
    fn previous(&self, s: &Segment, backend: u32) -> Option<(u32, u16)> {
        let f = self.lookup(&s.key)?;
        let port = u16::from_be(f.fs.snat_port);
        (u32::from(f.fs.backend) == backend
            && u32::from(f.fs.snat_idx) < self.cfg.snat_addr_count(s.key.family).max(1)
            && port >= self.cfg.snat_port_min
            && port <= self.cfg.snat_port_max)
            .then_some((u32::from(f.fs.snat_idx), f.fs.snat_port))
    }

    /// Claims an address and port toward `b`: the previous one's address first, else
    /// the one the flow hash picks; the family's other addresses in turn while one has
    /// none free. Returns the address, the port (network order) and the address index.
    fn claim_snat_port(
        &mut self,
        s: &Segment,
        b: &Backend,
        c: &Claim,
    ) -> Option<([u32; 4], u16, u32)> {
        let n = self.cfg.snat_addr_count(s.key.family).max(1);
        let previous = self.previous(s, c.backend);
        let first = match previous {
            Some((idx, _)) => idx,
            None => c.hash.rotate_right(8) % n,
        };
        let mut named = previous.map(|(_, port)| port);
        for k in 0..n {
            let idx = (first + k) % n;
            if let Some(src) = self.snat_address(b, s.key.family, idx)
                && let Some(port) = self.claim_on(s, b, c, src, idx, named)
            {
                return Some((src, port, idx));
            }
            named = None;
        }
        None
    }

    /// A port on address `src` (index `idx`): `named` first if in the range, then the
    /// flow's search (`snat_probe::Search`; the walk alone while a failed sweep holds);
    /// a taken port is taken over when [`Model::reusable`].
    fn claim_on(
        &mut self,
        s: &Segment,
        b: &Backend,
        c: &Claim,
        src: [u32; 4],
        idx: u32,
        named: Option<u16>,
    ) -> Option<u16> {
        let (min, max) = (self.cfg.snat_port_min, self.cfg.snat_port_max);
        if min == 0 || max < min {
            return None;
        }
        let range = u32::from(max - min) + 1;
        let named = named
            .map(u16::from_be)
            .filter(|p| (min..=max).contains(p))
            .map(|p| u32::from(p - min));
        let mut search = Search::new(c.hash, idx, range, named);
        let entry = ReverseNat {
            flow: s.key,
            backend: c.backend as u16,
            syn_acks: flow::SynAcks::sent(self.now),
            service_id: c.service,
        };
        let held = self
            .swept
            .get(&(c.backend, idx))
            .is_some_and(|&at| self.now.saturating_sub(at) < SWEEP_HOLD_NS);
        let candidates = if held { PROBES } else { search.candidates() };
        for i in 0..candidates {
            let port = (min + search.offset(i) as u16).to_be();
            let key = FlowKey {
                src: b.addr,
                dst: src,
                sport: b.port,
                dport: port,
                proto: s.key.proto,
                family: s.key.family,
                _pad: [0; 2],
            };
            let free = match self.reverse.get(&key) {
                None => true,
                Some(old) => self.reusable(old, s, port, idx, &c.opening),
            };
            if free {
                self.reverse.insert(key, entry);
                return Some(port);
            }
        }
        if !held {
            self.swept.insert((c.backend, idx), self.now);
        }
        None
    }

    /// Whether the reverse entry `old` holding `port` on address `idx` may go to the
    /// segment's new flow (`flow::entry_free_for`).
    fn reusable(
        &self,
        old: &ReverseNat,
        s: &Segment,
        port: u16,
        idx: u32,
        opening: &Opening,
    ) -> bool {
        let f = self.lookup(&old.flow).filter(|f| {
            f.fs.backend == old.backend && f.fs.snat_port == port && u32::from(f.fs.snat_idx) == idx
        });
        flow::entry_free_for(
            old.syn_acks,
            f.as_ref().map(|f| &f.fs),
            old.flow == s.key,
            &self.cfg,
            self.now,
            opening,
        )
    }

    // -- Backend → SNAT address --------------------------------------------------------

    /// Sets the reverse entry `key`'s `syn_acks` (see `flow::SynAcks`).
    fn set_syn_acks(&mut self, key: &FlowKey, at: u16) {
        if let Some(r) = self.reverse.get_mut(key) {
            r.syn_acks = at;
        }
    }

    fn reverse(&mut self, s: &Segment) -> Outcome {
        let pass = Outcome::new(Decision::Pass, counters::PASS);
        if !self.in_snat_range(&s.key) {
            return pass;
        }
        let Some(r) = self.reverse.get(&s.key).copied() else {
            return pass;
        };
        if s.ttl <= 1 {
            return pass;
        }
        let flow = self.lookup(&r.flow).filter(|f| f.fs.backend == r.backend);
        let syn_ack = s.flags & (tcp::SYN | tcp::ACK) == tcp::SYN | tcp::ACK;
        if syn_ack && flow::stale_syn_ack(flow.as_ref().map(|f| &f.fs), &self.cfg, self.now) {
            if let Some(mut f) = flow {
                f.fs.flags |= FLOW_RST;
                self.store(&r.flow, &f);
            }
            self.set_syn_acks(&s.key, 0);
            return reset(s, counters::DROP_STALE_BACKEND_ANSWER);
        }
        if let Some(mut f) = flow {
            let before = f.fs.flags;
            f.fs.last_seen_ns = self.now;
            f.fs.packets += 1;
            f.fs.flags |= flow::backend_segment(before, s.flags);
            if s.flags & tcp::FIN != 0
                && before & (FLOW_FIN_CLIENT | FLOW_FIN_BACKEND) == FLOW_FIN_CLIENT
                && flow::simultaneous_close(s.ack, f.fs.close_seq)
            {
                f.fs.flags |= FLOW_BACKEND_TIME_WAIT;
            }
            self.store(&r.flow, &f);
            let syn_acks = flow::syn_acks_after(r.syn_acks, f.fs.flags, syn_ack, self.now);
            self.set_syn_acks(&s.key, syn_acks);
        }
        Outcome::new(
            Decision::Forward {
                toward: Toward::Client,
                src: r.flow.dst,
                sport: r.flow.dport,
                dst: r.flow.src,
                dport: r.flow.sport,
            },
            counters::FWD_OUT,
        )
    }
}

/// The service key a packet to `k`'s destination would match.
fn vip_of(k: &FlowKey) -> VipKey {
    VipKey {
        addr: k.dst,
        port: k.dport,
        proto: k.proto,
        family: k.family,
    }
}

/// What a new flow has chosen so far, for the SNAT claim.
struct Claim {
    backend: u32,
    service: u32,
    hash: u32,
    opening: Opening,
}

/// Sent on to backend `b` from `src:port` (network order).
fn to_backend(b: &Backend, src: [u32; 4], port: u16) -> Outcome {
    Outcome::new(
        Decision::Forward {
            toward: Toward::Backend,
            src,
            sport: port,
            dst: b.addr,
            dport: b.port,
        },
        counters::FWD_IN,
    )
}

/// A refused segment's answer: a RST with `ACCESS_RESET`, else nothing.
fn refusal(s: &Segment, svc: &Service) -> Outcome {
    if svc.access & ACCESS_RESET != 0 {
        reset(s, counters::DROP_DENIED)
    } else {
        Outcome::new(Decision::Drop, counters::DROP_DENIED)
    }
}

/// The RST that answers a segment no one takes (RFC 9293 3.10.7.1), counted under
/// `counter`: none to a RST.
fn reset(s: &Segment, counter: u32) -> Outcome {
    let decision = if s.flags & tcp::RST != 0 {
        Decision::Drop
    } else if s.flags & tcp::ACK != 0 {
        Decision::Reset {
            seq: s.ack,
            ack: 0,
            flags: tcp::RST,
        }
    } else {
        Decision::Reset {
            seq: 0,
            ack: s.end(),
            flags: tcp::RST | tcp::ACK,
        }
    };
    Outcome::new(decision, counter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::{FAMILY_V4, PROTO_TCP};

    const RING: u32 = 7;

    /// A nat service on 198.18.2.1:80 whose table names backend 3 (198.18.0.10:8080,
    /// SNAT address 198.18.0.1) in every slot.
    fn model() -> Model {
        let word = |a: [u8; 4]| [u32::from_ne_bytes(a), 0, 0, 0];
        let vip = VipKey {
            addr: word([198, 18, 2, 1]),
            port: 80u16.to_be(),
            proto: PROTO_TCP,
            family: FAMILY_V4,
        };
        let mut m = Model {
            now: 1 << 40,
            cfg: GlobalConfig {
                idle_timeout_ns: 300_000_000_000,
                closed_timeout_ns: 10_000_000_000,
                half_open_timeout_ns: 5_000_000_000,
                ring_size: RING,
                snat_port_min: 40_000,
                snat_port_max: 40_999,
                ..GlobalConfig::default()
            },
            ..Model::default()
        };
        m.services.insert(
            vip,
            Service {
                id: 0,
                table_offset: 0,
                mode: MODE_NAT,
                ..Service::default()
            },
        );
        m.maglev.extend((0..RING).map(|slot| (slot, 3)));
        m.backends.insert(
            3,
            Backend {
                addr: word([198, 18, 0, 10]),
                snat_addr: word([198, 18, 0, 1]),
                port: 8080u16.to_be(),
                family: FAMILY_V4,
                state: BACKEND_UP,
                service_id: 0,
            },
        );
        m
    }

    fn client(flags: u8) -> Segment {
        Segment {
            key: FlowKey {
                src: [u32::from_ne_bytes([198, 18, 1, 2]), 0, 0, 0],
                dst: [u32::from_ne_bytes([198, 18, 2, 1]), 0, 0, 0],
                sport: 1234u16.to_be(),
                dport: 80u16.to_be(),
                proto: PROTO_TCP,
                family: FAMILY_V4,
                _pad: [0; 2],
            },
            flags,
            seq: 100,
            ack: 7,
            payload_len: 0,
            tsval: None,
            ttl: 64,
        }
    }

    /// The backend's reply to the client's flow through SNAT port `port`.
    fn reply(m: &Model, port: u16, flags: u8) -> Segment {
        let b = m.backends[&3];
        Segment {
            key: FlowKey {
                src: b.addr,
                dst: b.snat_addr,
                sport: b.port,
                dport: port,
                proto: PROTO_TCP,
                family: FAMILY_V4,
                _pad: [0; 2],
            },
            ..client(flags)
        }
    }

    #[test]
    fn a_handshake_goes_from_half_open_to_established_through_one_snat_port() {
        let mut m = model();
        let syn = client(tcp::SYN);
        let out = m.packet(&syn).unwrap();
        let Decision::Forward { sport, .. } = out.decision else {
            panic!("{out:?}");
        };
        assert_eq!(out.counter, counters::FWD_IN);
        assert!(m.flows.is_empty() && m.half_open.contains_key(&syn.key));
        assert_eq!(m.reverse.len(), 1);
        let back = m.packet(&reply(&m, sport, tcp::SYN | tcp::ACK)).unwrap();
        assert_eq!(back.counter, counters::FWD_OUT);
        let out = m.packet(&client(tcp::ACK)).unwrap();
        assert!(matches!(out.decision, Decision::Forward { sport: s, .. } if s == sport));
        let fs = m.flows[&syn.key];
        assert!(fs.flags & FLOW_ESTABLISHED != 0, "{fs:?}");
        assert_eq!(fs.packets, 3);
    }

    #[test]
    fn no_backend_answers_a_syn_with_a_rst_and_a_rst_with_nothing() {
        let mut m = model();
        m.backends.get_mut(&3).unwrap().state = crate::maps::BACKEND_DOWN;
        let out = m.packet(&client(tcp::SYN)).unwrap();
        assert_eq!(
            out.decision,
            Decision::Reset {
                seq: 0,
                ack: 101,
                flags: tcp::RST | tcp::ACK
            }
        );
        let out = m.packet(&client(tcp::RST)).unwrap();
        assert_eq!(out.decision, Decision::Drop);
        assert_eq!(out.counter, counters::DROP_NO_BACKEND);
        assert!(m.half_open.is_empty() && m.reverse.is_empty());
    }

    #[test]
    fn an_aged_half_open_flow_is_gone_and_its_port_taken_again() {
        let mut m = model();
        let syn = client(tcp::SYN);
        let Decision::Forward { sport, .. } = m.packet(&syn).unwrap().decision else {
            panic!("forwarded");
        };
        m.age(&syn.key, 6_000_000_000);
        // An ACK of the expired flow is picked up as a new, established flow, on the
        // same port: the old entry no longer holds it.
        let out = m.packet(&client(tcp::ACK)).unwrap();
        assert!(matches!(out.decision, Decision::Forward { sport: s, .. } if s == sport));
        assert_eq!(m.flows[&syn.key].packets, 1);
    }
}
