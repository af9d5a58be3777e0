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
/// What `lb` itself runs: `ip` for the routes and addresses it keeps.
const RUN_PACKAGES: &[&str] = &["iproute2"];
/// Tools the tests and the demos drive.
const TEST_PACKAGES: &[&str] = &[
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
/// BIRD runs the router and the LB hosts of the ECMP tests and of `cargo xtask run --
/// demo ecmp`; its package ships a service.
const ROUTING_DEMO_PACKAGES_NO_START: &[&str] = &["bird2"];
/// FRR: the tests check the shipped dist/frr/frr.conf with its vtysh; ships services.
const ROUTING_TEST_PACKAGES_NO_START: &[&str] = &["frr"];
/// The PROXY protocol receivers of the proxy-v2 tests (tests/tests/proxy.rs): nginx (its
/// Debian build has ssl, realip and `proxy_protocol` listeners) and HAProxy, which ship
/// services, so installed without starting them.
const PROXY_TEST_PACKAGES_NO_START: &[&str] = &["nginx", "haproxy"];
/// The proxy-v2 tests' certificate tool and WebSocket library (for Debian's python3).
const PROXY_TEST_PACKAGES: &[&str] = &["openssl", "python3-websockets"];
/// The DNS server of the discovery tests (tests/tests/dns.rs): dnsmasq without the
/// package that runs it as the host's service.
const DNS_TEST_PACKAGES: &[&str] = &["dnsmasq-base"];
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

/// What a command needs installed, each tier including the ones before it: building
/// (and running `lb`) needs the toolchain and iproute2 alone; the built-in demos need
/// the test bed's tools; testing needs everything the tests and the bench (its smoke test
/// runs in `cargo xtask test`) drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tier {
    Build,
    Demo,
    Test,
}

/// A group of packages and how it is installed.
struct Group {
    tier: Tier,
    packages: &'static [&'static str],
    how: How,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum How {
    Plain,
    /// Their packages ship services: installed without starting them.
    NoStart,
    /// A failure is only a warning.
    Optional,
}

const GROUPS: &[Group] = &[
    Group {
        tier: Tier::Build,
        packages: BUILD_PACKAGES,
        how: How::Plain,
    },
    Group {
        tier: Tier::Build,
        packages: RUN_PACKAGES,
        how: How::Plain,
    },
    Group {
        tier: Tier::Demo,
        packages: TEST_PACKAGES,
        how: How::Plain,
    },
    Group {
        tier: Tier::Demo,
        packages: ROUTING_DEMO_PACKAGES_NO_START,
        how: How::NoStart,
    },
    Group {
        tier: Tier::Test,
        packages: ROUTING_TEST_PACKAGES_NO_START,
        how: How::NoStart,
    },
    Group {
        tier: Tier::Test,
        packages: TEST_PACKAGES_NO_START,
        how: How::NoStart,
    },
    Group {
        tier: Tier::Test,
        packages: PROXY_TEST_PACKAGES_NO_START,
        how: How::NoStart,
    },
    Group {
        tier: Tier::Test,
        packages: PROXY_TEST_PACKAGES,
        how: How::Plain,
    },
    Group {
        tier: Tier::Test,
        packages: DNS_TEST_PACKAGES,
        how: How::Plain,
    },
    Group {
        tier: Tier::Test,
        packages: BENCH_PACKAGES_NO_START,
        how: How::NoStart,
    },
    Group {
        tier: Tier::Test,
        packages: BENCH_PACKAGES,
        how: How::Plain,
    },
    Group {
        tier: Tier::Test,
        packages: BENCH_OPTIONAL,
        how: How::Optional,
    },
];

/// The packages `tier` installs (besides the LLVM of the eBPF toolchain), as
/// [`ensure`] goes through them.
#[cfg(test)]
fn packages(tier: Tier) -> Vec<&'static str> {
    GROUPS
        .iter()
        .filter(|g| g.tier <= tier)
        .flat_map(|g| g.packages.iter().copied())
        .collect()
}

/// Installs what `tier` needs, idempotently.
pub fn ensure(tier: Tier) -> anyhow::Result<()> {
    for g in GROUPS.iter().filter(|g| g.tier <= tier) {
        match g.how {
            How::Plain => apt_install(&owned(g.packages))?,
            How::NoStart => apt_install_without_starting(g.packages)?,
            How::Optional => {
                if let Err(e) = apt_install(&owned(g.packages)) {
                    eprintln!(
                        "warning: optional {:?} not installed (profiling only): {e:#}",
                        g.packages
                    );
                }
            }
        }
    }
    let llvm = llvm_major()?;
    apt_install(&[format!("llvm-{llvm}-dev"), format!("libpolly-{llvm}-dev")])?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A build (or `cargo xtask run -- ARGS`) on a production LB host installs nothing
    /// the tests, the demos or the bench use.
    #[test]
    fn a_build_installs_no_test_or_bench_tool() {
        let build = packages(Tier::Build);
        for tool in packages(Tier::Test)
            .into_iter()
            .filter(|p| !BUILD_PACKAGES.contains(p) && !RUN_PACKAGES.contains(p))
        {
            assert!(!build.contains(&tool), "a build would install {tool}");
        }
        for tool in [
            "nginx",
            "haproxy",
            "prometheus",
            "wrk",
            "iperf3",
            "bird2",
            "curl",
        ] {
            assert!(!build.contains(&tool), "a build would install {tool}");
            assert!(packages(Tier::Test).contains(&tool), "testing needs {tool}");
        }
        assert!(
            packages(Tier::Demo).contains(&"bird2"),
            "the ECMP demo runs BIRD"
        );
        assert!(!packages(Tier::Demo).contains(&"haproxy"));
        assert!(
            !packages(Tier::Demo).contains(&"frr"),
            "only the tests check FRR's file"
        );
    }
}
