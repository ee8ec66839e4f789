//! The synwatch test lab: two network namespaces joined by a veth pair, with a target side that
//! answers for whole address ranges and known ground truth.
//!
//! ```text
//!   scanner namespace                         target namespace
//!   veth 198.19.255.1/30, 2001:2:0:ffff::1/64 ── veth 198.19.255.2/30, 2001:2:0:ffff::2/64
//!   routes 198.18.0.0/15, 2001:2::/48 via the  local (AnyIP) routes for the target ranges on lo,
//!   target side                                listeners on chosen (address, port)s, nftables
//!                                              rules: blackholed ranges (drop), prohibited
//!                                              ranges (ICMP admin-prohibited), unreachable
//!                                              ones (ICMP host unreachable), random loss
//! ```
//!
//! The listeners accept and close every connection at once (one thread polls them all), so a
//! connect() scan never fills their accept queues.
//!
//! Only the benchmarking ranges 198.18.0.0/15 and 2001:2::/48 are used, and neither namespace
//! has any link to the host's own namespace, so nothing a test sends can leave the lab.
//!
//! A [`Lab`] tears itself down when dropped, including while a failing test unwinds; labs left
//! by a killed process are removed by the next [`Lab::build`] (their owner pid is in the name).
//!
//! With [`LabConfig::field`] the target side is the [`field`] lab instead: a responder thread
//! answers for the model's ranges with simulated round trips, loss, firewalls and middleboxes,
//! and the target kernel owns none of those addresses.
//!
//! The benchmark runners' helpers (program lookup, `wait4` accounting, the link sampler) are in
//! [`runner`].
//!
//! Tests call [`lab_or_skip`]: without root, `ip` or `nft` the test prints why and returns,
//! unless `SYNWATCH_REQUIRE_LAB=1`, in which case the missing lab is a failure.

use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use ipnetwork::IpNetwork;
use nix::sched::{CloneFlags, setns};
use socket2::{Domain, Socket, Type};

pub mod field;
pub mod runner;
pub mod udp_services;

pub use udp_services::{UdpService, UdpServices};

/// The scanner's address on the lab link.
pub const SCANNER_V4: Ipv4Addr = Ipv4Addr::new(198, 19, 255, 1);
/// The target side's address on the lab link (the scanner's gateway).
pub const TARGET_LINK_V4: Ipv4Addr = Ipv4Addr::new(198, 19, 255, 2);
/// The scanner's IPv6 address on the lab link.
pub const SCANNER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0xffff, 0, 0, 0, 1);
/// The target side's IPv6 address on the lab link.
pub const TARGET_LINK_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0xffff, 0, 0, 0, 2);

const NAME_PREFIX: &str = "swlab";

/// Why a lab could not be built.
#[derive(Debug)]
pub struct LabError(pub String);

impl std::fmt::Display for LabError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl std::error::Error for LabError {}

/// What to build.
#[derive(Debug, Clone, Default)]
pub struct LabConfig {
    /// Target ranges the target namespace answers for (AnyIP local routes). Must lie in
    /// 198.18.0.0/16 or 2001:2::/64.
    pub target_ranges: Vec<IpNetwork>,
    /// Listening sockets in the target namespace.
    pub listeners: Vec<SocketAddr>,
    /// Ranges whose packets the target silently drops (filtered by timeout).
    pub blackholed: Vec<IpNetwork>,
    /// Ranges the target answers with ICMP administratively prohibited.
    pub prohibited: Vec<IpNetwork>,
    /// Ranges the target answers with ICMP host unreachable (ICMPv4 type 3 code 1, ICMPv6
    /// address unreachable), as a router does for a host that is down; Linux reports it to a
    /// UDP socket only with `IP_RECVERR`.
    pub unreachable: Vec<IpNetwork>,
    /// Share of incoming TCP and UDP packets the target drops at random, in percent.
    pub loss_percent: u8,
    /// Keep the target kernel's own ICMP rate limits (Linux: six errors to a peer, then one a
    /// second; 1,000 a second in all) instead of lifting them, as real hosts have them.
    pub kernel_icmp_limits: bool,
    /// Scripted UDP services in the target namespace ([`udp_services`]), each on its
    /// (address, port); every other UDP port of a target range is closed (the kernel answers
    /// ICMP port unreachable, without rate limit in the lab).
    pub udp_services: Vec<(SocketAddr, UdpService)>,
    /// Install the gateway's link-layer address statically in the scanner namespace (otherwise
    /// the scanner must resolve it).
    pub static_neighbour: bool,
    /// Take the target side's link down after set-up, so nothing answers (send-only
    /// measurements). Implies `static_neighbour`.
    pub target_link_down: bool,
    /// Simulate this network on the target side (the field lab): its responder answers for
    /// the model's ranges, which must not overlap `target_ranges`.
    pub field: Option<field::FieldModel>,
    /// How the field lab's simulator keeps its books (per-(host, port) SYN counts cost memory
    /// at benchmark sizes).
    pub field_options: field::SimulatorOptions,
}

