//! The Debian package (`cargo xtask package`): its control fields, every file it ships,
//! its configuration passing `lb --check`, its unit accepted by systemd, its man pages
//! and bash completion usable. Needs the built `lb` (as every end-to-end test).

use std::path::{Path, PathBuf};
use std::process::Command;

use lb_tests::cmd;
use lb_tests::topology::TempDir;

/// Builds the package from the built `lb` with the xtask binary (cheap: `cargo xtask
/// test` has just built both) and returns its path.
fn package() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = lb_tests::workspace_root();
    let status = Command::new(&cargo)
        .current_dir(&root)
        .args(["build", "--quiet", "-p", "xtask"])
        .status()
        .expect("running cargo");
    assert!(status.success(), "building xtask: {status}");
    let lb = lb_tests::lb_bin().unwrap_or_else(|e| panic!("{e:#}"));
    let out = cmd::run(
        Command::new(root.join("target/debug/xtask"))
            .env("LB_BIN", &lb)
            .args(["package", "--no-build"]),
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let deb = PathBuf::from(out.lines().last().unwrap_or_default().trim());
    assert!(deb.is_file(), "xtask package printed {out:?}");
    deb
}

fn dpkg_deb(args: &[&str], deb: &Path) -> String {
    cmd::run(Command::new("dpkg-deb").args(args).arg(deb)).unwrap_or_else(|e| panic!("{e:#}"))
}

#[test]
fn the_package_ships_a_working_lb() {
    let deb = package();
    let field = |f: &str| {
        dpkg_deb(&["-f"], &deb)
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{f}: ")).map(str::to_string))
    };
    assert_eq!(field("Package").as_deref(), Some("lb"));
    assert_eq!(field("Version").as_deref(), Some(env!("CARGO_PKG_VERSION")));
    assert!(field("Depends").unwrap_or_default().contains("iproute2"));

    let list = dpkg_deb(&["-c"], &deb);
    for file in [
        "./usr/bin/lb",
        "./lib/systemd/system/lb.service",
        "./etc/lb/lb.toml",
        "./usr/share/man/man8/lb.8.gz",
        "./usr/share/man/man8/lb-decap.8.gz",
        "./usr/share/man/man8/lb-ctl-drain.8.gz",
        "./usr/share/bash-completion/completions/lb",
        "./usr/share/zsh/vendor-completions/_lb",
        "./usr/share/fish/vendor_completions.d/lb.fish",
        "./usr/share/doc/lb/README.md",
        "./usr/share/doc/lb/copyright",
        "./usr/share/doc/lb/examples/bird/lb-host.conf",
        "./usr/share/doc/lb/examples/frr/frr.conf",
    ] {
        assert!(
            list.lines().any(|l| l.ends_with(file)),
            "{file} is not in the package:\n{list}"
        );
    }
    assert!(
        list.lines()
            .any(|l| l.starts_with("-rwxr-xr-x root/root") && l.ends_with("./usr/bin/lb")),
        "lb is not an executable owned by root:\n{list}"
    );

    let dir = TempDir::new().unwrap();
    let tree = dir.path().join("tree");
    cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree)).unwrap();
    let control = dir.path().join("control");
    cmd::run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control)).unwrap();
    let conffiles = std::fs::read_to_string(control.join("conffiles")).unwrap();
    assert_eq!(
        conffiles.trim(),
        "/etc/lb/lb.toml",
        "the configuration is a conffile"
    );

    // The shipped configuration passes `lb --check`.
    let lb = tree.join("usr/bin/lb");
    let config = tree.join("etc/lb/lb.toml");
    let out = cmd::output_any(
        Command::new(&lb)
            .arg("--config")
            .arg(&config)
            .arg("--check"),
    )
    .unwrap();
    assert!(
        out.status.success(),
        "lb --check on the packaged lb.toml: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // systemd accepts the unit, which runs the packaged binary.
    let unit_text = std::fs::read_to_string(tree.join("lib/systemd/system/lb.service")).unwrap();
    assert!(
        unit_text.contains("ExecStart=/usr/bin/lb --config /etc/lb/lb.toml"),
        "{unit_text}"
    );
    let unit = dir.path().join("lb.service");
    std::fs::write(
        &unit,
        unit_text.replace("/usr/bin/lb", &lb.to_string_lossy()),
    )
    .unwrap();
    let out = cmd::output_any(Command::new("systemd-analyze").arg("verify").arg(&unit)).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("lb.service"),
        "systemd-analyze verify: {stderr}"
    );

    // The man page is a man page, and documents the flags.
    let page = cmd::run(Command::new("zcat").arg(tree.join("usr/share/man/man8/lb.8.gz"))).unwrap();
    assert!(
        page.starts_with(".ie") || page.contains(".TH lb 8"),
        "{}",
        &page[..200.min(page.len())]
    );
    assert!(
        page.contains("announce\\-table"),
        "lb.8 lacks --announce-table"
    );

    // Sourcing the bash completion registers it for lb.
    let bash = tree.join("usr/share/bash-completion/completions/lb");
    let registered = cmd::run(
        Command::new("bash")
            .arg("-c")
            .arg(format!("source {} && complete -p lb", bash.display())),
    )
    .unwrap();
    assert!(registered.contains("lb"), "{registered}");
}
