//! A network namespace per test, so the tests' programs, maps, routes and sockets touch
//! nothing of the host's and parallel tests do not collide.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Runs a command that must succeed (the tests need root and iproute2).
pub fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?} (is iproute2 installed?): {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed (tests need root): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A named network namespace with loopback up, deleted on drop (also when the test
/// panics).
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A namespace named `PREFIX-PID-N`.
    pub fn new(prefix: &str) -> Netns {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.ip("link set lo up");
        ns
    }

    pub fn file(&self) -> File {
        File::open(format!("/run/netns/{}", self.name)).expect("open netns file")
    }

    /// Moves the calling thread into the namespace (each test runs on its own thread).
    pub fn enter(&self) {
        let f = self.file();
        // SAFETY: setns only changes this thread's network namespace; the fd is valid.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
    }

    /// `ip -n NAME ARGS`.
    pub fn ip(&self, args: &str) {
        let mut v = vec!["ip", "-n", &self.name];
        v.extend(args.split_whitespace());
        sh(&v);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
