//! The differential fuzzer of the XDP program: random packet sequences through the
//! loaded program (BPF_PROG_TEST_RUN, [`TestRun`]) and through the reference model
//! (`lb_common::model`), compared after every packet: the action, the output frame
//! (decoded, so its checksums are checked from scratch), the counter bumped, and the
//! flow, half-open and reverse NAT entries the packet touched; every table whole at the
//! end of each episode.
//!
//! A run is a series of episodes of up to [`EPISODE`] events from empty tables: a
//! client pool of a few ports per family (so ports are reused, flows closed and opened
//! again on the same tuple), the backends' replies to the ports the model says the
//! flows hold, backends going down, draining and up, flows ageing past their
//! timeouts, and allowlists coming into force and going. Some episodes start with a
//! service's SNAT ranges all but full (held by other live flows), so new flows search
//! them whole and find the last free ports or none. An episode that diverges is
//! shrunk (events dropped one at a time while it still diverges) and returned as a
//! readable reproduction.

use std::collections::HashMap;
use std::fmt;

use std::net::IpAddr;

use lb_common::maps::{
    ACCESS_CUT_ESTABLISHED, ACCESS_LIST, ACCESS_RESET, BACKEND_DOWN, BACKEND_DRAINING, BACKEND_UP,
    FAMILY_V4, FAMILY_V6, FlowKey, FlowState, MODE_DNAT, MODE_NAT, PROTO_TCP, REPLIES_ANY_PORT,
    REPLIES_NO_VIP, ReverseNat, VipKey,
};
use lb_common::model::{AllowRange, Decision, Model, Parsed, Segment, Toward, parse};
use lb_user::fuzz::Rng;

use crate::packet::{Packet, decode, flags::*};
use crate::test_run::{
    Action, BACKEND_MACS, CLIENT_MAC, LB0_MAC, LB1_MAC, Plan, SNAT_MAX, SNAT_MIN, TestRun,
    Timeouts, live_holder, plan4, plan6, reverse_entry, rst_for,
};

/// Events per episode.
pub const EPISODE: usize = 120;
/// Client ports per family: few, so tuples are reused.
const PORTS: [u16; 5] = [1001, 1002, 1003, 1004, 1005];

/// One step of a sequence.
#[derive(Clone, Debug)]
pub enum Event {
    /// A client segment to the family's VIP from `port`.
    Client { svc: usize, port: u16, seg: Seg },
    /// Backend `backend`'s segment to SNAT port `port`.
    Backend {
        svc: usize,
        backend: usize,
        port: u16,
        seg: Seg,
    },
    /// Backend `backend` of the family's service changes state (`BACKEND_*`).
    SetBackend {
        svc: usize,
        backend: usize,
        state: u8,
    },
    /// The flow from client port `port` ages by `ms` milliseconds without a packet.
    Age { svc: usize, port: u16, ms: u64 },
    /// The family's service gets `ACCESS_*` bits `access`, its allowlist holding the
    /// client's address or not (it always holds a range without it).
    SetAccess {
        svc: usize,
        access: u8,
        listed: bool,
    },
    /// Every SNAT port toward backend `backend` of a `nat` service but those in `free`
    /// is held by another client's live, established flow (see [`crowd_key`]): new flows
    /// to that backend search the whole range, and find one of `free` or none.
    Crowd {
        svc: usize,
        backend: usize,
        free: Vec<u16>,
    },
    /// The global settings' `replies` bits become `bits` (`REPLIES_*`): with
    /// `REPLIES_NO_VIP` alone the established fast path takes a segment to a SNAT port
    /// for a reply without asking `SERVICES` (true here: every VIP is on port 80, below
    /// the range), which must change nothing the model sees; without `REPLIES_ANY_PORT`
    /// the `dnat` service's replies go unseen, in the model as in the program.
    Replies { bits: u8 },
}

/// One episode in this many starts with its own `replies` bits ([`Event::Replies`]);
/// the others keep the daemon's (`REPLIES_ANY_PORT`, for the `dnat` service).
const REPLIES_EVERY: usize = 2;

/// One episode in this many starts with both backends of a `nat` service crowded
/// ([`Event::Crowd`]): the only way the few clients of an episode reach a nearly full
/// SNAT range, and so the sweep of the whole range and its hold.
const CROWDED_EVERY: usize = 12;

/// The range every service's allowlist holds, which the clients are not in.
const OTHERS: [&str; SERVICES] = ["198.18.9.0/24", "fd00:9::/64", "198.18.9.0/24"];

/// The services: IPv4 `nat`, IPv6 `nat` and IPv4 `dnat` (whose backends are the IPv4
/// ones, under ids of its own).
const SERVICES: usize = 3;

/// Which of the services is `dnat`.
const DNAT: usize = 2;

/// The plans of the services.
fn plans() -> [Plan; SERVICES] {
    let p4 = plan4();
    let dnat = Plan {
        vip: [198, 18, 2, 3].into(),
        service: 2,
        ids: [4, 5],
        ..p4
    };
    [p4, plan6(), dnat]
}