/// What the lab says a probe should find.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Expected {
    /// A listener answers.
    Open,
    /// The target's kernel answers RST.
    Closed,
    /// Dropped or prohibited (for UDP: prohibited, an ICMP error other than port unreachable).
    Filtered,
    /// UDP only: nothing answers (dropped, or a service that stays silent).
    OpenFiltered,
}

impl Expected {
    /// The state's name as synwatch prints it.
    pub fn name(self) -> &'static str {
        match self {
            Expected::Open => "open",
            Expected::Closed => "closed",
            Expected::Filtered => "filtered",
            Expected::OpenFiltered => "open|filtered",
        }
    }
}

/// A running lab.
#[derive(Debug)]
pub struct Lab {
    config: LabConfig,
    scanner: String,
    target: String,
    scanner_link: String,
    target_link: String,
    /// Listening sockets, shared with the thread that drains their accept queues.
    listeners: Arc<Mutex<Vec<(SocketAddr, Socket)>>>,
    /// The accept-queue drainer: its stop flag and thread.
    drainer: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
    /// The field lab's responder, when the lab simulates a network.
    responder: Option<field::Responder>,
    /// The scripted UDP services, while they run.
    udp: Option<UdpServices>,
}

/// Accepts and closes at once every connection on the listeners, until `stop`. Without it a
/// connect() scan fills the accept queues (a completed handshake waits there even after the
/// scanner's RST), and later handshakes to the same listener fail.
fn drain_accept_queues(listeners: Arc<Mutex<Vec<(SocketAddr, Socket)>>>, stop: Arc<AtomicBool>) {
    use std::os::fd::AsFd;

    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    while !stop.load(Ordering::Acquire) {
        let guard = listeners.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if guard.is_empty() {
            drop(guard);
            std::thread::sleep(std::time::Duration::from_millis(20));
            continue;
        }
        let mut descriptors: Vec<PollFd<'_>> =
            guard.iter().map(|(_, socket)| PollFd::new(socket.as_fd(), PollFlags::POLLIN)).collect();
        let ready = poll(&mut descriptors, PollTimeout::from(20u8)).unwrap_or(0);
        if ready > 0 {
            let readable: Vec<bool> = descriptors
                .iter()
                .map(|descriptor| descriptor.revents().is_some_and(|events| events.contains(PollFlags::POLLIN)))
                .collect();
            for ((_, socket), readable) in guard.iter().zip(readable) {
                // Non-blocking: accept until the queue is empty; dropping closes each connection.
                while readable && socket.accept().is_ok() {}
            }
        }
        drop(guard);
        // Let `listen` and `close_listener` take the lock between rounds.
        std::thread::yield_now();
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn run(command: &mut Command) -> Result<Output, LabError> {
    let output = command.output().map_err(|error| LabError(format!("{command:?}: {error}")))?;
    if !output.status.success() {
        return Err(LabError(format!("{command:?} failed: {}", String::from_utf8_lossy(&output.stderr).trim())));
    }
    Ok(output)
}

fn ip(arguments: &[&str]) -> Result<Output, LabError> {
    run(Command::new("ip").args(arguments))
}

fn in_namespace(namespace: &str, program: &str, arguments: &[&str]) -> Result<Output, LabError> {
    run(Command::new("ip").args(["netns", "exec", namespace, program]).args(arguments))
}

/// Whether a lab can be built here, and if not, why.
pub fn lab_available() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("not root".into());
    }
    for (program, package) in [("ip", "iproute2"), ("nft", "nftables"), ("ethtool", "ethtool")] {
        let found = Command::new(program).arg("--version").output().is_ok_and(|output| output.status.success())
            || Command::new(program).arg("-V").output().is_ok_and(|output| output.status.success());
        if !found {
            return Err(format!("`{program}` is not installed (Debian: {package})"));
        }
    }
    Ok(())
}

