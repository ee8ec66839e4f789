//! `/probe`: its parameters, its deadline and its answer, as pure functions.
//!
//! The answer is a fresh registry for one request, rendered by hand in the text format (a few
//! gauges, and with `details=1` one `probe_port_open` series per probe, bounded by
//! `max_probes_per_request`). It never touches the exporter's `/metrics` registry.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use synwatch_engine::{AddressFamily, HostName, TargetItem, parse_target_item};
use synwatch_engine::{AddressRange, Port, PortSet, PortState, Suspect};
use synwatch_io::Verdict;

use crate::config::{Module, OnDemandSection};

/// The parameters of one probe or scan request, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct ScanParams {
    /// The addresses asked for.
    pub targets: Vec<AddressRange>,
    /// The names asked for, resolved once before the allowlist is checked.
    pub names: Vec<HostName>,
    /// The ports (the request's, else the module's).
    pub ports: PortSet,
    /// The module's name, when one was named.
    pub module: Option<String>,
    /// The module (the defaults when none was named).
    pub preset: Module,
    /// The request's own `timeout`.
    pub timeout: Option<Duration>,
    /// `details=1`.
    pub details: bool,
    /// `debug=1`.
    pub debug: bool,
}

/// The most names one request may ask for.
pub const MAX_NAMES_PER_REQUEST: usize = 16;

/// Parses `a,b/24,c-d,db.example.org` into ranges and names.
pub fn parse_targets(text: &str) -> Result<(Vec<AddressRange>, Vec<HostName>), String> {
    let items: Vec<&str> = text.split([',', ' ']).map(str::trim).filter(|item| !item.is_empty()).collect();
    if items.is_empty() {
        return Err(
            "target is empty; expected addresses, CIDRs, ranges or host names such as 192.0.2.0/28 or db.example.org"
                .into(),
        );
    }
    let (mut ranges, mut names) = (Vec::new(), Vec::new());
    for item in items {
        match parse_target_item(item, AddressFamily::Any).map_err(|error| format!("target: {error}"))? {
            TargetItem::Addresses(range) => ranges.push(range),
            TargetItem::Name(name) if !names.contains(&name) => names.push(name),
            TargetItem::Name(_) => {}
        }
    }
    if names.len() > MAX_NAMES_PER_REQUEST {
        return Err(format!("target names {} host names, more than the limit of {MAX_NAMES_PER_REQUEST}", names.len()));
    }
    Ok((ranges, names))
}

/// Parses a timeout: `5s`, `1500ms`, `2m`, or plain seconds (`2.5`).
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    let duration = match text.parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && seconds > 0.0 && seconds < 1e9 => Duration::from_secs_f64(seconds),
        Ok(_) => return Err(format!("timeout {text:?}: expected a duration above zero")),
        Err(_) => humantime::parse_duration(text).map_err(|error| format!("timeout {text:?}: {error}"))?,
    };
    if duration.is_zero() {
        return Err(format!("timeout {text:?}: expected a duration above zero"));
    }
    Ok(duration)
}

fn parse_flag(name: &str, value: &str) -> Result<bool, String> {
    match value {
        "1" | "true" | "yes" => Ok(true),
        "0" | "false" | "no" | "" => Ok(false),
        _ => Err(format!("{name}={value:?}: expected 1 or 0")),
    }
}

/// Validates `/probe`'s query parameters against the config's modules. Unknown parameters are
/// ignored (Prometheus and proxies add their own); a repeated one is an error.
pub fn parse_probe_query(
    pairs: &[(String, String)],
    modules: &std::collections::BTreeMap<String, Module>,
) -> Result<ScanParams, String> {
    let mut seen = std::collections::BTreeSet::new();
    for (name, _) in pairs {
        if matches!(name.as_str(), "target" | "ports" | "module" | "timeout" | "details" | "debug")
            && !seen.insert(name.as_str())
        {
            return Err(format!("parameter {name:?} is given more than once"));
        }
    }
    let get = |name: &str| crate::query::query_value(pairs, name);
    let target = get("target").ok_or("missing parameter target (addresses, CIDRs or ranges)")?;
    scan_params(
        target,
        get("ports"),
        get("module"),
        get("timeout").map(parse_timeout).transpose()?,
        get("details").map(|value| parse_flag("details", value)).transpose()?.unwrap_or(false),
        get("debug").map(|value| parse_flag("debug", value)).transpose()?.unwrap_or(false),
        modules,
    )
}

