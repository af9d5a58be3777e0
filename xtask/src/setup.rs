//! Installs what building and testing need, idempotently: Debian's rustc-web with its
//! library source (the eBPF compiler, see TOOLCHAIN.md), the LLVM of the same major
//! version, bpf-linker built against it, and the tools the tests drive.

use crate::exec::{self, step};
use anyhow::{Context, bail};
use std::process::Command;

/// Packages for the eBPF build (the LLVM dev package is added once rustc-web tells its
/// LLVM major version).
const BUILD_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "libzstd-dev",
    "zlib1g-dev",
];
/// Tools the tests and the demo drive.
const TEST_PACKAGES: &[&str] = &[
    "iproute2",
    "ethtool",
    "curl",
    "python3",
    "bpftool",
    "procps",
    "util-linux",
    "kmod",
];
/// Test tools whose packages also ship a service (the Prometheus server; nftables' unit):
/// installed without starting it, see [`apt_install_without_starting`].
const TEST_PACKAGES_NO_START: &[&str] = &["prometheus", "nftables"];
/// The routing daemons of the ECMP tests and demo (tests/tests/ecmp.rs): BIRD runs the
/// router and the LB hosts; FRR checks the shipped dist/frr/frr.conf. Both ship services.
const ROUTING_TEST_PACKAGES_NO_START: &[&str] = &["bird2", "frr"];
/// The PROXY protocol receivers of the proxy-v2 tests (tests/tests/proxy.rs): nginx (its
/// Debian build has ssl, realip and `proxy_protocol` listeners) and HAProxy, which ship
/// services, so installed without starting them.
const PROXY_TEST_PACKAGES_NO_START: &[&str] = &["nginx", "haproxy"];
/// The proxy-v2 tests' certificate tool and WebSocket library (for Debian's python3).
const PROXY_TEST_PACKAGES: &[&str] = &["openssl", "python3-websockets"];
/// The bench's load balancers and servers (`cargo xtask bench` and its smoke test):
/// HAProxy, nginx with the stream module (Debian builds it as a dynamic module, loaded
/// with `load_module`), iperf3. Their packages ship services too.
const BENCH_PACKAGES_NO_START: &[&str] = &["haproxy", "nginx", "libnginx-mod-stream", "iperf3"];
/// The bench's client and the chart's font.
const BENCH_PACKAGES: &[&str] = &["wrk", "fonts-dejavu-core"];
/// For profiling what limits a figure (`perf`); the bench runs without it.
const BENCH_OPTIONAL: &[&str] = &["linux-perf"];
/// Servers a package's install may start despite the policy, stopped by PID.
const SERVICES: &[&str] = &[
    "prometheus",
    "nginx",
    "haproxy",
    "iperf3",
    "bird",
    "watchfrr",
    "zebra",
    "bgpd",
    "staticd",
];
/// Where Debian's invoke-rc.d looks for a policy; exit status 101 means "do not start".
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Debian's rustc-web installs here (sysroot /usr).
pub const EBPF_RUSTC: &str = "/usr/bin/rustc";

pub fn ensure() -> anyhow::Result<()> {
    let mut wanted: Vec<String> = BUILD_PACKAGES
        .iter()
        .chain(TEST_PACKAGES)
        .map(|s| s.to_string())
        .collect();
    apt_install(&wanted)?;
    apt_install_without_starting(TEST_PACKAGES_NO_START)?;
    apt_install_without_starting(ROUTING_TEST_PACKAGES_NO_START)?;
    apt_install_without_starting(PROXY_TEST_PACKAGES_NO_START)?;
    apt_install(&owned(PROXY_TEST_PACKAGES))?;
    apt_install_without_starting(BENCH_PACKAGES_NO_START)?;
    apt_install(&owned(BENCH_PACKAGES))?;
    if let Err(e) = apt_install(
        &BENCH_OPTIONAL
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>(),
    ) {
        eprintln!("warning: optional {BENCH_OPTIONAL:?} not installed (profiling only): {e:#}");
    }
    let llvm = llvm_major()?;
    wanted = vec![format!("llvm-{llvm}-dev"), format!("libpolly-{llvm}-dev")];
    apt_install(&wanted)?;
    ensure_bpf_linker(llvm)
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// Package names as `apt_install` takes them.
fn owned(pkgs: &[&str]) -> Vec<String> {
    pkgs.iter().map(|s| s.to_string()).collect()
}

fn apt_install(pkgs: &[String]) -> anyhow::Result<()> {
    let missing: Vec<&String> = pkgs.iter().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !exec::is_root() {
        bail!(
            "missing Debian packages {missing:?}: run as root (sudo -E cargo xtask ...) or install them"
        );
    }
    step(&format!(
        "installing Debian packages {missing:?} (once per machine)"
    ));
    exec::run(Command::new("apt-get").args(["update", "-q"]))?;
    exec::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(missing.iter().map(|s| s.as_str())),
    )
}

