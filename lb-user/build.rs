//! Embeds the eBPF object built by `cargo xtask build` so `lb` is a single file.
//!
//! The object is not built here (it needs the Debian rustc-web toolchain that xtask
//! drives). When it is missing, an empty object is embedded so host `cargo test` and
//! `clippy` still work; `lb` then refuses to start and says to run `cargo xtask build`.

use std::{env, fs, path::PathBuf};

fn main() {
    let manifest =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let object = env::var_os("LB_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../target/bpf/bpfel-unknown-none/release/lb-ebpf"));
    println!("cargo:rerun-if-env-changed=LB_EBPF_OBJECT");
    println!("cargo:rerun-if-changed={}", object.display());
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("lb-ebpf.o");
    let bytes = fs::read(&object).unwrap_or_default();
    if bytes.is_empty() {
        println!(
            "cargo:warning=eBPF object {} not found: embedding an empty one (run `cargo xtask build`)",
            object.display()
        );
    }
    fs::write(&out, bytes).expect("write embedded object");
}
