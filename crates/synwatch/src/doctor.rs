//! `synwatch doctor`: what this host and this process allow, which mode a scan would run in,
//! and what to change. It opens (and closes at once) the same sockets the engine would, and
//! sends nothing.

use std::net::IpAddr;

use anyhow::Result;
use clap::Args;
use synwatch_io::connect::default_max_inflight;
use synwatch_io::privileges::CapabilitySets;
use synwatch_io::route;
use synwatch_io::transmit::{RawIpTransmitter, RingTransmitter};

/// Arguments of `synwatch doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Targets whose path to show (default: 127.0.0.1 and ::1). Nothing is sent to them.
    targets: Vec<IpAddr>,
}

/// Prints the report.
pub fn run(args: DoctorArgs) -> Result<()> {
    let mut advice = Vec::new();
    let uid = nix::unistd::getuid();
    let euid = nix::unistd::geteuid();
    println!("user:            uid {uid}, euid {euid}");
    let sets = CapabilitySets::of_this_thread().unwrap_or_default();
    println!("capabilities:    effective {}", CapabilitySets::names(sets.effective));
    println!("                 permitted {}", CapabilitySets::names(sets.permitted));
    println!("                 ambient {}", CapabilitySets::names(sets.ambient));
    let net_raw_bounded = sets.bounding & (1 << 13) != 0;
    println!("                 cap_net_raw in the bounding set: {}", if net_raw_bounded { "yes" } else { "no" });

    let raw_ip = RawIpTransmitter::open(false, 1);
    let packet = RingTransmitter::open_socket();
    let describe = |result: &std::io::Result<()>| match result {
        Ok(()) => "yes".to_string(),
        Err(error) => format!("no ({error})"),
    };
    let raw_ip = raw_ip.map(drop);
    let packet = packet.map(drop);
    println!("raw IP socket:   {}", describe(&raw_ip));
    println!("packet socket:   {}", describe(&packet));
    let syn_possible = raw_ip.is_ok() && packet.is_ok();

    let (soft, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap_or((0, 0));
    println!("RLIMIT_NOFILE:   soft {soft}, hard {hard}");
    let inflight = default_max_inflight(soft.max(hard));
    println!("connect() mode:  up to {inflight} attempts in flight (soft limit raised to the hard one at start)");

    let targets =
        if args.targets.is_empty() { vec!["127.0.0.1".parse()?, "::1".parse()?] } else { args.targets.clone() };
    for target in targets {
        match route::resolve_path(target, None, None) {
            Ok(path) => {
                let transmitter = if path.is_loopback {
                    "raw IP + sendmmsg (loopback)"
                } else if target.is_ipv6() {
                    "raw IPv6 + sendmmsg"
                } else {
                    "AF_PACKET TX ring once the next hop is resolved"
                };
                println!("path to {target}: {}; SYN mode would use {transmitter}", path.describe());
            }
            Err(error) => println!("path to {target}: {error}"),
        }
    }

    let mode = if syn_possible { "syn" } else { "connect" };
    println!("mode (auto):     {mode}");
    if !syn_possible {
        let exe = std::env::current_exe().map(|path| path.display().to_string()).unwrap_or("synwatch".into());
        advice.push(format!(
            "SYN scans need CAP_NET_RAW: `sudo setcap cap_net_raw+ep {exe}`, or `AmbientCapabilities=CAP_NET_RAW` (with `CapabilityBoundingSet=CAP_NET_RAW`) in the systemd unit. Until then scans use connect(), which is slower and shows in the targets' logs."
        ));
        if !net_raw_bounded {
            advice.push("cap_net_raw is not in this process's bounding set: a container or unit removed it; add it there first.".into());
        }
    }
    if soft.max(hard) < 4096 {
        advice.push(format!(
            "RLIMIT_NOFILE is low ({soft}/{hard}): connect() scans keep at most {inflight} attempts in flight. Raise it (`LimitNOFILE=65536` in the unit, or `ulimit -n`)."
        ));
    }
    if advice.is_empty() {
        println!("\nnothing to change");
    } else {
        println!("\nwhat to change:");
        for line in advice {
            println!("- {line}");
        }
    }
    Ok(())
}