/// Builds validated parameters from their parts (shared by `/probe` and the scans API).
pub fn scan_params(
    target: &str,
    ports: Option<&str>,
    module: Option<&str>,
    timeout: Option<Duration>,
    details: bool,
    debug: bool,
    modules: &std::collections::BTreeMap<String, Module>,
) -> Result<ScanParams, String> {
    let (targets, names) = parse_targets(target)?;
    let preset = match module {
        Some(name) => modules.get(name).cloned().ok_or_else(|| {
            let known: Vec<&str> = modules.keys().map(String::as_str).collect();
            format!(
                "unknown module {name:?}; configured: {}",
                if known.is_empty() { "none".into() } else { known.join(", ") }
            )
        })?,
        None => Module::default(),
    };
    let ports = match ports {
        Some(spec) => crate::config::serve_ports(spec)?,
        None => preset.ports.clone().ok_or("missing parameter ports (or a module with ports)")?,
    };
    Ok(ScanParams { targets, names, ports, module: module.map(str::to_string), preset, timeout, details, debug })
}

/// The deadline of a probe: the smallest of the request's `timeout`, the module's timeout and
/// the scrape timeout minus the offset (when Prometheus sent one), else `ondemand.timeout`.
/// When the offset would eat the whole scrape timeout, half the scrape timeout is used, so
/// the answer still comes first.
pub fn probe_deadline(
    section: &OnDemandSection,
    params: &ScanParams,
    scrape_timeout: Option<&str>,
) -> Result<(Duration, Vec<String>), String> {
    let mut candidates = Vec::new();
    let mut reasons = Vec::new();
    if let Some(timeout) = params.timeout {
        candidates.push(timeout);
        reasons.push(format!("timeout parameter {timeout:?}"));
    }
    if let Some(timeout) = params.preset.timeout {
        candidates.push(timeout);
        reasons.push(format!("module timeout {timeout:?}"));
    }
    if let Some(header) = scrape_timeout {
        let seconds: f64 = header
            .trim()
            .parse()
            .ok()
            .filter(|seconds: &f64| seconds.is_finite() && *seconds > 0.0 && *seconds < 1e9)
            .ok_or_else(|| format!("X-Prometheus-Scrape-Timeout-Seconds {header:?}: expected seconds above zero"))?;
        let offset = section.timeout_offset.as_secs_f64();
        let limit = if seconds > offset { (seconds - offset).max(seconds / 2.0) } else { seconds / 2.0 };
        candidates.push(Duration::from_secs_f64(limit));
        reasons.push(format!("scrape timeout {seconds}s - offset {offset}s"));
    }
    if candidates.is_empty() {
        candidates.push(section.timeout);
        reasons.push(format!("ondemand.timeout {:?}", section.timeout));
    }
    let deadline = candidates.into_iter().min().expect("at least one candidate");
    Ok((deadline, reasons))
}

/// What a finished (or cut-off) probe learned.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProbeOutcome {
    /// The scan finished (every probe answered, or all rounds and the wait done) in time.
    pub success: bool,
    /// Wall time of the request.
    pub duration: Duration,
    /// The deadline used.
    pub timeout: Duration,
    /// host × port pairs asked for.
    pub requested: u64,
    /// Pairs probed at least once.
    pub scanned: u64,
    /// Open, suspect, closed and filtered (ICMP, or no answer) pairs among those probed; open
    /// leaves out the SYN-ACKs of suspect hosts.
    pub open: u64,
    /// Pairs that answered SYN-ACK from a host judged suspect.
    pub suspect: u64,
    /// Pairs that answered SYN-ACK whose real handshake (`verify: connect`) failed.
    pub unverified: u64,
    /// Hosts judged suspect.
    pub hosts_suspect: u64,
    /// Closed pairs.
    pub closed: u64,
    /// Filtered pairs (no answer to TCP, or an ICMP error).
    pub filtered: u64,
    /// UDP pairs probed without any answer (`open|filtered`).
    pub open_filtered: u64,
    /// Hosts that answered on any port.
    pub hosts_responding: u64,
    /// With `details=1`: every requested pair and whether it is open.
    pub details: Vec<(IpAddr, Port, bool)>,
    /// With `details=1`: every pair that answered SYN-ACK from a suspect host, with the reason.
    pub suspect_details: Vec<(IpAddr, Port, Suspect)>,
}

/// What makes a SYN-ACK of an on-demand scan not an open: its host's verdict, and its
/// verification's.
#[derive(Debug, Clone, Default)]
pub struct Untrusted {
    /// Hosts judged suspect.
    pub suspects: Vec<(IpAddr, Suspect)>,
    /// Verdicts of the verification (`verify: connect` modules), failed or not.
    pub verdicts: Vec<(IpAddr, Port, Verdict)>,
}

