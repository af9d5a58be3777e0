//! Active health checks of backends: what a check is (`spec`), one check (`probe`, over
//! TLS for https checks: `tls`), the rise/fall state machine (`tracker`) and one checker
//! task per backend (`scheduler`).
//!
//! Why it looks like this:
//! - The engine knows nothing of the maps. It reports each check result on a channel; the
//!   control plane feeds the results to a `Tracker` per backend and, on a transition,
//!   updates the backend state and rebuilds the Maglev table. That keeps the probe
//!   testable against plain sockets and the map logic testable without sockets.
//! - Every backend has its own task, so a check that hangs until its timeout never delays
//!   the checks of other backends, and the first check of each backend is offset by a
//!   hash of its key (`spread_delay`), so a service's backends are not probed in
//!   lock-step (the thundering herd that ELB and HAProxy also avoid).
//! - Semantics follow ELB/HAProxy: `fall` consecutive failures take a backend down,
//!   `rise` consecutive successes bring it back; any result of the other kind resets the
//!   streak.
//! - `HealthConfig::preamble` is the seam for PROXY-protocol services: a backend that
//!   listens with proxy_protocol rejects a connection that does not start with a PROXY
//!   header, so its checks send one (LOCAL in v2) first.

pub mod histogram;
pub mod path;
pub mod probe;
pub mod scheduler;
pub mod spec;
pub mod tls;
pub mod tracker;

#[cfg(test)]
mod test_servers;

pub use probe::{FailReason, check_once};
pub use scheduler::{CheckResult, spawn_checker, spread_delay};
pub use spec::{HealthCheck, HealthConfig};
pub use tracker::{Tracker, Transition};