/// Ages (ms) an [`Event::Age`] gives a flow: past the backend's TIME_WAIT (60 s) only,
/// past the half-open timeout, past the closed one, past every one (the timeouts are
/// [`TIMEOUTS`]). No sum of them under 800 s comes within 5 s of a timeout, so the
/// episode's own milliseconds of real time and the program's coarse clock (a tick of a
/// few ms) never decide an expiry the model decides otherwise.
const AGES_MS: [u64; 4] = [93_700, 211_300, 419_100, 719_300];

/// The uptime (s) below which flows are not aged: the program's clock counts from boot,
/// so an entry cannot be made older than that; above it, an entry whose ages add up to
/// more than the uptime is still older than every timeout in the program as in the
/// model.
const AGEING_UPTIME: u64 = 740;

/// Timeouts far from every sum of [`AGES_MS`] and from the length of an episode.
const TIMEOUTS: Timeouts = Timeouts {
    idle: "600s",
    closed: "300s",
    half_open: "120s",
};

/// The model's clock: far enough from 0 that entries can age by any sum of [`AGES_MS`].
const EPOCH_NS: u64 = 1 << 50;

/// The TCP fields a generated segment varies, and how its frame is bent.
#[derive(Clone, Copy, Debug)]
pub struct Seg {
    pub flags: u8,
    pub seq: u32,
    pub ack: u32,
    pub payload: usize,
    pub tsval: Option<u32>,
    pub ttl: u8,
    pub mangle: Mangle,
}

/// What is done to a segment's frame beyond its TCP fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mangle {
    None,
    /// An 802.1Q tag with this TCI.
    Vlan(u16),
    /// IPv4 options of this many 4-byte words (NOPs, then an end); nothing for IPv6.
    IpOptions(u8),
    /// An IPv4 fragment with the ports (more fragments), or one after it; nothing for
    /// IPv6.
    FirstFragment,
    LaterFragment,
    /// The frame cut after this many bytes (at least the Ethernet header's 14).
    Truncate(usize),
    /// The IP length field this much more than the packet's.
    LongIpLength(u16),
    /// The TCP data offset set to this many words (fewer than the header's 5).
    ShortDataOffset(u8),
}

/// Where the program and the model parted.
#[derive(Debug)]
pub struct Divergence {
    /// Index of the event.
    pub at: usize,
    pub what: String,
}

/// A minimal sequence that diverges, for the failure message.
pub struct Reproduction {
    pub events: Vec<Event>,
    pub divergence: Divergence,
    /// Whether the sequence diverges again when replayed from empty tables; if not,
    /// something outside the events decided it.
    pub alone: bool,
    /// The episode it came from (0 first) and the packets run before it.
    pub episode: u64,
    pub after_packets: u64,
}

impl fmt::Display for Reproduction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "episode {} (after {} packets): {} events from empty tables diverge at event {}{}: {}",
            self.episode,
            self.after_packets,
            self.events.len(),
            self.divergence.at,
            if self.alone {
                ""
            } else {
                " (but not when replayed again from empty tables: what decided it lies \
                 outside the events, such as the clock or state the tables do not show)"
            },
            self.divergence.what
        )?;
        for (i, e) in self.events.iter().enumerate() {
            writeln!(f, "  {i:3}: {}", describe(e))?;
        }
        Ok(())
    }
}

/// The fuzzer: one loaded program with a `nat` service per family.
pub struct Differential {
    lb: TestRun,
    plans: [Plan; SERVICES],
    /// Packets run so far.
    pub packets: u64,
    /// How many packets ended under each counter: what the run covered.
    pub outcomes: std::collections::BTreeMap<&'static str, u64>,
    /// The [`AGES_MS`] this machine's uptime allows (none below [`AGEING_UPTIME`]).
    pub ages_ms: Vec<u64>,
    /// The model of the program as loaded (backends up, tables empty), which every
    /// episode starts from.
    start: Model,
}

impl Default for Differential {
    fn default() -> Self {
        Differential::new()
    }
}

impl Differential {
    /// Loads the program (see [`load`]).
    pub fn new() -> Differential {
        let plans = plans();
        let (lb, start) = load(&plans);
        Differential {
            start,
            lb,
            plans,
            packets: 0,
            outcomes: Default::default(),
            ages_ms: if uptime_secs() >= AGEING_UPTIME {
                AGES_MS.to_vec()
            } else {
                Vec::new()
            },
        }
    }

    /// Runs episodes from `seed` until `packets` packets have run; the first divergence,
    /// shrunk, is returned.
    pub fn run(&mut self, seed: u64, packets: u64) -> Result<(), Reproduction> {
        let mut rng = Rng(seed | 1);
        let mut episode = 0;
        while self.packets < packets {
            let events = self.generate(&mut rng);
            let before = self.packets;
            if let Err(d) = self.replay(&events) {
                let mut r = self.shrink(events, d);
                r.episode = episode;
                r.after_packets = before;
                return Err(r);
            }
            episode += 1;
        }
        Ok(())
    }

