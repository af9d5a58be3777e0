//! The eBPF object embedded at build time (see build.rs).

/// An 8-byte aligned wrapper, because the ELF parser reads the object in place.
#[repr(C, align(8))]
struct Aligned<T: ?Sized>(T);

static OBJECT: &Aligned<[u8]> = &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/lb-ebpf.o")));

/// The object's bytes; empty when `lb` was built before the eBPF object existed.
pub fn bytes() -> &'static [u8] {
    &OBJECT.0
}

/// The object's bytes, or an error telling how to build it.
pub fn require() -> Result<&'static [u8], MissingObject> {
    let b = bytes();
    if b.is_empty() {
        Err(MissingObject)
    } else {
        Ok(b)
    }
}

/// `lb` was compiled without its eBPF object.
#[derive(Debug, thiserror::Error)]
#[error("this lb binary was built without its eBPF object: build it with `cargo xtask build`")]
pub struct MissingObject;
