//! Who may change what through the admin API, end to end: the Unix socket (`lb ctl`'s
//! default) serves everything and is root's alone (0600, or 0660 with `--admin-group`);
//! over TCP anyone may read, but a change (POST) is refused without `--admin-token-file`
//! (403, nothing changed), needs the right bearer token with one (401 otherwise); a token
//! file anyone may read stops lb from starting. Bad clients do not hurt it: a 10 MB body
//! is refused (413) and 50 idle connections leave `/metrics` answering within a second.
//!
//! Root, curl, python3, the `lb` binary and the eBPF object are required (a missing one
//! fails); the tests run one at a time (the lock in [`Bed`]).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use lb_tests::admin::{self, ADMIN};
use lb_tests::bed::Bed;
use lb_tests::bg::Bg;
use lb_tests::topology::{BACKEND_NAMES, Kind};

const SERVICE: &str = "default";
const TOKEN: &str = "lb-test-token-4f0c9a2e7d1b";

fn all_named() -> Vec<(&'static str, u32)> {
    BACKEND_NAMES.iter().map(|n| (*n, 1)).collect()
}

/// The admin socket of the daemon in the bed's LB namespace: named by the namespace's
/// inode.
fn socket_path(bed: &Bed) -> PathBuf {
    let inode = std::fs::metadata(bed.topo.lb.path()).unwrap().ino();
    PathBuf::from(format!("/run/lb/netns-{inode}-admin.sock"))
}

/// b1's weight as the API lists it.
fn weight(d: &lb_tests::Daemon, bed: &Bed) -> u64 {
    let s = admin::service(d, SERVICE).unwrap();
    s.backend(&bed.addr("b1")).unwrap().weight
}

/// `POST /api/v1/backends/weight` over TCP setting b1's weight, with `auth` headers.
fn post_weight(bed: &Bed, w: u32, auth: &[&str]) -> (u16, String) {
    let body = format!(
        r#"{{"service":"{SERVICE}","addr":"{}","weight":{w}}}"#,
        bed.addr("b1")
    );
    let mut args = vec!["-X", "POST", "-H", "Content-Type: application/json"];
    args.extend_from_slice(auth);
    args.extend_from_slice(&["--data-binary", &body]);
    admin::curl(
        &bed.topo.lb,
        &args,
        &format!("http://{ADMIN}/api/v1/backends/weight"),
    )
    .unwrap()
}

/// Without a token file a change over TCP is refused (403) and nothing changes; the
/// socket, root's alone, takes it; a 10 MB body is refused (413); 50 idle connections
/// leave `/metrics` answering within a second.
#[test]
fn tcp_is_read_only_without_a_token_and_the_socket_is_roots() {
    let bed = Bed::new(Kind::TwoArmed);
    let d = bed.start(&bed.args(&all_named(), &[]));
    let sock = socket_path(&bed);
    let meta = std::fs::metadata(&sock).unwrap_or_else(|e| panic!("{}: {e}", sock.display()));
    assert_eq!(
        (meta.permissions().mode() & 0o777, meta.uid(), meta.gid()),
        (0o600, 0, 0),
        "{}",
        sock.display()
    );

    let (code, body) = post_weight(&bed, 5, &[]);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("admin socket"), "{body}");
    assert_eq!(weight(&d, &bed), 1, "a refused change changed nothing");
    let (code, _) = admin::get(&bed.topo.lb, "/api/v1/services").unwrap();
    assert_eq!(code, 200, "reads stay open over TCP");

    // lb ctl goes through the socket by default.
    admin::ctl(&d, &["weight", SERVICE, &bed.addr("b1"), "3"]).unwrap();
    assert_eq!(weight(&d, &bed), 3);

    // A 10 MB body, over the socket (which may change things): refused, nothing read.
    let big = bed.topo.path("big-body");
    std::fs::write(&big, vec![b'x'; 10 << 20]).unwrap();
    let (code, body) = admin::curl(
        &bed.topo.lb,
        &[
            "--unix-socket",
            &sock.display().to_string(),
            "-X",
            "POST",
            "--data-binary",
            &format!("@{}", big.display()),
        ],
        "http://lb/api/v1/backends/weight",
    )
    .unwrap();
    assert_eq!(code, 413, "{body}");
    assert_eq!(weight(&d, &bed), 3);

    // 50 idle connections to the TCP port, sending nothing.
    let mut idle = bed.topo.lb.command("python3");
    idle.args([
        "-c",
        "import socket, sys, time\n\
         s = [socket.create_connection(('127.0.0.1', 9100)) for _ in range(50)]\n\
         print('open', flush=True)\n\
         time.sleep(20)\n",
    ]);
    let mut idle = Bg::spawn(idle, &bed.topo.path("idle.log")).unwrap();
    let opened = lb_tests::netns::wait_until(Duration::from_secs(5), || {
        Ok(idle.output().contains("open"))
    });
    assert!(
        opened,
        "the idle connections did not open: {}",
        idle.output()
    );
    let t = Instant::now();
    let (code, body) = admin::get(&bed.topo.lb, "/metrics").unwrap();
    let took = t.elapsed();
    assert_eq!(code, 200, "{body}");
    assert!(
        took < Duration::from_secs(1),
        "/metrics took {took:?} with 50 idle connections open"
    );
    assert!(idle.running(), "the idle connections were closed early");
    idle.stop(Duration::from_secs(1)).unwrap();
    bed.stop(d);
    assert!(!sock.exists(), "the socket file is removed on stop");
}