/// Counts from the states of every requested pair (`Unknown`: no answer yet) and the number of
/// pairs probed at least once; pairs probed without an answer count as filtered. The SYN-ACKs
/// of `untrusted`'s suspect hosts count as suspect, and those whose verification failed as
/// unverified; neither as open.
pub fn tally(
    states: impl Iterator<Item = (IpAddr, Port, PortState)>,
    scanned: u64,
    details: bool,
    untrusted: &Untrusted,
) -> ProbeOutcome {
    let suspects = &untrusted.suspects;
    let mut outcome = ProbeOutcome { hosts_suspect: suspects.len() as u64, ..ProbeOutcome::default() };
    let mut responding = std::collections::BTreeSet::new();
    let suspect_of =
        |address: IpAddr| suspects.iter().find(|(suspect, _)| *suspect == address).map(|(_, reason)| *reason);
    let failed: std::collections::HashSet<(IpAddr, Port)> = untrusted
        .verdicts
        .iter()
        .filter(|(_, _, verdict)| *verdict != Verdict::Ok)
        .map(|&(address, port, _)| (address, port))
        .collect();
    let mut udp_unanswered = 0;
    for (address, port, state) in states {
        outcome.requested += 1;
        if port.is_udp() && matches!(state, PortState::Unknown | PortState::OpenFiltered) {
            udp_unanswered += 1;
        }
        if state == PortState::Open && failed.contains(&(address, port)) {
            outcome.unverified += 1;
            responding.insert(address);
            if details {
                outcome.details.push((address, port, false));
            }
            continue;
        }
        if state == PortState::Open
            && port.is_tcp()
            && let Some(reason) = suspect_of(address)
        {
            outcome.suspect += 1;
            responding.insert(address);
            if details {
                outcome.suspect_details.push((address, port, reason));
            }
            continue;
        }
        match state {
            PortState::Open => outcome.open += 1,
            PortState::Closed => outcome.closed += 1,
            _ => {}
        }
        if matches!(state, PortState::Open | PortState::Closed) {
            responding.insert(address);
        }
        if details {
            outcome.details.push((address, port, state == PortState::Open));
        }
    }
    let answered = outcome.open + outcome.suspect + outcome.unverified + outcome.closed;
    outcome.scanned = scanned.min(outcome.requested).max(answered);
    // Of the pairs probed without an answer, the UDP ones with no answer at all are
    // open|filtered (as far as they were probed); the rest are filtered.
    let unanswered = outcome.scanned - answered;
    outcome.open_filtered = udp_unanswered.min(unanswered);
    outcome.filtered = unanswered - outcome.open_filtered;
    outcome.hosts_responding = responding.len() as u64;
    outcome
}

/// The families a `/probe` answer holds (`probe_port_open` only when the module asks for
/// details). The test `probe_families_are_listed` keeps this list true.
pub const PROBE_FAMILIES: &[&str] = &[
    "probe_success",
    "probe_duration_seconds",
    "probe_timeout_seconds",
    "probe_ports_requested",
    "probe_ports_scanned",
    "probe_ports_open",
    "probe_ports_suspect",
    "probe_ports_unverified",
    "probe_ports_closed",
    "probe_ports_filtered",
    "probe_ports_open_filtered",
    "probe_hosts_responding",
    "probe_hosts_suspect",
    "probe_port_open",
    "probe_port_suspect",
];

