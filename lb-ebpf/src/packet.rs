//! The one way the programs touch packet bytes: [`ptr_at`] checks an access against
//! `data_end`, and a [`Cursor`] walks the headers with it (check, advance, return the
//! next header as a `network-types` view).

use aya_ebpf::{bindings::xdp_md, programs::XdpContext};
use core::mem::size_of;

/// The context pointer, read with a volatile load so that the context field loads
/// below stay in the function that uses them. verifier: otherwise LLVM may hoist the
/// 32-bit `data`/`data_end` loads into the caller of an `#[inline(never)]` function and
/// zero-extend them in the callee, and the verifier rejects any arithmetic on packet
/// pointers before a bounds check (a plain 32-bit context load needs no extension).
#[inline(always)]
fn raw(ctx: &XdpContext) -> *mut xdp_md {
    // SAFETY: `ctx` is a valid reference; reading its field has no other precondition.
    unsafe { core::ptr::addr_of!(ctx.ctx).read_volatile() }
}

/// Start of the packet.
#[inline(always)]
fn data(ctx: &XdpContext) -> usize {
    // SAFETY: the context pointer is valid for the whole program run.
    unsafe { (*raw(ctx)).data as usize }
}

/// End of the packet.
#[inline(always)]
fn data_end(ctx: &XdpContext) -> usize {
    // SAFETY: as in `data`.
    unsafe { (*raw(ctx)).data_end as usize }
}

/// Length of the frame in bytes.
#[inline(always)]
pub fn frame_len(ctx: &XdpContext) -> usize {
    data_end(ctx) - data(ctx)
}

/// A pointer to a `T` at `off` bytes into the packet, if the whole `T` is inside it.
/// `T` is a header view or plain bytes: read and write it unaligned.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    let start = data(ctx);
    let end = data_end(ctx);
    if start + off + size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *mut T)
}

/// Walks a packet's headers front to back.
pub struct Cursor {
    off: usize,
}

impl Cursor {
    /// At the start of the frame.
    #[inline(always)]
    pub fn new() -> Self {
        Cursor { off: 0 }
    }

    /// At `off` bytes into the frame: for a header whose offset an earlier parse found.
    #[inline(always)]
    pub fn at(off: usize) -> Self {
        Cursor { off }
    }

    /// Offset of the next header.
    #[inline(always)]
    pub fn offset(&self) -> usize {
        self.off
    }

    /// The header `T` at the cursor, which then moves past it; `None` (and the cursor
    /// stays) if the packet ends before the header does.
    #[inline(always)]
    pub fn next<T>(&mut self, ctx: &XdpContext) -> Option<*mut T> {
        let p = ptr_at::<T>(ctx, self.off)?;
        self.off += size_of::<T>();
        Some(p)
    }

    /// Skips the `len` bytes that follow a header whose length field said so (IPv4
    /// options); the caller has validated `len` against the header's own bounds, so
    /// nothing is read here and the next [`Cursor::next`] checks the packet's end.
    #[inline(always)]
    pub fn skip(&mut self, len: usize) {
        self.off += len;
    }
}