    /// Runs `events` from empty tables and backends up; the first divergence.
    pub fn replay(&mut self, events: &[Event]) -> Result<(), Divergence> {
        self.lb.clear_flow_tables();
        let mut model = self.model();
        self.lb.set_replies(model.cfg.replies);
        for p in self.plans {
            for i in 0..2 {
                self.lb.backend_up(&p, i);
            }
            set_access(&mut self.lb, &mut model, &p, 0, false);
        }
        let mut tally: HashMap<u32, u64> = HashMap::new();
        let before = self.lb.counters();
        for (at, e) in events.iter().enumerate() {
            let fail = |what: String| Divergence { at, what };
            match *e {
                Event::SetBackend {
                    svc,
                    backend,
                    state,
                } => {
                    let p = self.plans[svc];
                    match state {
                        BACKEND_UP => self.lb.backend_up(&p, backend),
                        BACKEND_DOWN => self.lb.backend_down(&p, backend),
                        _ => self.lb.backend_draining(&p, backend),
                    }
                    let id = p.ids[backend];
                    let b = model.backends.get_mut(&id).expect("a backend of the plan");
                    b.state = state;
                }
                Event::SetAccess {
                    svc,
                    access,
                    listed,
                } => {
                    let p = self.plans[svc];
                    set_access(&mut self.lb, &mut model, &p, access, listed);
                }
                Event::Crowd {
                    svc,
                    backend,
                    ref free,
                } => {
                    let p = self.plans[svc];
                    for (port, other) in crowd(&mut model, &p, backend, free) {
                        self.lb.live_flow_holding(&p, backend, port, other);
                    }
                }
                Event::Replies { bits } => {
                    self.lb.set_replies(bits);
                    model.cfg.replies = bits;
                }
                Event::Age { svc, port, ms } => {
                    let k = self.plans[svc].client_key(port);
                    self.lb.age_flow(k, ms * 1_000_000);
                    model.age(&k, ms * 1_000_000);
                }
                Event::Client { svc, port, seg } => {
                    let p = self.plans[svc];
                    let input = client_packet(&p, port, &seg);
                    let c = self
                        .step(&mut model, &p, &input, seg.mangle, true)
                        .map_err(fail)?;
                    *tally.entry(c).or_default() += 1;
                }
                Event::Backend {
                    svc,
                    backend,
                    port,
                    seg,
                } => {
                    let p = self.plans[svc];
                    let input = backend_packet(&p, backend, port, &seg);
                    let c = self
                        .step(&mut model, &p, &input, seg.mangle, false)
                        .map_err(fail)?;
                    *tally.entry(c).or_default() += 1;
                }
            }
        }
        let end = |what: String| Divergence {
            at: events.len(),
            what,
        };
        compare_tables(&model, &self.lb.flow_tables()).map_err(end)?;
        let after = self.lb.counters();
        for (i, (a, b)) in after.iter().zip(&before).enumerate() {
            let want = tally.get(&(i as u32)).copied().unwrap_or(0);
            if a - b != want {
                return Err(end(format!(
                    "counter {} moved by {} over the episode, the model says {want}",
                    lb_common::counters::TABLE[i].name,
                    a - b
                )));
            }
        }
        Ok(())
    }

    /// One packet through both; the counter the model says it bumps.
    fn step(
        &mut self,
        model: &mut Model,
        p: &Plan,
        input: &Packet,
        mangle: Mangle,
        from_client: bool,
    ) -> Result<u32, String> {
        let frame = bent(input, mangle);
        let input = &reshaped(input, mangle);
        let want = model
            .frame(&frame)
            .ok_or("a packet outside the model's scope")?;
        let (action, out) = if from_client {
            self.lb.from_client(&frame)
        } else {
            self.lb.from_backend(&frame)
        };
        self.packets += 1;
        let name = lb_common::counters::TABLE[want.counter as usize].name;
        *self.outcomes.entry(name).or_default() += 1;
        let expected = match want.decision {
            Decision::Pass => (Action::Pass, None),
            Decision::Drop => (Action::Drop, None),
            Decision::Reset { seq, ack, flags } => {
                (Action::Tx, Some(rst_for(input, seq, ack, flags)))
            }
            Decision::Forward {
                toward,
                src,
                sport,
                dst,
                dport,
            } => (
                Action::Redirect,
                Some(forwarded(p, input, toward, src, sport, dst, dport)),
            ),
        };
        let program = format!("program: {action:?}, model: {want:?}");
        let what = format!("{} ({mangle:?})", summary(input));
        if action != expected.0 {
            return Err(format!("{what}: action differs; {program}"));
        }
        if want.decision == Decision::Pass && out != frame {
            return Err(format!("{what}: a passed frame was changed; {program}"));
        }
        if let Some(frame) = expected.1 {
            let got = decode(&out).map_err(|e| format!("{what}: output {e:#}"))?;
            if got != frame {
                return Err(format!(
                    "{what}: output frame differs; {program}\n  program: {}\n  model:   {}",
                    brief(&got),
                    brief(&frame)
                ));
            }
        }
        if let Parsed::Tcp(seg) = parse(&frame) {
            self.compare_touched(model, &seg, &want.decision)?;
        }
        Ok(want.counter)
    }