/// The text-format answer of a probe.
pub fn render(outcome: &ProbeOutcome) -> String {
    let mut text = String::with_capacity(1024 + outcome.details.len() * 48);
    let mut gauge = |name: &str, help: &str, value: String| {
        let _ = write!(text, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n");
    };
    gauge(
        "probe_success",
        "1 if the scan finished within its deadline, else 0.",
        u8::from(outcome.success).to_string(),
    );
    gauge("probe_duration_seconds", "Wall time of the probe.", format!("{}", outcome.duration.as_secs_f64()));
    gauge("probe_timeout_seconds", "The deadline the probe ran under.", format!("{}", outcome.timeout.as_secs_f64()));
    gauge("probe_ports_requested", "Host and port pairs asked for.", outcome.requested.to_string());
    gauge("probe_ports_scanned", "Host and port pairs probed at least once.", outcome.scanned.to_string());
    gauge("probe_ports_open", "Pairs found open (suspect hosts' SYN-ACKs left out).", outcome.open.to_string());
    gauge(
        "probe_ports_suspect",
        "Pairs that answered SYN-ACK from a host judged suspect (all_open or synproxy).",
        outcome.suspect.to_string(),
    );
    gauge(
        "probe_ports_unverified",
        "Pairs that answered SYN-ACK but failed the real handshake of verify: connect.",
        outcome.unverified.to_string(),
    );
    gauge("probe_ports_closed", "Pairs found closed.", outcome.closed.to_string());
    gauge(
        "probe_ports_filtered",
        "Pairs probed that gave an ICMP error, or (TCP) no answer.",
        outcome.filtered.to_string(),
    );
    gauge(
        "probe_ports_open_filtered",
        "UDP pairs probed that gave no answer at all (open|filtered).",
        outcome.open_filtered.to_string(),
    );
    gauge("probe_hosts_responding", "Hosts that answered on any port.", outcome.hosts_responding.to_string());
    gauge(
        "probe_hosts_suspect",
        "Hosts whose SYN-ACKs are not trusted: canaries and almost every port open, or a SYN proxy's fingerprint.",
        outcome.hosts_suspect.to_string(),
    );
    if !outcome.details.is_empty() {
        text.push_str(
            "# HELP probe_port_open 1 if the port answered (TCP: SYN-ACK; UDP: a datagram), else 0.\n# TYPE probe_port_open gauge\n",
        );
        for (address, port, open) in &outcome.details {
            let _ = writeln!(
                text,
                "probe_port_open{{ip=\"{address}\",port=\"{}\",proto=\"{}\"}} {}",
                port.number,
                port.protocol.name(),
                u8::from(*open)
            );
        }
    }
    if !outcome.suspect_details.is_empty() {
        text.push_str(
            "# HELP probe_port_suspect 1 for a port that answered SYN-ACK from a host judged suspect.\n# TYPE probe_port_suspect gauge\n",
        );
        for (address, port, reason) in &outcome.suspect_details {
            let _ = writeln!(
                text,
                "probe_port_suspect{{ip=\"{address}\",port=\"{}\",proto=\"tcp\",reason=\"{}\"}} 1",
                port.number,
                reason.name()
            );
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use synwatch_engine::Port;

    #[test]
    fn probe_families_are_listed() {
        let outcome = ProbeOutcome {
            details: vec![("192.0.2.1".parse().unwrap(), Port::tcp(80), true)],
            suspect_details: vec![("192.0.2.2".parse().unwrap(), Port::tcp(80), Suspect::AllOpen)],
            ..ProbeOutcome::default()
        };
        let text = render(&outcome);
        let names: Vec<&str> = text
            .lines()
            .filter_map(|line| line.strip_prefix("# HELP "))
            .map(|rest| rest.split(' ').next().unwrap_or_default())
            .collect();
        assert_eq!(names, PROBE_FAMILIES);
    }
    use std::collections::BTreeMap;

    fn pairs(query: &str) -> Vec<(String, String)> {
        form_urlencoded::parse(query.as_bytes()).into_owned().collect()
    }

    fn modules() -> BTreeMap<String, Module> {
        let web = Module {
            ports: Some(PortSet::parse("80,443").unwrap()),
            timeout: Some(Duration::from_secs(5)),
            ..Module::default()
        };
        BTreeMap::from([("web".to_string(), web)])
    }

    #[test]
    fn probe_parameters_are_validated() {
        let params = parse_probe_query(&pairs("target=198.18.0.0%2F28&module=web&details=1"), &modules()).unwrap();
        assert_eq!(params.ports.to_string(), "80,443");
        assert_eq!(params.targets.len(), 1);
        assert!(params.details && !params.debug);
        let params =
            parse_probe_query(&pairs("target=198.18.0.1,198.18.0.9&ports=22&timeout=2.5"), &modules()).unwrap();
        assert_eq!((params.targets.len(), params.timeout), (2, Some(Duration::from_millis(2500))));
        let params =
            parse_probe_query(&pairs("target=db.example.org,198.18.0.1,DB.example.org.&ports=22"), &modules()).unwrap();
        assert_eq!((params.targets.len(), params.names.len()), (1, 1), "names are kept once, beside addresses");
        assert_eq!(params.names[0].name(), "db.example.org");
        for (query, reason) in [
            ("ports=22", "missing parameter target"),
            ("target=198.18.0.1", "missing parameter ports"),
            ("target=host..example&ports=22", "empty label"),
            ("target=198.18.0.300&ports=22", "not an address"),
            ("target=198.18.0.1&ports=0", "ports"),
            ("target=198.18.0.1&module=nope", "unknown module \"nope\"; configured: web"),
            ("target=198.18.0.1&ports=22&timeout=-1", "timeout"),
            ("target=198.18.0.1&ports=22&timeout=0s", "above zero"),
            ("target=198.18.0.1&ports=22&details=maybe", "details"),
            ("target=198.18.0.1&target=198.18.0.2&ports=22", "more than once"),
        ] {
            let error = parse_probe_query(&pairs(query), &modules()).unwrap_err();
            assert!(error.contains(reason), "{query}: {error}");
        }
    }

    #[test]
    fn the_deadline_is_the_smallest_bound() {
        let section = OnDemandSection::default();
        let params = |query: &str| parse_probe_query(&pairs(query), &modules()).unwrap();
        let deadline = |query: &str, header: Option<&str>| probe_deadline(&section, &params(query), header).unwrap().0;
        assert_eq!(deadline("target=198.18.0.1&ports=22", None), section.timeout);
        assert_eq!(deadline("target=198.18.0.1&module=web", None), Duration::from_secs(5));
        assert_eq!(deadline("target=198.18.0.1&module=web&timeout=3s", None), Duration::from_secs(3));
        assert_eq!(deadline("target=198.18.0.1&module=web", Some("2")), Duration::from_millis(1500));
        assert_eq!(deadline("target=198.18.0.1&module=web&timeout=1s", Some("2")), Duration::from_secs(1));
        // An offset larger than the scrape timeout leaves half of it.
        assert_eq!(deadline("target=198.18.0.1&ports=22", Some("0.4")), Duration::from_millis(200));
        assert!(probe_deadline(&section, &params("target=198.18.0.1&ports=22"), Some("soon")).is_err());
    }

    #[test]
    fn the_answer_counts_what_was_probed() {
        let address: IpAddr = "198.18.0.1".parse().unwrap();
        let other: IpAddr = "198.18.0.2".parse().unwrap();
        let states = vec![
            (address, Port::tcp(22), PortState::Open),
            (address, Port::tcp(80), PortState::Closed),
            (other, Port::tcp(22), PortState::Unknown),
            (other, Port::tcp(80), PortState::Unknown),
        ];
        // Three pairs were sent: the third had no answer (filtered), the fourth was never sent.
        let outcome = tally(states.clone().into_iter(), 3, true, &Untrusted::default());
        assert_eq!(
            (outcome.requested, outcome.scanned, outcome.open, outcome.closed, outcome.filtered),
            (4, 3, 1, 1, 1)
        );
        assert_eq!(outcome.hosts_responding, 1);
        let text = render(&outcome);
        assert!(text.contains("probe_ports_scanned 3\n") && text.contains("probe_hosts_responding 1\n"), "{text}");
        assert!(text.contains("probe_port_open{ip=\"198.18.0.1\",port=\"22\",proto=\"tcp\"} 1\n"), "{text}");
        assert!(text.contains("probe_port_open{ip=\"198.18.0.2\",port=\"80\",proto=\"tcp\"} 0\n"), "{text}");
        // The same answers from a host judged a SYN proxy: its SYN-ACK is suspect, not open.
        let suspect = Untrusted { suspects: vec![(address, Suspect::Synproxy)], verdicts: Vec::new() };
        let outcome = tally(states.clone().into_iter(), 3, true, &suspect);
        assert_eq!(
            (outcome.open, outcome.suspect, outcome.closed, outcome.filtered, outcome.hosts_suspect),
            (0, 1, 1, 1, 1)
        );
        let text = render(&outcome);
        assert!(text.contains("probe_ports_open 0\n") && text.contains("probe_ports_suspect 1\n"), "{text}");
        assert!(
            text.contains("probe_port_suspect{ip=\"198.18.0.1\",port=\"22\",proto=\"tcp\",reason=\"synproxy\"} 1\n")
        );
        assert!(!text.contains("probe_port_open{ip=\"198.18.0.1\",port=\"22\",proto=\"tcp\"}"), "{text}");
        // Its verification failed instead: unverified, not open, and 0 in the details.
        let reset = Untrusted { suspects: Vec::new(), verdicts: vec![(address, Port::tcp(22), Verdict::Reset)] };
        let outcome = tally(states.into_iter(), 3, true, &reset);
        assert_eq!((outcome.open, outcome.unverified, outcome.closed), (0, 1, 1));
        let text = render(&outcome);
        assert!(text.contains("probe_ports_unverified 1\n"), "{text}");
        assert!(text.contains("probe_port_open{ip=\"198.18.0.1\",port=\"22\",proto=\"tcp\"} 0\n"), "{text}");
    }
}
