//! The XDP SYN proxy's rules: when a VIP's new flows are opened by SYN cookie, what the
//! cookie's SYN-ACK carries besides the cookie, and how a proxied flow's two legs (the
//! client's with the LB, the backend's with the LB) are translated into each other.
//!
//! A SYN cookie (the kernel's `bpf_tcp_raw_gen_syncookie_*`) is the SYN-ACK's sequence
//! number: it proves the ACK that echoes it comes from the client's address, and keeps
//! no state. It cannot hold the client's options, so, as the kernel's own cookies do,
//! the SYN-ACK's TSval carries them ([`ClientOptions`]) and the client echoes them in
//! its TSecr; a client without timestamps gets no window scaling and no SACK, and its
//! MSS is taken as the family's smallest class.
//!
//! Once the cookie is valid the LB sends the backend the client's SYN itself (the
//! client's own sequence numbers and TSvals, so that direction needs no translation)
//! and meanwhile holds the client with a zero window. The backend answers with its own
//! ISN, TSval clock and window scale: from then on the backend's sequence numbers and
//! TSvals are shifted by `FlowState::seq_delta` / `ts_delta` toward the client (and the
//! client's acknowledgments, SACK blocks and TSecrs back), and its windows rescaled.

use crate::maps::FAMILY_V6;

/// `GlobalConfig::syn_cookies`: never, under SYN pressure only, for every new flow.
pub const COOKIES_OFF: u8 = 0;
pub const COOKIES_AUTO: u8 = 1;
pub const COOKIES_ALWAYS: u8 = 2;

/// `FlowState::proxy` bits: opened by a SYN cookie; the backend's leg is not open yet;
/// the client uses timestamps.
pub const PROXY_ON: u8 = 1;
pub const PROXY_PENDING: u8 = 2;
pub const PROXY_CLIENT_TS: u8 = 4;

/// The window scale the LB offers a client that offers one: Linux's for its default
/// receive buffers, so a Linux backend's windows usually pass unchanged.
pub const LB_WSCALE: u8 = 7;
/// The MSS the LB's SYN-ACK offers: what an Ethernet path toward the backends takes.
pub const LB_MSS_V4: u16 = 1460;
pub const LB_MSS_V6: u16 = 1440;
/// The MSS classes a client's MSS is rounded down to (the kernel's syncookie tables):
/// two bits of the TSval say which.
pub const MSS_V4: [u16; 4] = [536, 1300, 1440, 1460];
pub const MSS_V6: [u16; 4] = [1220, 1420, 1440, 8940];
/// [`ClientOptions::wscale`] of a client that offered no window scale.
pub const NO_WSCALE: u8 = 0xf;
/// A SYN's window scale when it has no such option (what [`ClientOptions::of_syn`]
/// takes).
pub const NOT_OFFERED: u8 = 0xff;
/// Low bits of the cookie SYN-ACK's TSval that carry [`ClientOptions`].
pub const TS_OPTION_BITS: u32 = 7;
const TS_OPTION_MASK: u32 = (1 << TS_OPTION_BITS) - 1;
/// The largest window scale (RFC 7323 2.3).
const MAX_WSCALE: u8 = 14;

/// The client's SYN options the LB must give the backend, kept in the cookie SYN-ACK's
/// TSval (and so only for clients with timestamps). Plain integers, no `Option`s: the
/// BPF program must never see LLVM compute on an `Option`'s undefined payload (the
/// verifier refuses to read a register nothing wrote).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientOptions {
    /// Window scale the client offered (at most 14), or [`NO_WSCALE`].
    pub wscale: u8,
    /// The client offered SACK.
    pub sack: bool,
    /// Index of the client's MSS class in the family's table.
    pub mss_class: u8,
}

impl ClientOptions {
    /// The options of a SYN: its MSS (0 if none: TCP's default 536 then) rounded down to
    /// its class, its window scale ([`NOT_OFFERED`] if none; 14 at most).
    #[inline(always)]
    pub fn of_syn(family: u8, mss: u16, wscale: u8, sack: bool) -> Self {
        let table = mss_table(family);
        let mut mss_class = 0;
        let mut i = 1;
        while i < table.len() {
            if mss >= table[i] {
                mss_class = i as u8;
            }
            i += 1;
        }
        ClientOptions {
            wscale: if wscale == NOT_OFFERED {
                NO_WSCALE
            } else {
                wscale.min(MAX_WSCALE)
            },
            sack,
            mss_class,
        }
    }

    /// The window scale the client offered, if any.
    #[inline(always)]
    pub fn wscale(&self) -> Option<u8> {
        if self.wscale > MAX_WSCALE {
            None
        } else {
            Some(self.wscale)
        }
    }