    /// The entries the packet may have touched: its flow (the client's, or the one its
    /// reverse entry names) in both flow tables, and the reverse entry of a forwarded
    /// client packet.
    fn compare_touched(
        &mut self,
        model: &Model,
        seg: &Segment,
        d: &Decision,
    ) -> Result<(), String> {
        let flow_key = match model.reverse.get(&seg.key) {
            Some(r) => r.flow,
            None => seg.key,
        };
        let entries = [
            ("flow", self.lb.flow_table_entry(flow_key), &model.flows),
            (
                "half-open flow",
                self.lb.half_open(flow_key),
                &model.half_open,
            ),
        ];
        for (what, program, table) in entries {
            let modelled = table.get(&flow_key).copied();
            compare_entry(what, &flow_key, program, modelled, same_flow)?;
        }
        if let Decision::Forward {
            toward: Toward::Backend,
            src,
            sport,
            dst,
            dport,
        } = *d
        {
            let rkey = FlowKey {
                src: dst,
                dst: src,
                sport: dport,
                dport: sport,
                proto: PROTO_TCP,
                family: seg.key.family,
                _pad: [0; 2],
            };
            compare_entry(
                "reverse entry",
                &rkey,
                self.lb.reverse(rkey),
                model.reverse.get(&rkey).copied(),
                same_reverse,
            )?;
        }
        Ok(())
    }

    /// An episode: mostly client segments on a few ports, backend replies on the ports
    /// the flows hold (or any port of the range), and now and then an allowlist change,
    /// a flow ageing or a backend changing state.
    fn generate(&mut self, rng: &mut Rng) -> Vec<Event> {
        let mut g = Generator::default();
        // The model decides which ports flows hold; it runs beside the generator.
        let mut model = self.model();
        let mut events = Vec::with_capacity(EPISODE + 3);
        if rng.below(REPLIES_EVERY) == 0 {
            let bits = [0, REPLIES_NO_VIP, REPLIES_ANY_PORT | REPLIES_NO_VIP][rng.below(3)];
            model.cfg.replies = bits;
            events.push(Event::Replies { bits });
        }
        if rng.below(CROWDED_EVERY) == 0 {
            let svc = rng.below(DNAT);
            for backend in 0..2 {
                let range = usize::from(SNAT_MAX - SNAT_MIN) + 1;
                let free = (0..rng.below(3))
                    .map(|_| SNAT_MIN + rng.below(range) as u16)
                    .collect();
                let e = Event::Crowd { svc, backend, free };
                if let Event::Crowd { free, .. } = &e {
                    crowd(&mut model, &self.plans[svc], backend, free);
                }
                events.push(e);
            }
        }
        for _ in 0..EPISODE {
            let svc = rng.below(SERVICES);
            let p = self.plans[svc];
            let roll = rng.below(100);
            let e = if roll < 2 {
                let access = [
                    0,
                    ACCESS_LIST,
                    ACCESS_LIST | ACCESS_RESET,
                    ACCESS_LIST | ACCESS_CUT_ESTABLISHED,
                    ACCESS_LIST | ACCESS_RESET | ACCESS_CUT_ESTABLISHED,
                ][rng.below(5)];
                let listed = rng.below(2) == 0;
                model_access(&mut model, &p, access, listed);
                Event::SetAccess {
                    svc,
                    access,
                    listed,
                }
            } else if roll < 5 && !self.ages_ms.is_empty() {
                let port = PORTS[rng.below(PORTS.len())];
                let ms = self.ages_ms[rng.below(self.ages_ms.len())];
                model.age(&p.client_key(port), ms * 1_000_000);
                Event::Age { svc, port, ms }
            } else if roll < 8 {
                let state = [BACKEND_UP, BACKEND_DOWN, BACKEND_DRAINING][rng.below(3)];
                let backend = rng.below(2);
                if let Some(b) = model.backends.get_mut(&p.ids[backend]) {
                    b.state = state;
                }
                Event::SetBackend {
                    svc,
                    backend,
                    state,
                }
            } else if roll < 34 {
                g.backend(rng, &model, &p, svc)
            } else {
                g.client(rng, svc)
            };
            let seg = match &e {
                Event::Client { port, seg, .. } => Some(client_packet(&p, *port, seg)),
                Event::Backend {
                    backend, port, seg, ..
                } => Some(backend_packet(&p, *backend, *port, seg)),
                Event::SetBackend { .. }
                | Event::Age { .. }
                | Event::SetAccess { .. }
                | Event::Crowd { .. }
                | Event::Replies { .. } => None,
            };
            if let (Some(input), Event::Client { seg, .. } | Event::Backend { seg, .. }) = (seg, &e)
            {
                model.frame(&bent(&input, seg.mangle));
            }
            events.push(e);
        }
        events
    }

