//! Verdicts: every packet ends in a [`Verdict`] (XDP action + the one `COUNTERS` index
//! of `lb_common::counters` it bumps), turned into the action at the single exit point
//! [`finish`].

use aya_ebpf::bindings::xdp_action;
use lb_common::counters;

use crate::{maps::COUNTERS, traffic::Dir};

/// What happens to a packet: an XDP action and the counter that says why.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(transparent)]
pub struct Verdict(u32);

impl Verdict {
    #[inline(always)]
    pub const fn new(action: u32, counter: u32) -> Self {
        Verdict((counter << 8) | action)
    }

    /// Passed to the kernel untouched: not ours.
    pub const PASS: Verdict = Verdict::new(xdp_action::XDP_PASS, counters::PASS);

    /// Dropped, counted under `counter`.
    #[inline(always)]
    pub const fn drop(counter: u32) -> Self {
        Verdict::new(xdp_action::XDP_DROP, counter)
    }

    /// Passed to the kernel, counted under `counter`.
    #[inline(always)]
    pub const fn pass(counter: u32) -> Self {
        Verdict::new(xdp_action::XDP_PASS, counter)
    }

    /// Sent back out of the interface it arrived on (`XDP_TX`), counted under `counter`.
    #[inline(always)]
    pub const fn tx(counter: u32) -> Self {
        Verdict::new(xdp_action::XDP_TX, counter)
    }

    /// The same action counted under `to` instead, if it was counted under `from`.
    #[inline(always)]
    pub const fn recount(self, from: u32, to: u32) -> Self {
        if self.counter() == from {
            Verdict::new(self.action(), to)
        } else {
            self
        }
    }

    #[inline(always)]
    pub const fn action(self) -> u32 {
        self.0 & 0xff
    }

    #[inline(always)]
    pub const fn counter(self) -> u32 {
        self.0 >> 8
    }
}

/// What the forward and reverse paths decide: a packet to send on through `fib::send`
/// (toward `dir`, counted as `counter`), or its verdict already. The one call of
/// `fib::send` is in `dispatch`: the verifier then checks the route out once for every
/// path, not once per path that reaches it (it cannot merge states across call sites).
#[derive(Clone, Copy)]
pub enum Step {
    Send {
        dir: Dir,
        counter: u32,
    },
    /// A DSR packet to encapsulate toward its backend (`fib::send_encapsulated`).
    Encap {
        counter: u32,
    },
    Done(Verdict),
}

impl Step {
    /// Forwarded toward the backend, counted as such.
    pub const IN: Step = Step::Send {
        dir: Dir::In,
        counter: counters::FWD_IN,
    };
    /// Encapsulated toward the backend, counted as forwarded in.
    pub const ENCAP: Step = Step::Encap {
        counter: counters::FWD_IN,
    };
    /// Forwarded toward the client, counted as such.
    pub const OUT: Step = Step::Send {
        dir: Dir::Out,
        counter: counters::FWD_OUT,
    };
}

/// The single exit point: bumps the verdict's counter, returns its action.
#[inline(always)]
pub fn finish(v: Verdict) -> u32 {
    if let Some(c) = COUNTERS.get_ptr_mut(v.counter()) {
        // SAFETY: the pointer is this CPU's slot of a per-CPU array, valid for the whole
        // program run, and no other program instance runs on this CPU meanwhile.
        unsafe { *c += 1 };
    }
    v.action()
}