    /// The client's options in the low bits of a TSval.
    #[inline(always)]
    pub fn encode(&self) -> u32 {
        (self.wscale as u32 & 0xf) | (self.sack as u32) << 4 | ((self.mss_class as u32) & 3) << 5
    }

    /// The options a TSecr echoes from [`ClientOptions::encode`].
    #[inline(always)]
    pub fn decode(tsecr: u32) -> Self {
        let ws = (tsecr & 0xf) as u8;
        ClientOptions {
            wscale: if ws > MAX_WSCALE { NO_WSCALE } else { ws },
            sack: tsecr & 0x10 != 0,
            mss_class: ((tsecr >> 5) & 3) as u8,
        }
    }

    /// The MSS the backend is told.
    #[inline(always)]
    pub fn mss(&self, family: u8) -> u16 {
        mss_table(family)[(self.mss_class & 3) as usize]
    }

    /// A client without timestamps: its options cannot come back with its ACK, so it
    /// gets the safe ones (the smallest MSS class, no scaling, no SACK).
    #[inline(always)]
    pub fn without_timestamps() -> Self {
        ClientOptions {
            wscale: NO_WSCALE,
            sack: false,
            mss_class: 0,
        }
    }
}

#[inline(always)]
fn mss_table(family: u8) -> &'static [u16; 4] {
    if family == FAMILY_V6 {
        &MSS_V6
    } else {
        &MSS_V4
    }
}

/// The MSS the LB's SYN-ACK offers for `family`.
#[inline(always)]
pub fn lb_mss(family: u8) -> u16 {
    if family == FAMILY_V6 {
        LB_MSS_V6
    } else {
        LB_MSS_V4
    }
}

/// The TSval of a cookie SYN-ACK sent at `now_ns`: a clock in units of about a
/// millisecond (2^20 ns, as Linux's TSval clock ticks), its low bits replaced by the
/// client's options.
#[inline(always)]
pub fn cookie_tsval(now_ns: u64, opts: &ClientOptions) -> u32 {
    ((now_ns >> 20) as u32 & !TS_OPTION_MASK) | opts.encode()
}

/// A window from the backend (scaled by `backend_shift`) as the client reads it (scaled
/// by `client_shift`, the scale the LB gave it); never more than the field holds.
#[inline(always)]
pub fn rescale_window(win: u16, backend_shift: u8, client_shift: u8) -> u16 {
    let bytes = (win as u64) << (backend_shift.min(MAX_WSCALE));
    let w = bytes >> client_shift.min(MAX_WSCALE);
    if w > u16::MAX as u64 {
        u16::MAX
    } else {
        w as u16
    }
}

/// The scales of a proxied flow in `FlowState::wscale`: the client's view (high nibble),
/// the backend's (low).
#[inline(always)]
pub fn pack_wscale(client_shift: u8, backend_shift: u8) -> u8 {
    (client_shift.min(MAX_WSCALE) << 4) | backend_shift.min(MAX_WSCALE)
}

/// [`pack_wscale`]'s two scales: (client's view, backend's).
#[inline(always)]
pub fn unpack_wscale(w: u8) -> (u8, u8) {
    (w >> 4, w & 0xf)
}

/// One VIP's recent unanswered SYNs, the entry of `SYN_RATE` (indexed by service id):
/// in the current rate window ([`RATE_WINDOW_SHIFT`]) and in the one before, the SYNs
/// that opened a flow or got a cookie less the handshakes completed. Both counts are
/// signed (`i64` in a `u64`): a window's completions may answer the last one's SYNs.
///
/// Real clients answer their SYN-ACKs, so their SYNs cancel out however many there are;
/// a flood's never do. So the count finds a flood the LB takes in below any rate it
/// could set for SYNs alone: on a busy host the LB took a flood of a million SYNs a
/// second in at 20,000-30,000 a second while it opened their flows (its receive ring
/// dropped the rest), under the 50,000 SYNs a second that used to turn cookies on, and
/// let 22,000 flows through to the backends before it saw more.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SynRate {
    pub window: u64,
    pub count: u64,
    pub prev: u64,
}

/// The rate window is 2^26 ns (about 67 ms, a sixteenth of a second): a flood is caught
/// within that, having opened at most a sixteenth of the rate's flows. Each flow let
/// through is a request the backend holds and answers again for up to a minute
/// (`flow::SynAcks`), and a SNAT port: with windows of a second, the bench's flood put
/// tens of thousands through before cookies started, and the backends' repeated
/// SYN-ACKs crowded the real clients' answers out of the LB's receive ring for seconds.
pub const RATE_WINDOW_SHIFT: u32 = 26;