    /// The model of the loaded program, its clock at [`EPOCH_NS`].
    fn model(&self) -> Model {
        self.start.clone()
    }

    /// Drops events one at a time, keeping each drop after which the sequence still
    /// diverges (anywhere); the events after the divergence go first.
    fn shrink(&mut self, mut events: Vec<Event>, mut d: Divergence) -> Reproduction {
        events.truncate(d.at + 1);
        let mut i = events.len();
        while i > 0 {
            i -= 1;
            if events.len() == 1 {
                break;
            }
            let mut fewer = events.clone();
            fewer.remove(i);
            if let Err(e) = self.replay(&fewer) {
                fewer.truncate(e.at + 1);
                events = fewer;
                d = e;
                i = i.min(events.len());
            }
        }
        // The reproduction's own divergence, from empty tables.
        let again = self.replay(&events).err();
        Reproduction {
            alone: again.is_some(),
            divergence: again.unwrap_or(d),
            events,
            episode: 0,
            after_packets: 0,
        }
    }
}

/// The per-tuple sequence and timestamp clocks of the generated clients, so that a new
/// SYN on a reused port is sometimes after the old connection and sometimes not.
#[derive(Default)]
struct Generator {
    next_seq: HashMap<(usize, u16), u32>,
    ts: HashMap<(usize, u16), u32>,
}

impl Generator {
    fn client(&mut self, rng: &mut Rng, svc: usize) -> Event {
        let port = PORTS[rng.below(PORTS.len())];
        let flags = [
            SYN,
            SYN,
            ACK,
            ACK,
            PSH | ACK,
            PSH | ACK,
            FIN | ACK,
            RST,
            RST | ACK,
            SYN | ACK,
            FIN,
        ][rng.below(11)];
        let next = self.next_seq.entry((svc, port)).or_insert(0x1000_0000);
        let seq = if flags & SYN != 0 {
            // A new connection's ISN: after the old one's end, before it, or anywhere.
            match rng.below(5) {
                0..=2 => next.wrapping_add(1 + rng.below(100_000) as u32),
                3 => next.wrapping_sub(1 + rng.below(1000) as u32),
                _ => rng.next_u64() as u32,
            }
        } else {
            *next
        };
        let payload = if flags & (SYN | RST) != 0 || rng.below(2) == 0 {
            0
        } else {
            1 + rng.below(200)
        };
        let end = seq
            .wrapping_add(payload as u32)
            .wrapping_add(u32::from(flags & (SYN | FIN) != 0));
        *next = end;
        let clock = self.ts.entry((svc, port)).or_insert(1000);
        let tsval = match rng.below(10) {
            0 | 1 => None,
            2 => Some(clock.wrapping_sub(rng.below(50) as u32)),
            3 => Some(*clock),
            _ => {
                *clock = clock.wrapping_add(1 + rng.below(100) as u32);
                Some(*clock)
            }
        };
        Event::Client {
            svc,
            port,
            seg: Seg {
                flags,
                seq,
                ack: rng.next_u64() as u32,
                payload,
                tsval,
                ttl: if rng.below(40) == 0 { 1 } else { 64 },
                mangle: mangle(rng),
            },
        }
    }

    fn backend(&mut self, rng: &mut Rng, model: &Model, p: &Plan, svc: usize) -> Event {
        let mut held: Vec<(&FlowKey, &ReverseNat)> = model
            .reverse
            .iter()
            .filter(|(_, r)| r.service_id == p.service)
            .collect();
        held.sort_by_key(|(k, _)| (k.src, k.dport));
        let (backend, port, close_seq) = match held.get(rng.below(held.len() + 1)) {
            Some((k, r)) => {
                let backend = p
                    .ids
                    .iter()
                    .position(|id| *id == u32::from(r.backend))
                    .unwrap_or(0);
                let close = model
                    .flows
                    .get(&r.flow)
                    .or(model.half_open.get(&r.flow))
                    .map_or(0, |fs| fs.close_seq);
                (backend, u16::from_be(k.dport), close)
            }
            None if svc == DNAT => (rng.below(2), PORTS[rng.below(PORTS.len())], 0),
            None => (
                rng.below(2),
                SNAT_MIN + rng.below(usize::from(SNAT_MAX - SNAT_MIN) + 1) as u16,
                0,
            ),
        };
        let flags = [
            SYN | ACK,
            SYN | ACK,
            ACK,
            PSH | ACK,
            PSH | ACK,
            FIN | ACK,
            RST,
            RST | ACK,
        ][rng.below(8)];
        // A FIN that acknowledges the client's FIN, or one sent before it arrived.
        let ack = match rng.below(3) {
            0 => close_seq,
            1 => close_seq.wrapping_sub(1),
            _ => rng.next_u64() as u32,
        };
        Event::Backend {
            svc,
            backend,
            port,
            seg: Seg {
                flags,
                seq: rng.next_u64() as u32,
                ack,
                payload: if flags & PSH != 0 {
                    1 + rng.below(200)
                } else {
                    0
                },
                tsval: (rng.below(4) != 0).then(|| rng.next_u64() as u32),
                ttl: if rng.below(40) == 0 { 1 } else { 64 },
                mangle: mangle(rng),
            },
        }
    }
}

