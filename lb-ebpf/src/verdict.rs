//! Verdicts: every packet ends in a [`Verdict`] (XDP action + the one `COUNTERS` index
//! of `lb_common::counters` it bumps), turned into the action at the single exit point
//! [`finish`].

use aya_ebpf::bindings::xdp_action;
use lb_common::counters;

use crate::maps::COUNTERS;

/// What happens to a packet: an XDP action and the counter that says why.
#[derive(Clone, Copy)]
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