/// With a token file a change over TCP needs `Authorization: Bearer TOKEN`: none or a
/// wrong one is refused (401) and changes nothing, the right one applies, as does
/// `lb ctl --admin ... --token-file`. `--admin-group` opens the socket to a group (0660).
/// A token file anyone may read stops lb from starting.
#[test]
fn tcp_changes_need_the_token_of_the_token_file() {
    let bed = Bed::new(Kind::TwoArmed);
    let file = bed.topo.path("admin-token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let token_flag = ["--admin-token-file", file.to_str().unwrap()];
    let mut refused = bed
        .topo
        .spawn_lb(
            &bed.lb,
            lb_tests::Launch::IpNetnsExec,
            &bed.args(&all_named(), &token_flag),
            "refused.log",
        )
        .unwrap();
    let status = refused.wait_exit(Duration::from_secs(10)).unwrap();
    assert!(
        !status.success(),
        "lb started with a world-readable token file"
    );
    refused.expect_log(&["--admin-token-file", "anyone on the host can read it"]);

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut flags = token_flag.to_vec();
    flags.extend_from_slice(&["--admin-group", "root"]);
    let d = bed.start(&bed.args(&all_named(), &flags));
    let meta = std::fs::metadata(socket_path(&bed)).unwrap();
    assert_eq!((meta.permissions().mode() & 0o777, meta.gid()), (0o660, 0));

    for auth in [
        vec![],
        vec!["-H", "Authorization: Bearer lb-test-token-4f0c9a2e7d1c"],
        vec!["-H", "Authorization: Basic bGI6bGI="],
    ] {
        let (code, body) = post_weight(&bed, 7, &auth);
        assert_eq!(code, 401, "{auth:?}: {body}");
        assert_eq!(weight(&d, &bed), 1, "{auth:?} changed the weight");
    }
    let right = format!("Authorization: Bearer {TOKEN}");
    let (code, body) = post_weight(&bed, 7, &["-H", &right]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(weight(&d, &bed), 7);

    let out = admin::ctl(
        &d,
        &[
            "--admin",
            ADMIN,
            "--token-file",
            file.to_str().unwrap(),
            "weight",
            SERVICE,
            &bed.addr("b1"),
            "2",
        ],
    )
    .unwrap();
    assert!(out.stdout.contains("weight 7 -> 2"), "{out}");
    let out = admin::ctl_any(
        &d,
        &["--admin", ADMIN, "weight", SERVICE, &bed.addr("b1"), "4"],
    )
    .unwrap();
    assert_ne!(out.code, Some(0), "{out}");
    assert!(out.stderr.contains("admin token"), "{out}");
    assert_eq!(weight(&d, &bed), 2);
    bed.stop(d);
}