/// Builds a lab, or returns `None` after printing why a lab test is skipped. Panics instead when
/// `SYNWATCH_REQUIRE_LAB=1`, so CI cannot pass by skipping.
pub fn lab_or_skip(test: &str, config: LabConfig) -> Option<Lab> {
    let required = std::env::var("SYNWATCH_REQUIRE_LAB").is_ok_and(|value| value == "1");
    if let Err(reason) = lab_available() {
        if required {
            panic!("{test}: SYNWATCH_REQUIRE_LAB=1 but no lab can be built here: {reason}");
        }
        eprintln!(
            "skipping {test}: no network lab ({reason}); run as root with iproute2, nftables and ethtool, or set SYNWATCH_REQUIRE_LAB=1 to make this a failure"
        );
        return None;
    }
    match Lab::build(config) {
        Ok(lab) => Some(lab),
        Err(error) => panic!("{test}: building the lab failed: {error}"),
    }
}

impl Lab {
    /// Builds the lab.
    pub fn build(config: LabConfig) -> Result<Lab, LabError> {
        remove_stale_labs();
        let number = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let scanner = format!("{NAME_PREFIX}-{pid}-{number}-s");
        let target = format!("{NAME_PREFIX}-{pid}-{number}-t");
        // Interface names are limited to 15 characters.
        let scanner_link = format!("sw{:x}{number}s", pid % 0xfffff);
        let target_link = format!("sw{:x}{number}t", pid % 0xfffff);
        let listeners = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let drainer = {
            let (listeners, stop) = (Arc::clone(&listeners), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("lab-accept".into())
                .spawn(move || drain_accept_queues(listeners, stop))
                .map_err(|error| LabError(format!("starting the accept thread: {error}")))?
        };
        let mut lab = Lab {
            config,
            scanner,
            target,
            scanner_link,
            target_link,
            listeners,
            drainer: Some((stop, drainer)),
            responder: None,
            udp: None,
        };
        ip(&["netns", "add", &lab.scanner])?;
        ip(&["netns", "add", &lab.target])?;
        lab.set_up()?;
        Ok(lab)
    }

    fn set_up(&mut self) -> Result<(), LabError> {
        let (s, t) = (self.scanner.clone(), self.target.clone());
        let (scanner_link, target_link) = (self.scanner_link.clone(), self.target_link.clone());
        let (scanner_link, target_link) = (scanner_link.as_str(), target_link.as_str());
        ip(&["link", "add", scanner_link, "netns", &s, "type", "veth", "peer", "name", target_link, "netns", &t])?;
        for (namespace, link, address, address6) in
            [(&s, scanner_link, SCANNER_V4, SCANNER_V6), (&t, target_link, TARGET_LINK_V4, TARGET_LINK_V6)]
        {
            let keep_icmp_limits = self.config.kernel_icmp_limits && namespace == &t;
            for sysctl in [
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
                "net.ipv4.icmp_ratelimit=0",
                "net.ipv4.icmp_msgs_per_sec=1000000",
                // The global ICMP credit refills every 20 ms up to this burst (50 by default:
                // at most 2,500 errors a second, which a UDP scan's port unreachables exceed).
                "net.ipv4.icmp_msgs_burst=1000000",
                "net.ipv6.icmp.ratelimit=0",
                "net.core.somaxconn=65535",
                "net.ipv4.tcp_max_syn_backlog=65535",
            ] {
                if keep_icmp_limits && sysctl.contains("icmp") {
                    continue;
                }
                in_namespace(namespace, "sysctl", &["-qw", sysctl])?;
            }
            in_namespace(namespace, "ip", &["link", "set", "lo", "up"])?;
            in_namespace(namespace, "ip", &["addr", "add", &format!("{address}/30"), "dev", link])?;
            in_namespace(namespace, "ip", &["-6", "addr", "add", &format!("{address6}/64"), "dev", link, "nodad"])?;
            in_namespace(namespace, "ip", &["link", "set", link, "up"])?;
        }
        in_namespace(&s, "ip", &["route", "add", "198.18.0.0/15", "via", &TARGET_LINK_V4.to_string()])?;
        in_namespace(&s, "ip", &["-6", "route", "add", "2001:2::/48", "via", &TARGET_LINK_V6.to_string()])?;
        for range in &self.config.target_ranges {
            let family = if range.is_ipv6() { "-6" } else { "-4" };
            in_namespace(&t, "ip", &[family, "route", "add", "local", &range.to_string(), "dev", "lo"])?;
        }
        self.install_rules()?;
        let listeners = self.config.listeners.clone();
        self.listen_all(&listeners)?;
        if !self.config.udp_services.is_empty() {
            let services = self.config.udp_services.clone();
            let started = run_in_namespace(&t, || UdpServices::start(&services))
                .map_err(|error| LabError(format!("entering the target namespace: {error}")))?
                .map_err(|error| LabError(format!("starting the UDP services: {error}")))?;
            self.udp = Some(started);
        }
        if self.config.static_neighbour || self.config.target_link_down {
            let mac = self.gateway_mac()?;
            for (family, gateway) in [("-4", IpAddr::V4(TARGET_LINK_V4)), ("-6", IpAddr::V6(TARGET_LINK_V6))] {
                let gateway = gateway.to_string();
                let arguments =
                    [family, "neigh", "replace", &gateway, "lladdr", &mac, "dev", scanner_link, "nud", "permanent"];
                in_namespace(&s, "ip", &arguments)?;
            }
        }
        // The target side knows the scanner's hardware address from the start: its replies
        // never wait for address resolution, which for IPv6 takes about a second after the
        // link comes up (replies to the first probes were lost).
        let scanner_mac = in_namespace(&s, "cat", &[&format!("/sys/class/net/{scanner_link}/address")])?;
        let scanner_mac = String::from_utf8_lossy(&scanner_mac.stdout).trim().to_string();
        for (family, scanner) in [("-4", IpAddr::V4(SCANNER_V4)), ("-6", IpAddr::V6(SCANNER_V6))] {
            let scanner = scanner.to_string();
            let arguments =
                [family, "neigh", "replace", &scanner, "lladdr", &scanner_mac, "dev", target_link, "nud", "permanent"];
            in_namespace(&t, "ip", &arguments)?;
        }
        if self.config.target_link_down {
            in_namespace(&t, "ip", &["link", "set", target_link, "down"])?;
        }
        if let Some(model) = self.config.field.clone() {
            // The scanner side's receive work (its kernel's IP and TCP input, the scanner's
            // capture) runs in a NAPI thread of its own, as a real NIC's receive runs on the
            // scanner host's cores; otherwise the veth does it inside the responder's sends and
            // the responder would measure the scanner's kernel. GRO turns on the veth's NAPI
            // (nothing merges: SYN-ACKs, RSTs and ICMP are not coalesced), and the veth uses it
            // only for frames from a sender without TSO.
            in_namespace(&s, "ethtool", &["-K", scanner_link, "gro", "on"])?;
            in_namespace(&t, "ethtool", &["-K", target_link, "tso", "off"])?;
            in_namespace(&s, "sh", &["-c", &format!("echo 1 > /sys/class/net/{scanner_link}/threaded")])?;
            let simulator = field::Simulator::new(model, self.config.field_options)
                .map_err(|error| LabError(format!("the field model: {error}")))?;
            let responder = field::Responder::start(&t, target_link, simulator)
                .map_err(|error| LabError(format!("starting the field responder: {error}")))?;
            self.responder = Some(responder);
        }
        Ok(())
    }

    fn install_rules(&self) -> Result<(), LabError> {
        let mut rules =
            String::from("table inet lab {\n chain input {\n  type filter hook input priority 0; policy accept;\n");
        // Counts every SYN that reaches the target side, before any rule drops it (see
        // `Lab::syns_received`).
        rules += "  tcp flags & (syn | ack) == syn counter\n";
        if self.config.loss_percent > 0 {
            rules +=
                &format!("  meta l4proto {{ tcp, udp }} numgen random mod 100 < {} drop\n", self.config.loss_percent);
        }
        for range in &self.config.blackholed {
            let family = if range.is_ipv6() { "ip6" } else { "ip" };
            rules += &format!("  {family} daddr {range} drop\n");
        }
        for range in &self.config.prohibited {
            rules += &if range.is_ipv6() {
                format!("  ip6 daddr {range} reject with icmpv6 type admin-prohibited\n")
            } else {
                format!("  ip daddr {range} reject with icmp type admin-prohibited\n")
            };
        }
        for range in &self.config.unreachable {
            rules += &if range.is_ipv6() {
                format!("  ip6 daddr {range} reject with icmpv6 type addr-unreachable\n")
            } else {
                format!("  ip daddr {range} reject with icmp type host-unreachable\n")
            };
        }
        rules += " }\n";
        if let Some(model) = &self.config.field {
            // The simulated addresses are the responder's: the kernel must not route them (it
            // would answer ICMP host unreachable). Dropped before routing, after the capture.
            rules += " chain field {\n  type filter hook prerouting priority -300; policy accept;\n";
            for range in &model.ranges {
                let family = if range.range.is_ipv6() { "ip6" } else { "ip" };
                rules += &format!("  {family} daddr {} drop\n", range.range);
            }
            rules += &format!("  ip daddr {} drop\n  ip6 daddr {} drop\n }}\n", model.router_v4, model.router_v6);
        }
        rules += "}\n";
        let path = std::env::temp_dir().join(format!("{}.nft", self.target));
        std::fs::write(&path, rules).map_err(|error| LabError(format!("writing {path:?}: {error}")))?;
        let result = in_namespace(&self.target, "nft", &["-f", &path.to_string_lossy()]);
        let _ = std::fs::remove_file(&path);
        result.map(|_| ())
    }

    /// The gateway's (the target side's) hardware address, as `aa:bb:cc:dd:ee:ff`.
    pub fn gateway_mac(&self) -> Result<String, LabError> {
        let output = in_namespace(&self.target, "cat", &[&format!("/sys/class/net/{}/address", self.target_link)])?;
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    }

    /// The scanner side's interface name.
    pub fn scanner_link(&self) -> &str {
        &self.scanner_link
    }

    /// Transmitted plus transmit-dropped packets of the scanner's link, read in its namespace.
    pub fn scanner_link_transmitted(&self) -> Result<u64, LabError> {
        Ok(read_link_counter(&self.scanner, &self.scanner_link, 9)?
            + read_link_counter(&self.scanner, &self.scanner_link, 11)?)
    }

    /// SYNs (connection attempts and SYN probes) that reached the target side since the lab
    /// was built, read from the nftables counter in front of its other rules (in the field lab,
    /// from the responder, which sees them before any rule).
    pub fn syns_received(&self) -> Result<u64, LabError> {
        if let Some(responder) = &self.responder {
            return Ok(responder.simulator().counters().syns);
        }
        let output = in_namespace(&self.target, "nft", &["list", "chain", "inet", "lab", "input"])?;
        let text = String::from_utf8_lossy(&output.stdout);
        text.lines()
            .find_map(|line| {
                let rest = line.split("counter packets ").nth(1)?;
                rest.split_whitespace().next()?.parse().ok()
            })
            .ok_or_else(|| LabError(format!("no SYN counter in the lab's rules:\n{text}")))
    }

    /// Sends one UDP datagram from the target side to the scanner's address (port 9, discard),
    /// so a capture waiting on the scanner's link sees a packet. Errors are ignored: it is a
    /// nudge.
    pub fn nudge_scanner(&self) {
        let _ = run_in_namespace(&self.target, || {
            std::net::UdpSocket::bind("0.0.0.0:0").and_then(|socket| socket.send_to(b"nudge", (SCANNER_V4, 9)))
        });
    }

    /// The scanner namespace's name (for `ip netns exec`).
    pub fn scanner_namespace(&self) -> &str {
        &self.scanner
    }

    /// The target namespace's name.
    pub fn target_namespace(&self) -> &str {
        &self.target
    }

    /// A command that runs `program` inside the scanner namespace.
    pub fn scanner_command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.scanner]).arg(program);
        command
    }

    /// Runs `work` on a thread inside the scanner namespace (threads it starts inherit it).
    pub fn in_scanner<R: Send>(&self, work: impl FnOnce() -> R + Send) -> R {
        run_in_namespace(&self.scanner, work).expect("entering the scanner namespace")
    }

    /// Opens a listener in the target namespace.
    pub fn listen(&mut self, address: SocketAddr) -> Result<(), LabError> {
        self.listen_all(&[address])
    }

    /// Opens many listeners in the target namespace at once: one thread enters the namespace
    /// and the accept thread's list is taken once (it holds the list while it polls, so taking
    /// it once per listener would wait a poll interval per listener).
    pub fn listen_all(&mut self, addresses: &[SocketAddr]) -> Result<(), LabError> {
        if addresses.is_empty() {
            return Ok(());
        }
        let open_one = |address: SocketAddr| -> io::Result<Socket> {
            let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
            socket.set_reuse_address(true)?;
            bind_any_lab_address(&socket, address)?;
            socket.listen(65535)?;
            socket.set_nonblocking(true)?;
            Ok(socket)
        };
        let sockets = run_in_namespace(&self.target, || {
            addresses
                .iter()
                .map(|&address| open_one(address).map(|socket| (address, socket)).map_err(|error| (address, error)))
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(|error| LabError(format!("entering the target namespace: {error}")))?
        .map_err(|(address, error)| LabError(format!("listening on {address}: {error}")))?;
        self.listeners.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend(sockets);
        Ok(())
    }

    /// Closes the listener on `address`; returns whether there was one.
    pub fn close_listener(&mut self, address: SocketAddr) -> bool {
        let mut listeners = self.listeners.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = listeners.len();
        listeners.retain(|(listening, _)| *listening != address);
        before != listeners.len()
    }

    /// What a probe to `address:port` should find in the kernel lab (in a field lab the truth
    /// is the model's: [`field::FieldModel::truth`]).
    pub fn expected(&self, address: IpAddr, port: u16) -> Expected {
        let inside = |ranges: &[IpNetwork]| ranges.iter().any(|range| range.contains(address));
        if inside(&self.config.blackholed) || inside(&self.config.prohibited) || inside(&self.config.unreachable) {
            return Expected::Filtered;
        }
        if !inside(&self.config.target_ranges) {
            return Expected::Filtered;
        }
        // A wildcard listener (0.0.0.0 or ::) answers on every address of its family.
        let listens = |listening: &SocketAddr| {
            listening.port() == port
                && (listening.ip() == address
                    || (listening.ip().is_unspecified() && listening.is_ipv6() == address.is_ipv6()))
        };
        let listeners = self.listeners.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if listeners.iter().any(|(listening, _)| listens(listening)) { Expected::Open } else { Expected::Closed }
    }

    /// What a UDP probe to `address:port` should find in the kernel lab.
    pub fn expected_udp(&self, address: IpAddr, port: u16) -> Expected {
        let inside = |ranges: &[IpNetwork]| ranges.iter().any(|range| range.contains(address));
        if inside(&self.config.blackholed) {
            return Expected::OpenFiltered;
        }
        if inside(&self.config.prohibited) || inside(&self.config.unreachable) || !inside(&self.config.target_ranges) {
            return Expected::Filtered;
        }
        let bound = self.config.udp_services.iter().find(|(bound, _)| {
            bound.port() == port
                && (bound.ip() == address || (bound.ip().is_unspecified() && bound.is_ipv6() == address.is_ipv6()))
        });
        match bound {
            Some((_, UdpService::Silent)) => Expected::OpenFiltered,
            Some(_) => Expected::Open,
            None => Expected::Closed,
        }
    }

    /// The scripted UDP services, when the lab has any.
    pub fn udp_services(&self) -> Option<&UdpServices> {
        self.udp.as_ref()
    }

    /// The field lab's responder (its simulator's counters, per-port SYN counts and clock), when
    /// the lab simulates a network.
    pub fn field(&self) -> Option<&field::Responder> {
        self.responder.as_ref()
    }

    /// The field lab's model.
    pub fn field_model(&self) -> Option<&field::FieldModel> {
        self.config.field.as_ref()
    }

    /// Transmitted packets of the target side's link (the replies the targets sent), read in
    /// its namespace.
    pub fn target_link_transmitted(&self) -> Result<u64, LabError> {
        read_link_counter(&self.target, &self.target_link, 9)
    }

    /// Ground truth for every address of `ranges` × `ports`: the set of (address, port, state).
    pub fn ground_truth(&self, ranges: &[IpNetwork], ports: &[u16]) -> BTreeSet<(IpAddr, u16, Expected)> {
        let mut truth = BTreeSet::new();
        for range in ranges {
            for address in range.iter() {
                for &port in ports {
                    truth.insert((address, port, self.expected(address, port)));
                }
            }
        }
        truth
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        drop(self.responder.take());
        drop(self.udp.take());
        if let Some((stop, drainer)) = self.drainer.take() {
            stop.store(true, Ordering::Release);
            let _ = drainer.join();
        }
        self.listeners.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
        // Deleting a namespace deletes its end of the veth pair, which deletes the other end.
        let _ = ip(&["netns", "del", &self.scanner]);
        let _ = ip(&["netns", "del", &self.target]);
    }
}

/// Field `index` of `link`'s line in /proc/net/dev, read in `namespace` (0: received bytes, 1:
/// received packets, 9: transmitted packets, 11: transmit drops).
fn read_link_counter(namespace: &str, link: &str, index: usize) -> Result<u64, LabError> {
    let text = run_in_namespace(namespace, || std::fs::read_to_string("/proc/thread-self/net/dev"))
        .and_then(|text| text)
        .map_err(|error| LabError(format!("reading /proc/net/dev: {error}")))?;
    let line = text
        .lines()
        .find(|line| line.trim_start().starts_with(&format!("{link}:")))
        .ok_or_else(|| LabError(format!("{link} not in /proc/net/dev")))?;
    let fields: Vec<u64> =
        line.split(':').nth(1).unwrap_or("").split_whitespace().filter_map(|field| field.parse().ok()).collect();
    Ok(fields.get(index).copied().unwrap_or(0))
}

/// Binds `socket` to `address`, one of the lab's AnyIP addresses (`IP_FREEBIND`: the address
/// is routed locally, not configured), IPv6 sockets for IPv6 only.
pub(crate) fn bind_any_lab_address(socket: &Socket, address: SocketAddr) -> io::Result<()> {
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
        socket.set_freebind_v6(true)?;
    } else {
        socket.set_freebind_v4(true)?;
    }
    socket.bind(&address.into())
}

/// Runs `work` on a new thread that has entered the named network namespace.
pub fn run_in_namespace<R: Send>(namespace: &str, work: impl FnOnce() -> R + Send) -> io::Result<R> {
    let file = File::open(format!("/run/netns/{namespace}"))?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                setns(&file, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
                Ok(work())
            })
            .join()
            .map_err(|_| io::Error::other("the namespace thread panicked"))?
    })
}

/// Removes labs whose owning process is gone (left behind by a killed test run).
fn remove_stale_labs() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(rest) = name.strip_prefix(&format!("{NAME_PREFIX}-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|pid| pid.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", &name]);
        }
    }
}
