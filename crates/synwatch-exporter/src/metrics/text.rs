//! The families `/metrics` writes by hand from the last known results (see the parent module
//! for why): per target, per open port, per responding host, per local listener.

use std::io::Write;

use synwatch_engine::{PortState, Protocol};
use synwatch_io::{RTT_BUCKETS, RttHistogramSnapshot};

use crate::hostnames::HostnameCache;
use crate::listeners::ListenerSnapshot;
use crate::results::ScanResults;

use super::TargetView;

/// The families `/metrics` writes by hand (beyond the registry), in the order it writes them.
/// The test `rendered_families_are_listed` keeps this list true.
pub const RENDERED_FAMILIES: &[&str] = &[
    "synwatch_engine_rtt_seconds",
    "synwatch_target_ports",
    "synwatch_target_hosts_responding",
    "synwatch_target_hosts_suspect",
    "synwatch_target_last_scan_success",
    "synwatch_target_last_scan_timestamp_seconds",
    "synwatch_target_last_scan_duration_seconds",
    "synwatch_target_scan_interval_seconds",
    "synwatch_target_unexpected_open_ports",
    "synwatch_target_expected_ports_missing",
    "synwatch_port_policy_violation",
    "synwatch_port_open",
    "synwatch_port_suspect",
    "synwatch_port_unverified",
    "synwatch_host_info",
    "synwatch_listener_up",
    "synwatch_listeners_expected_missing",
    "synwatch_listeners_forbidden",
    "synwatch_listener_policy_violation",
];

pub(super) fn header(output: &mut Vec<u8>, name: &str, help: &str) {
    let _ = writeln!(output, "# HELP {name} {help}\n# TYPE {name} gauge");
}

/// `synwatch_engine_rtt_seconds{kind}`: the engine's measured round trips of background and
/// interactive jobs, a histogram kept by the engine as counts (the `prometheus` crate's
/// histograms take observations, not counts, so it is written here).
pub(super) fn render_engine_rtt(histograms: &[RttHistogramSnapshot; 2], output: &mut Vec<u8>) {
    let name = "synwatch_engine_rtt_seconds";
    let _ = writeln!(
        output,
        "# HELP {name} Round trips the engine measured from validated replies (every reply kind), per job kind.\n# TYPE {name} histogram"
    );
    for (kind, histogram) in ["background", "interactive"].iter().zip(histograms) {
        for (bound, count) in RTT_BUCKETS.iter().zip(&histogram.cumulative) {
            let _ = writeln!(output, "{name}_bucket{{kind=\"{kind}\",le=\"{bound}\"}} {count}");
        }
        let total = histogram.cumulative[RTT_BUCKETS.len()];
        let _ = writeln!(output, "{name}_bucket{{kind=\"{kind}\",le=\"+Inf\"}} {total}");
        let _ = writeln!(output, "{name}_sum{{kind=\"{kind}\"}} {}", histogram.sum_seconds);
        let _ = writeln!(output, "{name}_count{{kind=\"{kind}\"}} {total}");
    }
}

/// Writes `text` as a label value: backslash, double quote and newline escaped, as the text
/// format requires. Process names and DNS names come from outside and may hold any of them.
pub(super) fn push_label_value(output: &mut Vec<u8>, text: &str) {
    for byte in text.bytes() {
        match byte {
            b'\\' => output.extend_from_slice(b"\\\\"),
            b'"' => output.extend_from_slice(b"\\\""),
            b'\n' => output.extend_from_slice(b"\\n"),
            _ => output.push(byte),
        }
    }
}

