//! The built-in demo without xtask: `cargo run -p lb-tests --example demo` (as root,
//! after `cargo xtask build` and `cargo build --release -p lb-user`).

fn main() -> anyhow::Result<()> {
    let lb = lb_tests::lb_bin()?;
    let object = lb_tests::bpf_object()?;
    lb_tests::demo::run(&lb, &object)
}
