//! Every scanner the benchmarks run in the lab, in one place: their command lines for one step
//! and the readers of what they write. `synwatch bench --compare` and `lab_bench` both take
//! their command lines from here. Pure: the callers run the commands inside the lab's scanner
//! namespace and hand the files' text in.
//!
//! * masscan: `-oL` list output (`open tcp 80 198.18.0.7 1700000000`).
//! * zmap (2.x scans one port per run): one run per port, one address per line of output, and
//!   its metadata JSON for replies, receive drops and send failures; or, for send-only
//!   measurements, one run whose extra probes replace the other ports ([`ZmapPorts`]).
//! * nmap: a SYN scan (`-sS`, it runs as root in the lab) with grepable output (`-oG`); nmap's
//!   connect() scan (`-sT`), the baseline of synwatch's connect() mode.
//! * synwatch itself, as a process ([`synwatch_scan`]), for `lab_bench`.
//!
//! The lab is IPv4 for them: zmap 2 scans IPv4 only, so the comparison keeps to one family.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::Ipv4Network;

/// A scanner to compare with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ExternalTool {
    /// masscan (Debian package `masscan`).
    Masscan,
    /// ZMap (Debian package `zmap`).
    Zmap,
    /// nmap's SYN scan (Debian package `nmap`).
    Nmap,
    /// nmap's connect() scan (`-sT`): `lab_bench`'s baseline for the connect() mode (not a
    /// `--compare` choice: `synwatch bench` measures SYN scans).
    NmapConnect,
}

/// How a zmap step covers several ports (zmap 2 scans one port per run).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ZmapPorts {
    /// One run per port, one after the other (results per port).
    #[default]
    OneRunPerPort,
    /// One run on the first port with as many copies of each probe as there are ports (the
    /// same packet count in one run): for send-only measurements, where nothing answers.
    CopiesOfTheFirst,
}

/// A `--compare` list that names something else.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolError {
    /// Not masscan, zmap or nmap.
    #[error("--compare {0:?}: expected masscan, zmap or nmap (comma-separated)")]
    Unknown(String),
    /// The same tool twice.
    #[error("--compare lists {0} twice")]
    Duplicate(&'static str),
}

impl ExternalTool {
    /// Its name in tables, plots and `--compare`.
    pub fn name(self) -> &'static str {
        match self {
            ExternalTool::Masscan => "masscan",
            ExternalTool::Zmap => "zmap",
            ExternalTool::Nmap => "nmap",
            ExternalTool::NmapConnect => "nmap-st",
        }
    }

    /// Parses `masscan,zmap,nmap` (any subset, any order, no repeats).
    pub fn parse_list(text: &str) -> Result<Vec<ExternalTool>, ToolError> {
        let mut tools = Vec::new();
        for item in text.split(',').map(str::trim).filter(|item| !item.is_empty()) {
            let tool = match item {
                "masscan" => ExternalTool::Masscan,
                "zmap" => ExternalTool::Zmap,
                "nmap" => ExternalTool::Nmap,
                other => return Err(ToolError::Unknown(other.to_string())),
            };
            if tools.contains(&tool) {
                return Err(ToolError::Duplicate(tool.name()));
            }
            tools.push(tool);
        }
        Ok(tools)
    }
}

/// One step of one tool.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolScan {
    /// The lab's IPv4 block.
    pub target: Ipv4Network,
    /// Ports.
    pub ports: Vec<u16>,
    /// Packets per second.
    pub rate: u64,
    /// Re-sends of an unanswered probe (zmap: extra copies of every probe).
    pub retries: u32,
    /// Seconds to wait for late replies.
    pub wait_seconds: u64,
    /// The scanner namespace's interface.
    pub interface: String,
    /// The scanner's address on it.
    pub source: Ipv4Addr,
    /// The gateway's hardware address (`aa:bb:..`).
    pub gateway_mac: String,
    /// Where the tool writes its results (zmap: a prefix, one file per port).
    pub output: String,
    /// Sender threads (synwatch `--sender-threads`, zmap `-T`; the others have one).
    pub sender_threads: u32,
    /// How zmap covers several ports.
    pub zmap_ports: ZmapPorts,
}