/// The program with a `nat` service for each plan, timeouts far beyond any episode
/// (see [`TIMEOUTS`]), SYN cookies off (the model's scope) and [`OTHERS`] in the
/// allowlists (not yet in force), and its model.
fn load(plans: &[Plan; SERVICES]) -> (TestRun, Model) {
    let mut lb = TestRun::new();
    lb.set_timeouts(TIMEOUTS);
    lb.set_syn_cookies("off");
    let mut allow = Vec::new();
    for (i, (p, others)) in plans.iter().zip(OTHERS).enumerate() {
        lb.service_on_both(p, if i == DNAT { MODE_DNAT } else { MODE_NAT });
        lb.allow(p, &[others], 0);
        allow.push(range(p, others));
    }
    let start = Model {
        now: EPOCH_NS,
        allow,
        ..lb.model()
    };
    (lb, start)
}

/// Enters into `model` what [`Event::Crowd`] holds: for each SNAT port toward backend
/// `i` of `p` but `free`, the flow of [`crowd_key`] as `TestRun::live_flow_holding`
/// writes it into the program's maps, and its reverse entry. Returns the ports and flows,
/// for the program.
fn crowd(model: &mut Model, p: &Plan, i: usize, free: &[u16]) -> Vec<(u16, FlowKey)> {
    let held: Vec<(u16, FlowKey)> = (SNAT_MIN..=SNAT_MAX)
        .filter(|port| !free.contains(port))
        .map(|port| (port, crowd_key(p, i, port)))
        .collect();
    for &(port, other) in &held {
        model.flows.insert(other, live_holder(p, i, port));
        model
            .reverse
            .insert(p.reverse_key(i, port), reverse_entry(p, i, other));
    }
    held
}

/// The flow that holds SNAT port `port` toward backend `i` of `p` in a crowd: the
/// client's own address (the program has its neighbour entry, so replies go out), from
/// a source port of its own per backend and SNAT port, none of [`PORTS`].
fn crowd_key(p: &Plan, i: usize, port: u16) -> FlowKey {
    let range = SNAT_MAX - SNAT_MIN + 1;
    p.client_key(CROWD_PORTS + i as u16 * range + (port - SNAT_MIN))
}

/// The first source port of the crowds' flows.
const CROWD_PORTS: u16 = 10_000;

/// The allowlist range `cidr` of `p`'s service, as the model keeps it.
fn range(p: &Plan, cidr: &str) -> AllowRange {
    let (addr, prefix) = cidr.split_once('/').expect("a CIDR");
    let (family, bytes) = match addr.parse::<IpAddr>().expect("an address") {
        IpAddr::V4(a) => (FAMILY_V4, a.octets().to_vec()),
        IpAddr::V6(a) => (FAMILY_V6, a.octets().to_vec()),
    };
    let mut a = [0u8; 16];
    a[..bytes.len()].copy_from_slice(&bytes);
    AllowRange {
        service: p.service,
        family,
        addr: a,
        prefix: prefix.parse().expect("a prefix length"),
    }
}

/// The client's own address as an allowlist range.
fn client_range(p: &Plan) -> String {
    format!("{}/{}", p.client, if p.client.is_ipv4() { 32 } else { 128 })
}

/// Gives `p`'s service the access bits and lists its client or not, in the program
/// and in the model.
fn set_access(lb: &mut TestRun, model: &mut Model, p: &Plan, access: u8, listed: bool) {
    let client = client_range(p);
    if listed {
        lb.allow(p, &[&client], access);
    } else {
        lb.disallow(p, &[&client]);
        lb.set_access(p, access);
    }
    model_access(model, p, access, listed);
}

/// [`set_access`]'s change to the model alone.
fn model_access(model: &mut Model, p: &Plan, access: u8, listed: bool) {
    let vip = VipKey::from_socket_addr(p.vip_addr());
    if let Some(svc) = model.services.get_mut(&vip) {
        svc.access = access;
    }
    let client = range(p, &client_range(p));
    model.allow.retain(|r| *r != client);
    if listed {
        model.allow.push(client);
    }
}