/// Installs `pkgs` without letting their maintainer scripts start a service: there is no
/// init system here or in CI, but a postinst may still run `/etc/init.d/NAME start`
/// (prometheus's does), which would leave a server running on the host. A temporary
/// policy-rc.d that exits 101 forbids that; it is removed afterwards only if we created
/// it. A server started anyway (by a script that ignores the policy) is stopped by PID.
fn apt_install_without_starting(pkgs: &[&str]) -> anyhow::Result<()> {
    let pkgs = owned(pkgs);
    if pkgs.iter().all(|p| installed(p)) {
        return Ok(());
    }
    let before: Vec<u32> = SERVICES.iter().flat_map(|s| pids_named(s)).collect();
    let created = if std::path::Path::new(POLICY_RC_D).exists() {
        false
    } else if exec::is_root() {
        write_policy_rc_d()?;
        true
    } else {
        false
    };
    let result = apt_install(&pkgs);
    if created {
        std::fs::remove_file(POLICY_RC_D)
            .with_context(|| format!("removing the temporary {POLICY_RC_D}"))?;
    }
    result?;
    let started: Vec<(u32, &str)> = SERVICES
        .iter()
        .flat_map(|s| pids_named(s).into_iter().map(move |p| (p, *s)))
        .filter(|(p, _)| !before.contains(p))
        .collect();
    for (pid, name) in &started {
        step(&format!(
            "stopping the {name} server (pid {pid}) the package's install started"
        ));
        exec::run(Command::new("kill").arg(pid.to_string()))?;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while started.iter().any(|(p, _)| pid_alive(*p)) {
        if std::time::Instant::now() >= deadline {
            bail!("servers started by their packages ({started:?}) did not stop");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Ok(())
}

fn write_policy_rc_d() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(
        POLICY_RC_D,
        "#!/bin/sh\n# Temporary, written by `cargo xtask setup`: start no service.\nexit 101\n",
    )
    .with_context(|| format!("writing {POLICY_RC_D}"))?;
    std::fs::set_permissions(POLICY_RC_D, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {POLICY_RC_D} executable"))
}

/// PIDs of the processes whose command name is `name`.
fn pids_named(name: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name)
        })
        .collect()
}

/// Whether `pid` still runs (exists and is not a zombie).
fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

/// LLVM major version of rustc-web, which bpf-linker must match.
fn llvm_major() -> anyhow::Result<String> {
    let out = exec::output(Command::new(EBPF_RUSTC).arg("-vV"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("LLVM version:"))
        .with_context(|| format!("{EBPF_RUSTC} -vV printed no LLVM version"))?;
    let version = line.trim_start_matches("LLVM version:").trim();
    Ok(version.split('.').next().unwrap_or(version).to_string())
}

fn ensure_bpf_linker(llvm: String) -> anyhow::Result<()> {
    let have = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string());
    if have
        .as_deref()
        .is_some_and(|v| v.contains(BPF_LINKER_VERSION))
    {
        return Ok(());
    }
    step(&format!(
        "installing bpf-linker {BPF_LINKER_VERSION} against LLVM {llvm} (about a minute, once per machine)"
    ));
    let llvm_bin = format!("/usr/lib/llvm-{llvm}/bin");
    let path = format!("{llvm_bin}:{}", std::env::var("PATH").unwrap_or_default());
    exec::run(Command::new("cargo").env("PATH", path).args([
        "install",
        &format!("bpf-linker@{BPF_LINKER_VERSION}"),
        "--locked",
        "--no-default-features",
        "--features",
        &format!("llvm-{llvm}"),
    ]))
}
