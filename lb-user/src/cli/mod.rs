//! Command-line flags (clap). Values are kept as text here and validated by `config`, so
//! flags and the config file share one set of checks and error messages.

pub mod ctl;
pub mod decap;
pub mod docs;
pub mod down;
pub mod explain;
pub mod stats;

use crate::config::{FlagSettings, HealthFlags};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// lb: an XDP/eBPF TCP load balancer. Balances TCP connections to a virtual IP over
/// backends with Maglev consistent hashing, in the kernel's XDP hook.
#[derive(Debug, Parser)]
#[command(name = "lb", version, args_conflicts_with_subcommands = true, after_help = EXAMPLES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

const EXAMPLES: &str = "Examples:
  lb --iface eth0 --vip 198.18.100.1:80 --backend 198.18.1.11:80 --backend 198.18.1.12:80@2
  lb --iface eth0 --vip '[fd00:100::1]:443' --backend '[fd00:1::11]:443' --backend '[fd00:1::12]:443'
  lb --config /etc/lb/lb.toml
  lb stats            (in another shell, same network namespace)
  lb ctl list         (services and backends through the admin API)
  lb ctl drain default 198.18.1.11:80";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the running daemon's counters: per service and backend, and drops by reason.
    /// Refreshes like `top` when printing to a terminal.
    Stats {
        /// Print JSON once instead of a table.
        #[arg(long)]
        json: bool,
        /// Print one snapshot and exit instead of refreshing.
        #[arg(long)]
        once: bool,
        /// Refresh interval of the live view (e.g. 1s, 500ms).
        #[arg(long, value_name = "DURATION", default_value = "1s")]
        interval: String,
    },
    /// Change the running daemon through its admin API (see --admin).
    Ctl(CtlArgs),
    /// On a backend of a DSR service: strip the LB's encapsulation of packets for the
    /// VIPs (an XDP program on --iface), put the VIPs on lo, keep the host from answering
    /// ARP for them; all undone on SIGTERM or SIGINT.
    Decap(decap::DecapArgs),
    /// Take lb out of this network namespace: stop the daemon if one runs, detach the
    /// programs and remove the state directory, routes and records. (Stopping the daemon
    /// alone leaves the data path forwarding, for a restart or upgrade to adopt.)
    Down {
        /// The state directory, if the daemon was started with --state-dir.
        #[arg(long, value_name = "DIR", alias = "pin-dir")]
        state_dir: Option<PathBuf>,
    },
    /// Explain where a client's connection to a VIP goes and why: the flow hash, the
    /// Maglev slot and the backend it names, the flow table's entry if the connection
    /// has one, the service's backends, what its allowlist and the per-source new-flow
    /// limit say of the client. Read from the running data path.
    Explain {
        /// The service's VIP:PORT.
        #[arg(long, value_name = "IP:PORT")]
        vip: String,
        /// The client's address and source port.
        #[arg(long, value_name = "IP:PORT")]
        client: String,
        /// Print JSON (its `backend` is where the packets go; with --watch, one object
        /// per packet).
        #[arg(long)]
        json: bool,
        /// Then follow the connection's packets as the data path sees them, a line
        /// each, until Ctrl-C or --for (the daemon compares that service's packets
        /// only while someone watches).
        #[arg(long)]
        watch: bool,
        /// With --watch: report one packet in N (sampled at random).
        #[arg(long, value_name = "N", default_value_t = 1, requires = "watch")]
        every: u32,
        /// With --watch: stop after this long (e.g. 30s).
        #[arg(long = "for", value_name = "DURATION", requires = "watch")]
        for_: Option<String>,
        /// With --watch: the daemon's admin socket (default: this network namespace's).
        #[arg(long, value_name = "PATH", requires = "watch")]
        admin_socket: Option<PathBuf>,
    },
    /// Print the shell completion script for SHELL (bash, zsh, fish, elvish,
    /// powershell), e.g. `lb completions bash > /etc/bash_completion.d/lb`.
    Completions {
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (lb.8 and one per subcommand) into DIR: what the Debian
    /// package ships.
    #[command(hide = true)]
    Manpages {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct CtlArgs {
    /// Talk to the admin API over TCP at this address instead of its Unix socket
    /// (changes then need --token-file).
    #[arg(long, value_name = "IP:PORT", conflicts_with = "admin_socket")]
    pub admin: Option<String>,
    /// The daemon's admin socket; default: the one of the daemon in this network
    /// namespace, /run/lb/netns-<inode>-admin.sock.
    #[arg(long, value_name = "PATH")]
    pub admin_socket: Option<PathBuf>,
    /// With --admin: a file holding the daemon's admin token (its --admin-token-file).
    #[arg(long, value_name = "FILE", requires = "admin")]
    pub token_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// List services and backends with their state, weight and active flows.
    List {
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Add a backend to a service; with a health check it gets traffic once it passes.
    Add {
        service: String,
        #[arg(value_name = "IP:PORT[@WEIGHT]")]
        backend: String,
    },
    /// Remove a backend: it drains first (no new flows; existing ones may finish
    /// within --drain-timeout), then it is removed.
    Remove {
        service: String,
        #[arg(value_name = "IP:PORT")]
        backend: String,
        /// Remove at once, cutting its flows.
        #[arg(long)]
        now: bool,
    },
    /// Change a backend's weight (0 = no new flows).
    Weight {
        service: String,
        #[arg(value_name = "IP:PORT")]
        backend: String,
        weight: u32,
    },
    /// Drain a backend: no new flows; its flows are cut after --drain-timeout.
    Drain {
        service: String,
        #[arg(value_name = "IP:PORT")]
        backend: String,
    },
    /// Put a drained backend back into service.
    Enable {
        service: String,
        #[arg(value_name = "IP:PORT")]
        backend: String,
    },
    /// Re-read the config file and apply the difference (same as SIGHUP).
    Reload,
}

/// Run the load balancer in the foreground until SIGINT/SIGTERM.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// TOML file with global settings and [[service]] sections; flags override its globals.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Interface to attach to; repeat for a two-armed setup (client side, backend side).
    #[arg(long = "iface", value_name = "IF")]
    pub ifaces: Vec<String>,
    /// Virtual IP and port of the service: 198.18.100.1:80 or [fd00::10]:80.
    #[arg(long, value_name = "IP:PORT")]
    pub vip: Option<String>,
    /// A backend of the service, with an optional weight (default 1); repeat per backend.
    #[arg(long = "backend", value_name = "IP:PORT[@WEIGHT]")]
    pub backends: Vec<String>,
    /// Backends found in DNS, looked up with the host's resolver: every A and AAAA
    /// record of NAME on PORT, or srv:NAME's SRV records (port and weight from each).
    /// Addresses that appear join health-checked; ones that vanish drain.
    #[arg(long, value_name = "NAME:PORT|srv:NAME")]
    pub backend_dns: Option<String>,
    /// How often --backend-dns is looked up again (1s-1h); default: when the answer's
    /// TTL runs out, bounded to 1s-60s.
    #[arg(long, value_name = "DURATION")]
    pub dns_interval: Option<String>,
    /// Only sources in this range (IP/LENGTH, or one address) may open connections to
    /// the --vip service, enforced in XDP; repeat it. Default: everyone.
    #[arg(long = "allow", value_name = "CIDR")]
    pub allow: Vec<String>,
    /// What a source outside --allow gets: drop (default) or reset (a TCP RST).
    #[arg(long, value_name = "drop|reset")]
    pub deny: Option<String>,
    /// A source outside --allow loses its established connections too (after a reload
    /// that narrows the list).
    #[arg(long)]
    pub deny_established: bool,
    /// Name of the service given with --vip (default "default").
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Forwarding mode: nat (full NAT in XDP, both directions through the LB),
    /// proxy-v2 (the daemon proxies each connection behind a PROXY protocol header),
    /// dsr (the client's packet, encapsulated, to a backend that answers directly; see
    /// --encap and `lb decap`) or dnat (destination NAT: the backends route their
    /// replies back through the LB).
    #[arg(long, value_name = "MODE")]
    pub mode: Option<String>,
    /// How a dsr service reaches its backends: ipip (IP in IP), gue (IP in UDP, see
    /// --gue-port) or l2 (the backend's MAC only; backends on an LB interface's segment).
    #[arg(long, value_name = "ENCAP")]
    pub encap: Option<String>,
    /// The backends' GUE port of a dsr service with --encap gue (default 6080).
    #[arg(long, value_name = "PORT")]
    pub gue_port: Option<u16>,
    /// The --vip service's slow start: a backend that comes (back) up takes a share
    /// growing to its weight over this time (e.g. 30s); default none.
    #[arg(long, value_name = "DURATION")]
    pub slow_start: Option<String>,
    /// Source address toward backends (one per family); default: the egress interface's.
    #[arg(long = "snat-ip", value_name = "IP")]
    pub snat_ips: Vec<String>,
    /// Source ports used toward backends; keep it outside net.ipv4.ip_local_port_range.
    #[arg(long, value_name = "LOW-HIGH")]
    pub snat_ports: Option<String>,
    /// New flows a second one source (IPv4 address, IPv6 /64) may open; SYNs over it
    /// are dropped in XDP. 0 = no limit (the default).
    #[arg(long, value_name = "N")]
    pub source_rate: Option<u32>,
    /// New flows a source may open at once before --source-rate applies; default: the
    /// rate (at least 1).
    #[arg(long, value_name = "N")]
    pub source_burst: Option<u32>,
    /// When nat services' new flows are opened by SYN cookie (the LB answers the SYN and
    /// opens the backend's leg itself only for a valid ACK): auto (when a VIP's SYNs go
    /// unanswered faster than --syn-cookie-rate a second; the default), always, off.
    #[arg(long, value_name = "MODE")]
    pub syn_cookies: Option<String>,
    /// With --syn-cookies auto: SYNs a second one VIP may leave unanswered (SYNs less
    /// completed handshakes, a sixteenth of it in each window of about 67 ms) before
    /// cookies answer them; default 5000.
    #[arg(long, value_name = "N")]
    pub syn_cookie_rate: Option<u32>,
    /// Kernel routing table (1-252) in which lb keeps a route for each VIP it can serve
    /// (program attached, a backend up), for a routing daemon (BIRD, FRR) to announce
    /// over BGP; default: none.
    #[arg(long, value_name = "N")]
    pub announce_table: Option<u32>,
    /// Flow table size (connections remembered); default 262144.
    #[arg(long, value_name = "N")]
    pub max_flows: Option<u32>,
    /// How long an idle established flow is remembered (e.g. 350s, 5m); default 350s.
    #[arg(long, value_name = "DURATION")]
    pub idle_timeout: Option<String>,
    /// How long a flow is remembered after FIN both ways or RST; default 10s.
    #[arg(long, value_name = "DURATION")]
    pub closed_timeout: Option<String>,
    /// How long a flow whose handshake is not complete may stay idle; default 5s.
    #[arg(long, value_name = "DURATION")]
    pub half_open_timeout: Option<String>,
    /// XDP attach mode: auto (native, else skb with a warning), native, skb.
    #[arg(long, value_name = "MODE")]
    pub xdp_mode: Option<String>,
    /// Maglev table size per service, a prime; default 65537.
    #[arg(long, value_name = "PRIME")]
    pub ring_size: Option<u32>,
    /// Services the maps are sized for; default 16.
    #[arg(long, value_name = "N")]
    pub max_services: Option<u32>,
    /// The bpffs directory holding the data path's state (programs, links, maps), which
    /// outlives the daemon so a restart or upgrade keeps every flow; default
    /// /sys/fs/bpf/lb/netns-COOKIE for this network namespace. `lb down` removes it.
    #[arg(long, value_name = "DIR", alias = "pin-dir")]
    pub state_dir: Option<PathBuf>,
    /// Health check of the --vip service: tcp (connect), http:/PATH (GET, expects
    /// --health-status), https:/PATH (the same over TLS), or none; default tcp.
    #[arg(long, value_name = "CHECK")]
    pub health: Option<String>,
    /// Port to check instead of each backend's own.
    #[arg(long, value_name = "PORT")]
    pub health_port: Option<u16>,
    /// Time between checks of one backend; default 5s.
    #[arg(long, value_name = "DURATION")]
    pub health_interval: Option<String>,
    /// Time a check may take; default 2s (less than the interval).
    #[arg(long, value_name = "DURATION")]
    pub health_timeout: Option<String>,
    /// Consecutive passed checks that bring a backend up; default 2.
    #[arg(long, value_name = "N")]
    pub healthy_threshold: Option<u32>,
    /// Consecutive failed checks that take a backend down; default 2.
    #[arg(long, value_name = "N")]
    pub unhealthy_threshold: Option<u32>,
    /// HTTP statuses that pass an http check: a code or LOW-HIGH; default 200-399.
    #[arg(long, value_name = "CODES")]
    pub health_status: Option<String>,
    /// Host header of the http check; default the backend's IP:PORT.
    #[arg(long, value_name = "HOST")]
    pub health_host: Option<String>,
    /// https checks: verify the backend's certificate (chain and name); off by default,
    /// as an NLB's.
    #[arg(long)]
    pub health_tls_verify: bool,
    /// https checks with --health-tls-verify: the CA certificates (PEM) to verify
    /// against; default the system's.
    #[arg(long, value_name = "FILE")]
    pub health_tls_ca: Option<String>,
    /// Admin API TCP address: metrics, health and reads for anyone who reaches it;
    /// changes only with --admin-token-file's token. `off` disables it. Default
    /// 127.0.0.1:9100.
    #[arg(long, value_name = "IP:PORT")]
    pub admin: Option<String>,
    /// The admin API's Unix socket, the whole API (what `lb ctl` uses), mode 0600 owned
    /// by root; `off` disables it. Default /run/lb/netns-<inode>-admin.sock.
    #[arg(long, value_name = "PATH")]
    pub admin_socket: Option<String>,
    /// Also open the admin socket to this group (mode 0660).
    #[arg(long, value_name = "GROUP")]
    pub admin_group: Option<String>,
    /// A file (not world-readable) holding the bearer token that changes (POST) over
    /// the TCP admin API need; without it, changes over TCP are refused (403).
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<String>,
    /// How long a draining backend's flows may continue before they are cut; default 300s.
    #[arg(long, value_name = "DURATION")]
    pub drain_timeout: Option<String>,
    /// On SIGINT/SIGTERM, how long proxied connections may go on before the daemon exits
    /// (no new ones are accepted meanwhile); default 30s.
    #[arg(long, value_name = "DURATION")]
    pub shutdown_timeout: Option<String>,
    /// PROXY protocol header of a proxy-v2 service: v2 (binary) or v1 (text).
    #[arg(long, value_name = "VERSION")]
    pub proxy_protocol: Option<String>,
    /// Send a PP2_TYPE_UNIQUE_ID TLV (a unique id per connection, also logged).
    #[arg(long)]
    pub proxy_tlv_unique_id: bool,
    /// Send a PP2_TYPE_CRC32C TLV (a checksum of the header).
    #[arg(long)]
    pub proxy_tlv_crc32c: bool,
    /// Send a PP2_TYPE_AUTHORITY TLV with the TLS ClientHello's SNI (peeked, not decrypted).
    #[arg(long)]
    pub proxy_tlv_authority: bool,
    /// Send a PP2_TYPE_ALPN TLV with the TLS ClientHello's first ALPN protocol.
    #[arg(long)]
    pub proxy_tlv_alpn: bool,
    /// Expect a PROXY v1/v2 header from the client (this LB stands behind another) and
    /// forward the original client address.
    #[arg(long)]
    pub accept_proxy: bool,
    /// Proxy services: time a backend connect may take before the next backend is tried;
    /// default 3s.
    #[arg(long, value_name = "DURATION")]
    pub connect_timeout: Option<String>,
    /// Proxy services: how bytes move after the header: pipe (splice(2) through a pipe,
    /// the default: faster here and bounded under a slow receiver) or sockmap (an sk_skb
    /// program redirects in the kernel; queues without bound behind a slow receiver).
    #[arg(long, value_name = "ENGINE")]
    pub splice: Option<String>,
    /// Proxy services: connections proxied at once, at most; default 65536.
    #[arg(long, value_name = "N")]
    pub max_conns: Option<u32>,
    /// Validate the configuration, print it, and exit without attaching anything.
    #[arg(long)]
    pub check: bool,
}

impl RunArgs {
    pub fn settings(&self) -> FlagSettings {
        FlagSettings {
            config: self.config.clone(),
            ifaces: self.ifaces.clone(),
            xdp_mode: self.xdp_mode.clone(),
            name: self.name.clone(),
            vip: self.vip.clone(),
            mode: self.mode.clone(),
            encap: self.encap.clone(),
            gue_port: self.gue_port,
            slow_start: self.slow_start.clone(),
            backends: self.backends.clone(),
            backend_dns: self.backend_dns.clone(),
            allow: self.allow.clone(),
            deny: self.deny.clone(),
            deny_established: self.deny_established,
            dns_interval: self.dns_interval.clone(),
            snat_ips: self.snat_ips.clone(),
            snat_ports: self.snat_ports.clone(),
            max_flows: self.max_flows,
            ring_size: self.ring_size,
            max_services: self.max_services,
            idle_timeout: self.idle_timeout.clone(),
            closed_timeout: self.closed_timeout.clone(),
            half_open_timeout: self.half_open_timeout.clone(),
            state_dir: self.state_dir.clone(),
            admin: self.admin.clone(),
            admin_socket: self.admin_socket.clone(),
            admin_group: self.admin_group.clone(),
            admin_token_file: self.admin_token_file.clone(),
            drain_timeout: self.drain_timeout.clone(),
            shutdown_timeout: self.shutdown_timeout.clone(),
            health: HealthFlags {
                check: self.health.clone(),
                port: self.health_port,
                interval: self.health_interval.clone(),
                timeout: self.health_timeout.clone(),
                rise: self.healthy_threshold,
                fall: self.unhealthy_threshold,
                status: self.health_status.clone(),
                host: self.health_host.clone(),
                tls_verify: self.health_tls_verify.then_some(true),
                tls_ca: self.health_tls_ca.clone(),
            },
            connect_timeout: self.connect_timeout.clone(),
            splice: self.splice.clone(),
            max_conns: self.max_conns,
            source_rate: self.source_rate,
            source_burst: self.source_burst,
            syn_cookies: self.syn_cookies.clone(),
            syn_cookie_rate: self.syn_cookie_rate,
            announce_table: self.announce_table,
            proxy_protocol: self.proxy_protocol.clone(),
            proxy_tlvs: [
                (self.proxy_tlv_unique_id, "unique-id"),
                (self.proxy_tlv_crc32c, "crc32c"),
                (self.proxy_tlv_authority, "authority"),
                (self.proxy_tlv_alpn, "alpn"),
            ]
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, name)| name.to_string())
            .collect(),
            accept_proxy: self.accept_proxy,
        }
    }
}