/// Which synwatch [`synwatch_scan`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SynwatchVariant {
    /// SYN scans through the TX ring (`--transmit ring`).
    Ring,
    /// SYN scans through raw IP sockets and `sendmmsg` (`--transmit sendmmsg`).
    Sendmmsg,
    /// The connect() mode (`--mode connect`).
    Connect,
}

/// The `synwatch scan` command line for `scan` (`binary` is the synwatch to measure): JSON lines
/// to `scan.output`, no progress line.
pub fn synwatch_scan(binary: &str, variant: SynwatchVariant, scan: &ToolScan) -> Vec<String> {
    let (option, value) = match variant {
        SynwatchVariant::Ring => ("--transmit", "ring"),
        SynwatchVariant::Sendmmsg => ("--transmit", "sendmmsg"),
        SynwatchVariant::Connect => ("--mode", "connect"),
    };
    strings(&[
        binary,
        "scan",
        &scan.target.to_string(),
        "-p",
        &port_list(&scan.ports),
        "--rate",
        &scan.rate.to_string(),
        "--wait",
        &format!("{}s", scan.wait_seconds),
        "--retries",
        &scan.retries.to_string(),
        option,
        value,
        "--sender-threads",
        &scan.sender_threads.to_string(),
        "--no-progress",
        "--format",
        "jsonl",
        "-o",
        &scan.output,
    ])
}

/// One command to run: the program and its arguments, plus the files it writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCommand {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Its results file.
    pub output: String,
    /// zmap's metadata file.
    pub metadata: Option<String>,
    /// The port a zmap run scans (its output has addresses only).
    pub port: Option<u16>,
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|item| item.to_string()).collect()
}

fn port_list(ports: &[u16]) -> String {
    ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",")
}

/// The commands of one step (zmap: one per port, run one after the other).
pub fn commands(tool: ExternalTool, scan: &ToolScan) -> Vec<ToolCommand> {
    let (target, rate) = (scan.target.to_string(), scan.rate.to_string());
    let (retries, wait, source) = (scan.retries.to_string(), scan.wait_seconds.to_string(), scan.source.to_string());
    match tool {
        ExternalTool::Masscan => vec![ToolCommand {
            argv: strings(&[
                "masscan",
                &target,
                "-p",
                &port_list(&scan.ports),
                "--rate",
                &rate,
                "--wait",
                &wait,
                "--retries",
                &retries,
                "--adapter",
                &scan.interface,
                "--adapter-ip",
                &source,
                "--router-mac",
                &scan.gateway_mac,
                "-oL",
                &scan.output,
            ]),
            output: scan.output.clone(),
            metadata: None,
            port: None,
        }],
        ExternalTool::Zmap => {
            let (runs, copies) = match scan.zmap_ports {
                ZmapPorts::OneRunPerPort => (scan.ports.clone(), 1),
                ZmapPorts::CopiesOfTheFirst => (scan.ports.first().copied().into_iter().collect(), scan.ports.len()),
            };
            runs.iter()
                .map(|&port| {
                    let output = format!("{}.{port}", scan.output);
                    let metadata = format!("{}.{port}.json", scan.output);
                    let probes = ((scan.retries as usize + 1) * copies).to_string();
                    // zmap blocks 198.18.0.0/15 by default; an empty block list lifts that, in the
                    // lab only.
                    ToolCommand {
                        argv: strings(&[
                            "zmap",
                            "-p",
                            &port.to_string(),
                            "-P",
                            &probes,
                            "-r",
                            &rate,
                            "-c",
                            &wait,
                            "-i",
                            &scan.interface,
                            "-S",
                            &source,
                            "-G",
                            &scan.gateway_mac,
                            "-T",
                            &scan.sender_threads.max(1).to_string(),
                            "-b",
                            "/dev/null",
                            "-o",
                            &output,
                            "-m",
                            &metadata,
                            "-q",
                            &target,
                        ]),
                        output,
                        metadata: Some(metadata),
                        port: Some(port),
                    }
                })
                .collect()
        }
        ExternalTool::Nmap => {
            let wait = format!("{}ms", scan.wait_seconds * 1000);
            vec![ToolCommand {
                argv: strings(&[
                    "nmap",
                    "-sS",
                    "-n",
                    "-Pn",
                    "-p",
                    &port_list(&scan.ports),
                    "--min-rate",
                    &rate,
                    "--max-rate",
                    &rate,
                    "--max-retries",
                    &retries,
                    "--max-rtt-timeout",
                    &wait,
                    "-e",
                    &scan.interface,
                    "-S",
                    &source,
                    "-oG",
                    &scan.output,
                    &target,
                ]),
                output: scan.output.clone(),
                metadata: None,
                port: None,
            }]
        }
        ExternalTool::NmapConnect => vec![ToolCommand {
            argv: strings(&[
                "nmap",
                "-sT",
                "-n",
                "-Pn",
                "-p",
                &port_list(&scan.ports),
                "--min-rate",
                &rate,
                "-oG",
                &scan.output,
                &target,
            ]),
            output: scan.output.clone(),
            metadata: None,
            port: None,
        }],
    }
}