/// The rate window `now_ns` falls in.
#[inline(always)]
pub fn rate_window(now_ns: u64) -> u64 {
    now_ns >> RATE_WINDOW_SHIFT
}

/// Unanswered SYNs a rate window may bring under `rate` a second: its share of the
/// second, rounded up, and at least one (a rate of 1 a second lets one SYN through a
/// window).
#[inline(always)]
pub fn window_allowance(rate: u32) -> u64 {
    let window_ns = 1u64 << RATE_WINDOW_SHIFT;
    (rate as u64 * window_ns).div_ceil(1_000_000_000).max(1)
}

impl SynRate {
    /// Moves the counts on to `now_ns`'s window, if it is a later one.
    #[inline(always)]
    pub fn roll(&mut self, now_ns: u64) {
        let w = rate_window(now_ns);
        if self.window != w {
            self.prev = if self.window.wrapping_add(1) == w {
                self.count
            } else {
                0
            };
            self.count = 0;
            self.window = w;
        }
    }

    /// Whether the VIP's SYNs go unanswered faster than `rate` a second: more than a
    /// window's [`window_allowance`] in this window so far, or in the whole last one (so
    /// cookies stay on for a window after a flood ends, and do not switch off at every
    /// window's start during one).
    #[inline(always)]
    pub fn over(&self, rate: u32) -> bool {
        let allowance = window_allowance(rate) as i64;
        self.count as i64 > allowance || self.prev as i64 > allowance
    }
}

/// How long a source that passed a SYN cookie is trusted: under `auto`, its SYNs open
/// flows as they would without the pressure for this long after its last valid cookie
/// ACK. A spoofed flood never passes one, so only real clients gain it; a client that
/// reconnects often is then spared the cookie's extra round trip through the LB (the
/// backend's leg opened only after the client's ACK) and its flows the translated path.
/// Trust ends on its own: the next SYN after it gets a cookie, and a valid ACK renews it.
pub const TRUST_NS: u64 = 60_000_000_000;

/// The windows of a SNAT port shortage: 2^30 ns, about a second.
const SHORT_WINDOW_SHIFT: u32 = 30;

/// Whether a source whose last valid cookie ACK came at `passed_ns` is still trusted at
/// `now_ns` (see [`TRUST_NS`]) for a VIP whose SNAT ports last ran out in shortage
/// window `short_window` (0: never; see [`short_mark`]): while they are out, in that
/// window and the next, every SYN gets a cookie, so no source can take a port another
/// flow gives back.
#[inline(always)]
pub fn trusted(passed_ns: u64, now_ns: u64, short_window: u64) -> bool {
    let w = now_ns >> SHORT_WINDOW_SHIFT;
    let short = short_window != 0 && w <= short_window && w + 1 >= short_window;
    !short && passed_ns <= now_ns && now_ns - passed_ns < TRUST_NS
}

/// What `PORTS_OUT` holds for a VIP whose SNAT ports ran out at `now_ns`: the last
/// shortage window (about a second) it counts for (this one and the next), never 0.
#[inline(always)]
pub fn short_mark(now_ns: u64) -> u64 {
    (now_ns >> SHORT_WINDOW_SHIFT) + 1
}