/// Seconds since boot: the origin of the program's clock.
fn uptime_secs() -> u64 {
    let text = std::fs::read_to_string("/proc/uptime").expect("/proc/uptime");
    let secs: f64 = text
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .expect("/proc/uptime's first field");
    secs as u64
}

/// The client's segment as it arrives on the client side.
fn client_packet(p: &Plan, port: u16, s: &Seg) -> Packet {
    shaped(p.from_client(port, s.flags), s)
}

/// Backend `i`'s segment to SNAT port `port` (a `dnat` service's: to the client's port),
/// as it arrives on the backend side.
fn backend_packet(p: &Plan, i: usize, port: u16, s: &Seg) -> Packet {
    let mut to = p.from_backend(i, port, s.flags);
    if p.service == plans()[DNAT].service {
        to.dst = p.client;
    }
    shaped(to, s)
}

fn shaped(base: Packet, s: &Seg) -> Packet {
    let mut options = vec![2, 4, 0x05, 0xb4]; // MSS 1460
    match s.tsval {
        Some(ts) => {
            options.extend([1, 1, 8, 10]);
            options.extend(ts.to_be_bytes());
            options.extend(0u32.to_be_bytes());
        }
        None => options.extend([1, 1, 4, 2]), // NOP, NOP, SACK permitted
    }
    Packet {
        seq: s.seq,
        ack: s.ack,
        ttl: s.ttl,
        tcp_options: options,
        payload: vec![b'x'; s.payload],
        ..base
    }
}

/// Mostly none; now and then a VLAN tag, IPv4 options, a fragment or a broken frame.
fn mangle(rng: &mut Rng) -> Mangle {
    match rng.below(40) {
        0 => Mangle::Vlan(rng.below(4095) as u16 + 1),
        1 => Mangle::IpOptions(1 + rng.below(10) as u8),
        2 => Mangle::FirstFragment,
        3 => Mangle::LaterFragment,
        4 => Mangle::Truncate(14 + rng.below(80)),
        5 => Mangle::LongIpLength(1 + rng.below(100) as u16),
        6 => Mangle::ShortDataOffset(rng.below(5) as u8),
        _ => Mangle::None,
    }
}

/// `p` with the header changes of `m` (tag, options, fragment fields).
fn reshaped(p: &Packet, m: Mangle) -> Packet {
    let v4 = p.src.is_ipv4();
    let mut p = p.clone();
    match m {
        Mangle::Vlan(tci) => p.vlan = Some(tci),
        Mangle::IpOptions(words) if v4 => {
            p.ip_options = vec![1; usize::from(words) * 4];
            p.ip_options[usize::from(words) * 4 - 1] = 0;
        }
        Mangle::FirstFragment if v4 => p.more_fragments = true,
        Mangle::LaterFragment if v4 => p.frag_offset = 185,
        _ => {}
    }
    p
}

/// `p`'s frame, bent as `m` says.
fn bent(p: &Packet, m: Mangle) -> Vec<u8> {
    let v4 = p.src.is_ipv4();
    let p = reshaped(p, m);
    let mut f = p.build();
    let l3 = if p.vlan.is_some() { 18 } else { 14 };
    let l4 = l3 + if v4 { 20 + p.ip_options.len() } else { 40 };
    match m {
        Mangle::Truncate(n) => f.truncate(n.min(f.len() - 1)),
        Mangle::LongIpLength(more) => {
            let at = if v4 { l3 + 2 } else { l3 + 4 };
            let len = u16::from_be_bytes([f[at], f[at + 1]]).wrapping_add(more);
            f[at..at + 2].copy_from_slice(&len.to_be_bytes());
        }
        Mangle::ShortDataOffset(words) => f[l4 + 12] = (words << 4) | (f[l4 + 12] & 0x0f),
        _ => {}
    }
    f
}

/// `input` rewritten as the model says and sent on toward `toward`: MACs of the next
/// hop, TTL one less.
fn forwarded(
    p: &Plan,
    input: &Packet,
    toward: Toward,
    src: [u32; 4],
    sport: u16,
    dst: [u32; 4],
    dport: u16,
) -> Packet {
    let family = if input.src.is_ipv4() {
        FAMILY_V4
    } else {
        FAMILY_V6
    };
    let ip = |w: [u32; 4]| lb_common::addr::words_to_ip(w, family).expect("an address");
    let (eth_dst, eth_src) = match toward {
        Toward::Backend => {
            let i = p.backend_index(ip(dst)).unwrap_or(0);
            (BACKEND_MACS[i], LB0_MAC)
        }
        Toward::Client => (CLIENT_MAC, LB1_MAC),
    };
    Packet {
        eth_dst,
        eth_src,
        src: ip(src),
        dst: ip(dst),
        sport: u16::from_be(sport),
        dport: u16::from_be(dport),
        ttl: input.ttl - 1,
        ..input.clone()
    }
}