/// `synwatch_host_info{target,ip,hostname} 1` for each responding host, at most `limit` in all;
/// the hostname is the name a named target's names gave the address, else the reverse-DNS
/// name (when `resolve_hostnames` is on), or the address while none is known. Without
/// `resolve_hostnames`, only named targets' hosts have the series.
pub(super) fn render_host_info(
    targets: &[TargetView<'_>],
    hostnames: Option<&HostnameCache>,
    limit: u64,
    output: &mut Vec<u8>,
) {
    header(
        output,
        "synwatch_host_info",
        "Always 1 for each host that answered the last completed scan; hostname is its reverse DNS name (or its address).",
    );
    let mut written = 0u64;
    for target in targets {
        for &address in target.responding {
            // The name the target's own names gave this address, else its reverse DNS name.
            let forward = target.names.and_then(|names| names.name_of(address));
            if forward.is_none() && hostnames.is_none() {
                continue;
            }
            if written >= limit {
                return;
            }
            written += 1;
            let ip = address.to_string();
            let name = match forward {
                Some(name) => Some(std::sync::Arc::from(name)),
                None => hostnames.and_then(|hostnames| hostnames.name(address)),
            };
            output.extend_from_slice(b"synwatch_host_info{target=\"");
            output.extend_from_slice(target.label_text.as_bytes());
            output.extend_from_slice(b"\",ip=\"");
            output.extend_from_slice(ip.as_bytes());
            output.extend_from_slice(b"\",hostname=\"");
            push_label_value(output, name.as_deref().unwrap_or(&ip));
            output.extend_from_slice(b"\"} 1\n");
        }
    }
}

/// The local listeners and their policy.
pub(super) fn render_listeners(snapshot: &ListenerSnapshot, output: &mut Vec<u8>) {
    header(
        output,
        "synwatch_listener_up",
        "1 while this host has the listening socket, 0 for listeners.forget_after after it went away.",
    );
    let mut digits = itoa::Buffer::new();
    for (key, up) in &snapshot.listeners {
        output.extend_from_slice(b"synwatch_listener_up{protocol=\"");
        output.extend_from_slice(key.protocol.name().as_bytes());
        output.extend_from_slice(b"\",address=\"");
        output.extend_from_slice(key.address.to_string().as_bytes());
        output.extend_from_slice(b"\",port=\"");
        output.extend_from_slice(digits.format(key.port).as_bytes());
        output.extend_from_slice(b"\",process=\"");
        push_label_value(output, &key.process);
        output.extend_from_slice(if *up { b"\"} 1\n" } else { b"\"} 0\n" });
    }
    header(
        output,
        "synwatch_listeners_expected_missing",
        "Ports in listeners.expect_listening with no listening socket.",
    );
    let _ = writeln!(output, "synwatch_listeners_expected_missing {}", snapshot.expected_missing);
    header(output, "synwatch_listeners_forbidden", "Ports in listeners.forbid_listening with a listening socket.");
    let _ = writeln!(output, "synwatch_listeners_forbidden {}", snapshot.forbidden);
    header(
        output,
        "synwatch_listener_policy_violation",
        "1 for each port that breaks the listener policy (kind: expected_missing or forbidden_listening).",
    );
    for (protocol, port, kind) in &snapshot.violations {
        let _ = writeln!(
            output,
            "synwatch_listener_policy_violation{{protocol=\"{}\",port=\"{port}\",kind=\"{}\"}} 1",
            protocol.name(),
            kind.label()
        );
    }
}

/// The per-target families, straight from the results.
pub fn render_targets(targets: &[TargetView<'_>], output: &mut Vec<u8>) {
    header(
        output,
        "synwatch_target_ports",
        "Ports of the last completed scan by protocol and state (tcp: open, suspect (SYN-ACK from a host judged all_open or synproxy), unverified (SYN-ACK whose real handshake failed), closed, filtered; udp: open, closed, filtered, open|filtered); the states sum to the ports scanned.",
    );
    for target in targets {
        if let Some(results) = target.results {
            let ports = results.space().ports();
            if ports.count_of(Protocol::Tcp) > 0 {
                let counts = results.counts_of(Protocol::Tcp);
                for (state, count) in [
                    ("open", counts.open),
                    ("suspect", counts.suspect),
                    ("unverified", counts.unverified),
                    ("closed", counts.closed),
                    ("filtered", counts.filtered),
                ] {
                    let _ = writeln!(
                        output,
                        "synwatch_target_ports{{target=\"{}\",proto=\"tcp\",state=\"{state}\"}} {count}",
                        target.label_text
                    );
                }
            }
            if ports.count_of(Protocol::Udp) > 0 {
                let counts = results.counts_of(Protocol::Udp);
                for (state, count) in [
                    ("open", counts.open),
                    ("closed", counts.closed),
                    ("filtered", counts.filtered),
                    ("open|filtered", counts.open_filtered),
                ] {
                    let _ = writeln!(
                        output,
                        "synwatch_target_ports{{target=\"{}\",proto=\"udp\",state=\"{state}\"}} {count}",
                        target.label_text
                    );
                }
            }
        }
    }
    header(
        output,
        "synwatch_target_hosts_responding",
        "Hosts that answered at least one probe with SYN-ACK or RST in the last completed scan.",
    );
    for target in targets {
        if let Some(results) = target.results {
            let _ = writeln!(
                output,
                "synwatch_target_hosts_responding{{target=\"{}\"}} {}",
                target.label_text,
                results.hosts_responding()
            );
        }
    }
    header(
        output,
        "synwatch_target_hosts_suspect",
        "Hosts of the last completed scan whose SYN-ACKs are not trusted, by reason: all_open (canaries and almost every port answer SYN-ACK) or synproxy (a SYN proxy's fingerprint).",
    );
    for target in targets {
        if let Some(results) = target.results {
            for (reason, count) in synwatch_engine::Suspect::ALL.iter().zip(results.hosts_suspect()) {
                let _ = writeln!(
                    output,
                    "synwatch_target_hosts_suspect{{target=\"{}\",reason=\"{}\"}} {count}",
                    target.label_text,
                    reason.name()
                );
            }
        }
    }
    let attempts = [
        (
            "synwatch_target_last_scan_success",
            "1 if the last scan of the target completed, 0 if it failed or timed out.",
        ),
        ("synwatch_target_last_scan_timestamp_seconds", "When the last scan of the target ended."),
        ("synwatch_target_last_scan_duration_seconds", "How long the last scan of the target ran."),
    ];
    for (index, (name, help)) in attempts.iter().enumerate() {
        header(output, name, help);
        for target in targets {
            if let Some(attempt) = target.last_attempt {
                let value = match index {
                    0 => f64::from(u8::from(attempt.success)),
                    1 => attempt.timestamp,
                    _ => attempt.duration_seconds,
                };
                let _ = writeln!(output, "{name}{{target=\"{}\"}} {value}", target.label_text);
            }
        }
    }
    header(output, "synwatch_target_scan_interval_seconds", "The configured time between two scans of the target.");
    for target in targets {
        let _ = writeln!(
            output,
            "synwatch_target_scan_interval_seconds{{target=\"{}\"}} {}",
            target.label_text, target.interval_seconds
        );
    }
    let policy_counts = [
        (
            "synwatch_target_unexpected_open_ports",
            "Open ports (over all hosts) the target's expect: policy does not allow.",
        ),
        (
            "synwatch_target_expected_ports_missing",
            "Ports in the target's expect.open found closed or filtered (over the hosts they apply to).",
        ),
    ];
    for (index, (name, help)) in policy_counts.iter().enumerate() {
        header(output, name, help);
        for target in targets {
            if let Some(policy) = target.policy {
                let value = if index == 0 { policy.unexpected_open } else { policy.expected_missing };
                let _ = writeln!(output, "{name}{{target=\"{}\"}} {value}", target.label_text);
            }
        }
    }
    header(
        output,
        "synwatch_port_policy_violation",
        "1 for each port that breaks the target's expect: policy (kind: unexpected_open or expected_missing), within details_budget.",
    );
    let mut digits = itoa::Buffer::new();
    for target in targets {
        let Some(policy) = target.policy else { continue };
        for violation in policy.violations.iter().take(target.violation_series as usize) {
            output.extend_from_slice(b"synwatch_port_policy_violation{target=\"");
            output.extend_from_slice(target.label_text.as_bytes());
            output.extend_from_slice(b"\",ip=\"");
            output.extend_from_slice(violation.address.to_string().as_bytes());
            output.extend_from_slice(b"\",port=\"");
            output.extend_from_slice(digits.format(violation.port.number).as_bytes());
            output.extend_from_slice(b"\",proto=\"");
            output.extend_from_slice(violation.port.protocol.name().as_bytes());
            output.extend_from_slice(b"\",kind=\"");
            output.extend_from_slice(violation.kind.label().as_bytes());
            output.extend_from_slice(b"\"} 1\n");
        }
    }
    header(
        output,
        "synwatch_port_open",
        "1 if the port answered SYN-ACK in the last completed scan, 0 if closed or filtered; a suspect host's SYN-ACKs have no series here but one in synwatch_port_suspect (targets with details: true).",
    );
    let (mut suspect, mut unverified) = (Vec::new(), Vec::new());
    for target in targets {
        if let Some(results) = target.results {
            let others = Others { suspect: &mut suspect, unverified: &mut unverified };
            render_port_open(target, results, output, others);
        }
    }
    header(
        output,
        "synwatch_port_suspect",
        "1 for a port that answered SYN-ACK from a host judged suspect, with the reason (targets with details: true, within the same budget as synwatch_port_open).",
    );
    output.extend_from_slice(&suspect);
    header(
        output,
        "synwatch_port_unverified",
        "1 for a port that answered SYN-ACK but failed the real handshake of verify: connect, with the verdict (targets with details: true, within the same budget as synwatch_port_open).",
    );
    output.extend_from_slice(&unverified);
}

/// Where [`render_port_open`] writes the series of ports not counted open.
pub(super) struct Others<'a> {
    /// `synwatch_port_suspect` series.
    pub(super) suspect: &'a mut Vec<u8>,
    /// `synwatch_port_unverified` series.
    pub(super) unverified: &'a mut Vec<u8>,
}

/// Writes `synwatch_port_open` series into `output`, and those of suspect and unverified ports
/// into `others`, at most `limit` in all.
pub(super) fn render_port_open(
    target: &TargetView<'_>,
    results: &ScanResults,
    output: &mut Vec<u8>,
    others: Others<'_>,
) {
    let (name, limit) = (target.label_text, target.detail_series);
    let space = results.space();
    let ports = space.ports().ports();
    let port_count = ports.len() as u64;
    let mut written = 0u64;
    let mut address_text = String::with_capacity(48);
    let mut digits = itoa::Buffer::new();
    for host in 0..space.hosts().len() {
        if written >= limit {
            return;
        }
        let Some(address) = space.hosts().address_at(host) else {
            return;
        };
        address_text.clear();
        let _ = std::fmt::Write::write_fmt(&mut address_text, format_args!("{address}"));
        // A named target's address carries the name it came from (names are validated, so no
        // escaping is needed: letters, digits, '-', '_' and '.').
        if let Some(hostname) = target.names.and_then(|names| names.name_of(address)) {
            address_text.push_str("\",hostname=\"");
            address_text.push_str(hostname);
        }
        let reason = results.suspect_of(address);
        for (slot, port) in ports.iter().enumerate() {
            let state = results.get(host * port_count + slot as u64);
            if state == PortState::Unknown {
                continue;
            }
            if written >= limit {
                return;
            }
            written += 1;
            if state == PortState::Open
                && let Some(verdict) = results.unverified_of(address, *port)
            {
                let _ = writeln!(
                    others.unverified,
                    "synwatch_port_unverified{{target=\"{name}\",ip=\"{address_text}\",port=\"{}\",proto=\"tcp\",verdict=\"{}\"}} 1",
                    port.number,
                    verdict.name()
                );
                continue;
            }
            if let (PortState::Open, Some(reason), true) = (state, reason, port.is_tcp()) {
                let _ = writeln!(
                    others.suspect,
                    "synwatch_port_suspect{{target=\"{name}\",ip=\"{address_text}\",port=\"{}\",proto=\"tcp\",reason=\"{}\"}} 1",
                    port.number,
                    reason.name()
                );
                continue;
            }
            output.extend_from_slice(b"synwatch_port_open{target=\"");
            output.extend_from_slice(name.as_bytes());
            output.extend_from_slice(b"\",ip=\"");
            output.extend_from_slice(address_text.as_bytes());
            output.extend_from_slice(b"\",port=\"");
            output.extend_from_slice(digits.format(port.number).as_bytes());
            output.extend_from_slice(b"\",proto=\"");
            output.extend_from_slice(port.protocol.name().as_bytes());
            output.extend_from_slice(if state == PortState::Open { b"\"} 1\n" } else { b"\"} 0\n" });
        }
    }
}