/// The open (address, port)s in a tool's results file. Lines that do not parse are skipped
/// (comments, headers, status lines).
pub fn parse_open(tool: ExternalTool, text: &str, port: Option<u16>) -> BTreeSet<(IpAddr, u16)> {
    let mut open = BTreeSet::new();
    for line in text.lines() {
        match tool {
            ExternalTool::Masscan => {
                // open tcp 80 198.18.0.7 1700000000
                let fields: Vec<&str> = line.split_whitespace().collect();
                if let ["open", "tcp", port, address, ..] = fields[..]
                    && let (Ok(port), Ok(address)) = (port.parse(), address.parse())
                {
                    open.insert((address, port));
                }
            }
            ExternalTool::Zmap => {
                if let (Some(port), Ok(address)) = (port, line.trim().parse()) {
                    open.insert((address, port));
                }
            }
            ExternalTool::Nmap | ExternalTool::NmapConnect => {
                open.extend(nmap_line_ports_in_state(line, "open"));
            }
        }
    }
    open
}

/// The (address, port)s nmap's grepable output (`-oG`) lists in `state` (`open`, `closed`,
/// `filtered`, `open|filtered`). Ports nmap folded into an "Ignored State" are not listed.
pub fn nmap_ports_in_state(text: &str, state: &str) -> BTreeSet<(IpAddr, u16)> {
    text.lines().flat_map(|line| nmap_line_ports_in_state(line, state)).collect()
}

fn nmap_line_ports_in_state(line: &str, state: &str) -> Vec<(IpAddr, u16)> {
    // Host: 198.18.0.7 ()\tPorts: 80/open/tcp//http///, 443/closed/tcp//https///
    let Some(rest) = line.strip_prefix("Host: ") else { return Vec::new() };
    let Some(address) = rest.split_whitespace().next().and_then(|text| text.parse().ok()) else {
        return Vec::new();
    };
    let Some((_, ports)) = rest.split_once("Ports: ") else { return Vec::new() };
    ports
        .split(", ")
        .filter_map(|entry| {
            let mut parts = entry.trim().split('/');
            match (parts.next(), parts.next()) {
                (Some(port), Some(found)) if found == state => Some((address, port.parse().ok()?)),
                _ => None,
            }
        })
        .collect()
}