/// A flow entry as the model keeps it: every field but the clock's.
fn same_flow(a: &FlowState, b: &FlowState) -> bool {
    let strip = |f: &FlowState| FlowState {
        last_seen_ns: 0,
        first_seen_ns: 0,
        ..*f
    };
    strip(a) == strip(b)
}

/// A reverse entry as the model keeps it: the SYN-ACK time is each side's own clock,
/// whether one is remembered is what must agree.
fn same_reverse(a: &ReverseNat, b: &ReverseNat) -> bool {
    let held = |r: &ReverseNat| ReverseNat {
        syn_acks: u16::from(r.syn_acks != 0),
        ..*r
    };
    held(a) == held(b)
}

fn compare_entry<V: fmt::Debug>(
    what: &str,
    k: &FlowKey,
    program: Option<V>,
    model: Option<V>,
    same: impl Fn(&V, &V) -> bool,
) -> Result<(), String> {
    let agree = match (&program, &model) {
        (Some(a), Some(b)) => same(a, b),
        (None, None) => true,
        _ => false,
    };
    if agree {
        return Ok(());
    }
    Err(format!(
        "{what} of {}: program {program:?}, model {model:?}",
        tuple(k)
    ))
}

/// Every table, whole.
fn compare_tables(model: &Model, program: &crate::test_run::FlowTables) -> Result<(), String> {
    fn table<V: fmt::Debug + Copy>(
        what: &str,
        program: &HashMap<FlowKey, V>,
        model: &HashMap<FlowKey, V>,
        same: impl Fn(&V, &V) -> bool,
    ) -> Result<(), String> {
        for k in program.keys().chain(model.keys()) {
            compare_entry(
                what,
                k,
                program.get(k).copied(),
                model.get(k).copied(),
                &same,
            )?;
        }
        Ok(())
    }
    table("flow", &program.flows, &model.flows, same_flow)?;
    table(
        "half-open flow",
        &program.half_open,
        &model.half_open,
        same_flow,
    )?;
    table(
        "reverse entry",
        &program.reverse,
        &model.reverse,
        same_reverse,
    )
}

fn tuple(k: &FlowKey) -> String {
    let ip = |w: [u32; 4]| {
        lb_common::addr::words_to_ip(w, k.family).map_or("?".to_string(), |a| a.to_string())
    };
    format!(
        "{}:{} → {}:{}",
        ip(k.src),
        u16::from_be(k.sport),
        ip(k.dst),
        u16::from_be(k.dport)
    )
}

/// A packet's fields with its payload as a length, for a divergence's message.
fn brief(p: &Packet) -> String {
    let without = Packet {
        payload: Vec::new(),
        ..p.clone()
    };
    format!("{without:?} + {} bytes", p.payload.len())
}

fn summary(p: &Packet) -> String {
    format!(
        "{}:{} → {}:{} {} seq {} ack {} len {} ttl {}",
        p.src,
        p.sport,
        p.dst,
        p.dport,
        flag_names(p.flags),
        p.seq,
        p.ack,
        p.payload.len(),
        p.ttl
    )
}

fn describe(e: &Event) -> String {
    let svc = |f: usize| ["v4 nat", "v6 nat", "v4 dnat"][f];
    let seg = |s: &Seg| {
        format!(
            "{} seq {} ack {} len {} ts {:?} ttl {}",
            flag_names(s.flags),
            s.seq,
            s.ack,
            s.payload,
            s.tsval,
            s.ttl
        )
    };
    match e {
        Event::Client {
            svc: f,
            port,
            seg: s,
        } => {
            format!("{} client port {port}: {}", svc(*f), seg(s))
        }
        Event::Backend {
            svc: f,
            backend,
            port,
            seg: s,
        } => format!(
            "{} backend {backend} to SNAT port {port}: {}",
            svc(*f),
            seg(s)
        ),
        Event::SetBackend {
            svc: f,
            backend,
            state,
        } => format!("{} backend {backend} state {state}", svc(*f)),
        Event::Age { svc: f, port, ms } => format!(
            "{} client port {port}: its flow ages {:.1} s",
            svc(*f),
            *ms as f64 / 1000.0
        ),
        Event::SetAccess {
            svc: f,
            access,
            listed,
        } => format!(
            "{} access bits {access:#x}, client {}listed",
            svc(*f),
            if *listed { "" } else { "not " }
        ),
        Event::Crowd {
            svc: f,
            backend,
            free,
        } => format!(
            "{} backend {backend}: every SNAT port held by another live flow but {free:?}",
            svc(*f)
        ),
        Event::Replies { bits } => format!("the global replies bits become {bits:#x}"),
    }
}

fn flag_names(f: u8) -> String {
    let names = [
        (SYN, "SYN"),
        (ACK, "ACK"),
        (PSH, "PSH"),
        (FIN, "FIN"),
        (RST, "RST"),
    ];
    let v: Vec<&str> = names
        .iter()
        .filter(|(b, _)| f & b != 0)
        .map(|(_, n)| *n)
        .collect();
    v.join("|")
}