/// Whether a new flow's SYN is answered with a cookie under mode `mode`.
#[inline(always)]
pub fn use_cookie(mode: u8, rate: &SynRate, threshold: u32) -> bool {
    match mode {
        COOKIES_ALWAYS => true,
        COOKIES_AUTO => rate.over(threshold),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::FAMILY_V4;

    #[test]
    fn trust_lasts_trust_ns_after_the_cookie() {
        let passed = 5_000_000_000_000;
        assert!(trusted(passed, passed, 0));
        assert!(trusted(passed, passed + TRUST_NS - 1, 0));
        assert!(!trusted(passed, passed + TRUST_NS, 0));
        // A stamp from a later clock than this CPU's (another CPU's, a tick ahead) is
        // trusted only once this clock reaches it.
        assert!(!trusted(passed, passed - 1, 0));
    }

    #[test]
    fn no_trust_while_ports_run_short_and_the_window_after() {
        let passed = 5_000_000_000_000;
        let short_at = passed + 10_000_000_000;
        let mark = short_mark(short_at);
        // The window before the shortage was not short.
        assert!(trusted(passed, short_at - (1 << 30), mark));
        assert!(!trusted(passed, short_at, mark));
        let next = ((short_at >> SHORT_WINDOW_SHIFT) + 1) << SHORT_WINDOW_SHIFT;
        assert!(!trusted(passed, next, mark));
        assert!(trusted(passed, next + (1 << 30), mark));
    }

    #[test]
    fn client_options_round_trip_through_the_tsval() {
        for ws in [NOT_OFFERED, 0, 7, 14] {
            for sack in [false, true] {
                for mss in [0, 536, 1299, 1300, 1460, 9000] {
                    let o = ClientOptions::of_syn(FAMILY_V4, mss, ws, sack);
                    let ts = cookie_tsval(123_456_789_000, &o);
                    assert_eq!(ClientOptions::decode(ts), o, "{ws:?} {sack} {mss}");
                }
            }
        }
    }

    #[test]
    fn the_mss_is_rounded_down_to_its_class_and_never_above_the_clients() {
        let cases = [
            (0, 536),
            (1000, 536),
            (1300, 1300),
            (1459, 1440),
            (1460, 1460),
        ];
        for (mss, want) in cases {
            assert_eq!(
                ClientOptions::of_syn(FAMILY_V4, mss, NOT_OFFERED, false).mss(FAMILY_V4),
                want
            );
        }
        assert_eq!(
            ClientOptions::of_syn(FAMILY_V6, 1440, NOT_OFFERED, false).mss(FAMILY_V6),
            1440
        );
        assert_eq!(ClientOptions::without_timestamps().mss(FAMILY_V6), 1220);
        assert_eq!(
            ClientOptions::of_syn(FAMILY_V4, 1460, 20, true).wscale(),
            Some(14)
        );
        assert_eq!(
            ClientOptions::of_syn(FAMILY_V4, 1460, NOT_OFFERED, true).wscale(),
            None
        );
    }

    #[test]
    fn cookie_tsvals_move_forward_with_the_clock() {
        let o = ClientOptions::of_syn(FAMILY_V4, 1460, 7, true);
        let a = cookie_tsval(10_000_000_000, &o);
        let b = cookie_tsval(10_200_000_000, &o);
        assert!(b > a);
        assert_eq!(a & TS_OPTION_MASK, o.encode());
    }

    #[test]
    fn windows_are_rescaled_and_clamped() {
        assert_eq!(rescale_window(1000, 7, 7), 1000);
        assert_eq!(rescale_window(1000, 9, 7), 4000);
        assert_eq!(rescale_window(1000, 5, 7), 250);
        assert_eq!(rescale_window(65535, 14, 0), u16::MAX);
        // A SYN-ACK's window is never scaled: from 0.
        assert_eq!(rescale_window(64240, 0, 7), 501);
        assert_eq!(unpack_wscale(pack_wscale(7, 9)), (7, 9));
    }

    #[test]
    fn a_window_allows_its_share_of_the_rate_rounded_up() {
        // The default: 50,000 a second are 3,355.4 a window.
        assert_eq!(window_allowance(50_000), 3356);
        assert_eq!(window_allowance(1), 1);
        assert_eq!(window_allowance(15), 2);
        assert_eq!(window_allowance(u32::MAX), 288_230_377);
    }

    #[test]
    fn more_handshakes_than_syns_in_a_window_is_not_a_flood() {
        // The window's completions answer the last window's SYNs: the count goes below
        // zero, which must not read as a huge number of unanswered SYNs.
        let r = SynRate {
            window: 9,
            count: (-40i64) as u64,
            prev: 3,
        };
        assert!(!r.over(1500));
        let r = SynRate {
            prev: (-1i64) as u64,
            ..r
        };
        assert!(!r.over(1));
    }

    #[test]
    fn cookies_start_over_the_rate_and_stay_for_a_window_after() {
        let window = 1u64 << RATE_WINDOW_SHIFT;
        // 1,500 SYNs a second are 100.66 in a window of 2^26 ns: 101 pass.
        let rate = 1500;
        assert_eq!(window_allowance(rate), 101);
        let mut r = SynRate::default();
        r.roll(5 * window);
        r.count = 101;
        assert!(!use_cookie(COOKIES_AUTO, &r, rate));
        r.count = 102;
        assert!(use_cookie(COOKIES_AUTO, &r, rate));
        // The next window remembers the flood.
        r.roll(6 * window + 1);
        assert_eq!((r.count, r.prev), (0, 102));
        assert!(use_cookie(COOKIES_AUTO, &r, rate));
        // A quiet window later, off again.
        r.roll(7 * window);
        assert!(!use_cookie(COOKIES_AUTO, &r, rate));
        // A gap of several windows forgets everything.
        r.count = 500;
        r.roll(20 * window);
        assert_eq!((r.count, r.prev), (0, 0));
        assert!(use_cookie(COOKIES_ALWAYS, &r, rate));
        assert!(!use_cookie(COOKIES_OFF, &r, 0));
    }
}
