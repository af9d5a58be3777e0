//! `cargo xtask run`'s built-in demo runs to completion and leaves nothing behind.
//! Needs root, `lb` and the eBPF object, like the e2e tests.

#[test]
fn demo_runs_and_cleans_up() {
    lb_tests::require_root().unwrap();
    let lb = lb_tests::lb_bin().unwrap();
    let object = lb_tests::bpf_object().unwrap();
    let prefix = format!("lbt{}-", std::process::id());
    lb_tests::demo::run(&lb, &object).unwrap_or_else(|e| panic!("demo failed: {e:#}"));
    let left = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "demo left namespaces behind: {left:?}");
}