/// What zmap's metadata file says about one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ZmapMetadata {
    /// Classified replies (SYN-ACK and RST).
    pub replies: u64,
    /// Packets the capture dropped (`pcap_drop` + `pcap_ifdrop`).
    pub receive_drops: u64,
    /// Failed sends.
    pub send_errors: u64,
}

/// Reads zmap's metadata JSON; `None` when it is not zmap's.
pub fn parse_zmap_metadata(text: &str) -> Option<ZmapMetadata> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    let field = |name: &str| value.get(name).and_then(serde_json::Value::as_u64);
    Some(ZmapMetadata {
        replies: field("success_total")? + field("failure_total")?,
        receive_drops: field("pcap_drop")? + field("pcap_ifdrop").unwrap_or(0),
        send_errors: field("send_to_failures").unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan() -> ToolScan {
        ToolScan {
            target: "198.18.0.0/24".parse().unwrap(),
            ports: vec![80, 443],
            rate: 50_000,
            retries: 0,
            wait_seconds: 1,
            interface: "swlab0s".into(),
            source: Ipv4Addr::new(198, 19, 255, 1),
            gateway_mac: "02:00:00:00:00:02".into(),
            output: "/tmp/step".into(),
            sender_threads: 1,
            zmap_ports: ZmapPorts::OneRunPerPort,
        }
    }

    #[test]
    fn lists_parse_and_bad_names_are_refused() {
        assert_eq!(
            ExternalTool::parse_list("zmap, masscan,nmap"),
            Ok(vec![ExternalTool::Zmap, ExternalTool::Masscan, ExternalTool::Nmap])
        );
        assert_eq!(ExternalTool::parse_list(""), Ok(vec![]));
        assert_eq!(ExternalTool::parse_list("masscan,unicornscan"), Err(ToolError::Unknown("unicornscan".into())));
        assert_eq!(ExternalTool::parse_list("zmap,zmap"), Err(ToolError::Duplicate("zmap")));
    }

    #[test]
    fn every_tool_gets_the_same_target_rate_and_ports() {
        let masscan = commands(ExternalTool::Masscan, &scan());
        assert_eq!(masscan.len(), 1);
        let argv = masscan[0].argv.join(" ");
        assert!(argv.starts_with("masscan 198.18.0.0/24 -p 80,443 --rate 50000 --wait 1 --retries 0"), "{argv}");
        assert!(argv.contains("--router-mac 02:00:00:00:00:02") && argv.ends_with("-oL /tmp/step"), "{argv}");
        let zmap = commands(ExternalTool::Zmap, &scan());
        assert_eq!(zmap.iter().map(|command| command.port).collect::<Vec<_>>(), [Some(80), Some(443)]);
        let argv = zmap[1].argv.join(" ");
        assert!(argv.starts_with("zmap -p 443 -P 1 -r 50000 -c 1 -i swlab0s -S 198.19.255.1"), "{argv}");
        assert!(argv.contains("-G 02:00:00:00:00:02 -T 1 -b /dev/null"), "{argv}");
        assert!(argv.ends_with("-b /dev/null -o /tmp/step.443 -m /tmp/step.443.json -q 198.18.0.0/24"), "{argv}");
        // Send-only: one run, a copy of each probe per port, two threads.
        let send_only = ToolScan { zmap_ports: ZmapPorts::CopiesOfTheFirst, sender_threads: 2, ..scan() };
        let zmap = commands(ExternalTool::Zmap, &send_only);
        assert_eq!(zmap.len(), 1);
        let argv = zmap[0].argv.join(" ");
        assert!(argv.starts_with("zmap -p 80 -P 2 -r 50000") && argv.contains("-T 2"), "{argv}");
        let connect = commands(ExternalTool::NmapConnect, &scan())[0].argv.join(" ");
        assert_eq!(connect, "nmap -sT -n -Pn -p 80,443 --min-rate 50000 -oG /tmp/step 198.18.0.0/24");
        let synwatch = synwatch_scan("/bin/synwatch", SynwatchVariant::Connect, &send_only).join(" ");
        assert_eq!(
            synwatch,
            "/bin/synwatch scan 198.18.0.0/24 -p 80,443 --rate 50000 --wait 1s --retries 0 --mode connect --sender-threads 2 --no-progress --format jsonl -o /tmp/step"
        );
        let nmap = commands(ExternalTool::Nmap, &scan())[0].argv.join(" ");
        assert!(nmap.starts_with("nmap -sS -n -Pn -p 80,443 --min-rate 50000 --max-rate 50000 --max-retries 0"));
        assert!(nmap.ends_with("-oG /tmp/step 198.18.0.0/24"), "{nmap}");
    }

    #[test]
    fn results_files_are_read_and_noise_is_skipped() {
        let masscan = "#masscan\nopen tcp 80 198.18.0.7 1700000000\nopen tcp 443 198.18.0.9 1700000001\nopen udp 53 198.18.0.1 1\nopen tcp x 198.18.0.1 1\n# end\n";
        let found = parse_open(ExternalTool::Masscan, masscan, None);
        assert_eq!(
            found.into_iter().collect::<Vec<_>>(),
            [("198.18.0.7".parse().unwrap(), 80), ("198.18.0.9".parse().unwrap(), 443)]
        );
        let zmap = "198.18.0.3\n198.18.0.4\nnot an address\n";
        assert_eq!(parse_open(ExternalTool::Zmap, zmap, Some(22)).len(), 2);
        assert!(parse_open(ExternalTool::Zmap, zmap, None).is_empty(), "zmap output needs the run's port");
        let nmap = "# Nmap 7.93 scan initiated\nHost: 198.18.0.7 ()\tStatus: Up\nHost: 198.18.0.7 ()\tPorts: 80/open/tcp//http///, 443/closed/tcp//https///\tIgnored State: closed (0)\nHost: 198.18.0.8 ()\tPorts: 443/open/tcp//https///\n# Nmap done\n";
        let found = parse_open(ExternalTool::Nmap, nmap, None);
        assert_eq!(
            found.into_iter().collect::<Vec<_>>(),
            [("198.18.0.7".parse().unwrap(), 80), ("198.18.0.8".parse().unwrap(), 443)]
        );
    }

    #[test]
    fn nmap_udp_states_are_read_per_state() {
        let nmap = "Host: 198.18.0.7 ()\tPorts: 53/open/udp//domain///, 123/closed/udp//ntp///, 161/open|filtered/udp//snmp///\n\
                    Host: 198.18.0.8 ()\tPorts: 53/closed/udp//domain///\tIgnored State: open|filtered (4)\n";
        let closed: Vec<_> = nmap_ports_in_state(nmap, "closed").into_iter().collect();
        assert_eq!(closed, [("198.18.0.7".parse().unwrap(), 123), ("198.18.0.8".parse().unwrap(), 53)]);
        let silent: Vec<_> = nmap_ports_in_state(nmap, "open|filtered").into_iter().collect();
        assert_eq!(silent, [("198.18.0.7".parse().unwrap(), 161)]);
        assert_eq!(nmap_ports_in_state(nmap, "open").len(), 1);
    }

    #[test]
    fn zmap_metadata_gives_replies_drops_and_send_failures() {
        let text = r#"{ "pcap_recv": 16, "pcap_drop": 3, "pcap_ifdrop": 1, "send_to_failures": 2, "total_sent": 16, "success_total": 5, "failure_total": 11 }"#;
        assert_eq!(parse_zmap_metadata(text), Some(ZmapMetadata { replies: 16, receive_drops: 4, send_errors: 2 }));
        assert_eq!(parse_zmap_metadata("{}"), None);
        assert_eq!(parse_zmap_metadata("not json"), None);
    }
}
