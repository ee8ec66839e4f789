//! `lab_bench metrics-render`, `exporter-memory` and `probe-latency`: the exporter's own costs
//! (rendering `/metrics`, resident memory of `synwatch serve`) and `/probe` against
//! prometheus-blackbox-exporter's tcp prober, with the HTTP helpers they share.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use synwatch_lab::{Lab, LabConfig};

use crate::{Arguments, median, status_kib};

pub fn metrics_render(renders: usize) -> Result<()> {
    let fixture = synwatch_benches::MetricsFixture::new();
    let mut output = Vec::new();
    let mut times = Vec::with_capacity(renders);
    let pid = std::process::id();
    fixture.render(&mut output);
    let rss_after_first = status_kib(pid, "VmRSS")?;
    let mut rss_after_tenth = 0;
    for render in 0..renders {
        // A fresh buffer each time, as the server allocates one per scrape.
        let mut output = Vec::with_capacity(64 << 10);
        let started = Instant::now();
        fixture.render(&mut output);
        times.push(started.elapsed().as_secs_f64() * 1e3);
        if render == 9 {
            rss_after_tenth = status_kib(pid, "VmRSS")?;
        }
    }
    let rss_after_all = status_kib(pid, "VmRSS")?;
    // The baseline: the same 100,000 series as a `prometheus` crate IntGaugeVec, gathered and
    // text-encoded the usual way.
    let registry = prometheus::Registry::new();
    let gauge = prometheus::IntGaugeVec::new(
        prometheus::Opts::new("synwatch_port_open", "baseline"),
        &["target", "ip", "port"],
    )?;
    registry.register(Box::new(gauge.clone()))?;
    for (_, address, port, state) in fixture.results.known() {
        gauge
            .with_label_values(&["bench", &address.to_string(), &port.to_string()])
            .set(i64::from(state == synwatch_engine::PortState::Open));
    }
    let rss_before_baseline = status_kib(pid, "VmRSS")?;
    let mut baseline_times = Vec::new();
    let mut baseline_bytes = 0;
    for _ in 0..renders.min(20) {
        let started = Instant::now();
        let mut text = Vec::new();
        prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &registry.gather(), &mut text)?;
        baseline_times.push(started.elapsed().as_secs_f64() * 1e3);
        baseline_bytes = text.len();
    }
    let rss_after_baseline = status_kib(pid, "VmRSS")?;
    let series = output.split(|&byte| byte == b'\n').filter(|line| line.starts_with(b"synwatch_port_open{")).count();
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    println!("| series | body bytes | median ms | p95 ms | max ms | RSS KiB after 1 / 10 / {renders} renders |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| {series} | {} | {:.1} | {:.1} | {:.1} | {rss_after_first} / {rss_after_tenth} / {rss_after_all} |",
        output.len(),
        sorted[sorted.len() / 2],
        sorted[sorted.len() * 95 / 100],
        sorted[sorted.len() - 1],
    );
    let baseline = median(baseline_times.clone());
    println!(
        "| baseline: prometheus crate IntGaugeVec, gather + TextEncoder, {} renders | {baseline_bytes} | {baseline:.1} ({:.1}x synwatch) | | {:.1} | {rss_before_baseline} / - / {rss_after_baseline} (after the vec was filled / after the renders) |",
        baseline_times.len(),
        baseline / sorted[sorted.len() / 2],
        baseline_times.iter().copied().fold(0.0, f64::max),
    );
    Ok(())
}

/// Waits for `path` to exist, at most `seconds`.
fn wait_for_file(path: &std::path::Path, seconds: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !path.exists() {
        if Instant::now() > deadline {
            bail!("{} did not appear within {seconds} s", path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

pub fn exporter_memory(arguments: &Arguments) -> Result<()> {
    let scratch = std::env::temp_dir().join(format!("lab-bench-exporter-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;
    println!("| synwatch serve | RSS MiB |");
    println!("|---|---|");
    // Idle on the embedded default (loopback only), in the host's namespace.
    let idle_state = scratch.join("idle-state");
    let mut idle = Command::new(&arguments.synwatch)
        .args(["serve", "--listen", "127.0.0.1:0", "--log-level", "warn", "--state-dir"])
        .arg(&idle_state)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    // Its first loopback scan comes within 5 s (the startup jitter); after it, it is idle.
    wait_for_file(&idle_state.join("state.json"), 30)?;
    std::thread::sleep(Duration::from_secs(2));
    let idle_rss = status_kib(idle.id(), "VmRSS")?;
    idle.kill()?;
    idle.wait()?;
    println!("| idle, embedded loopback config (21 ports × 2 addresses) | {:.1} |", idle_rss as f64 / 1024.0);
    // The baseline: prometheus-blackbox-exporter idle after three tcp_connect probes of
    // 127.0.0.1:22 (loopback only).
    if let Ok(mut blackbox) = Command::new("prometheus-blackbox-exporter")
        .args(["--config.file=/etc/prometheus/blackbox.yml", "--web.listen-address=127.0.0.1:19115"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        std::thread::sleep(Duration::from_secs(2));
        let client = http_client();
        for _ in 0..3 {
            let _ = client.get("http://127.0.0.1:19115/probe?module=tcp_connect&target=127.0.0.1:22").call();
        }
        std::thread::sleep(Duration::from_secs(1));
        let rss = status_kib(blackbox.id(), "VmRSS");
        let _ = blackbox.kill();
        let status = blackbox.wait()?;
        let rss =
            rss.with_context(|| format!("prometheus-blackbox-exporter exited early ({status}); is port 19115 taken?"))?;
        println!(
            "| baseline: prometheus-blackbox-exporter, idle after 3 tcp_connect probes | {:.1} |",
            rss as f64 / 1024.0
        );
    }

    let listener: SocketAddr = "0.0.0.0:80".parse().expect("valid");
    let lab = Lab::build(LabConfig {
        target_ranges: vec!["198.18.0.0/16".parse().expect("valid")],
        listeners: vec![listener],
        ..LabConfig::default()
    })?;
    let config = scratch.join("synwatch.yaml");
    std::fs::write(
        &config,
        "engine: {max_rate: 200000}\ndefaults: {interval: 1h, timeout: 5m, retries: 1, wait: 1s}\n\
         targets:\n  - name: lab\n    addresses: [198.18.0.0/16]\n    ports: \"22,25,53,80,443,3306,5432,6379,8080,9100\"\n    details: true\n",
    )?;
    let state = scratch.join("state");
    let mut serve = lab
        .scanner_command(&arguments.synwatch)
        .args(["serve", "--listen", "127.0.0.1:10045", "--log-level", "warn", "--config"])
        .arg(&config)
        .arg("--state-dir")
        .arg(&state)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    // `ip netns exec` execs synwatch in place, so the child's pid is synwatch's.
    std::thread::sleep(Duration::from_millis(300));
    let before = status_kib(serve.id(), "VmRSS")?;
    let started = Instant::now();
    wait_for_file(&state.join("state.json"), 120)?;
    let scan_seconds = started.elapsed().as_secs_f64();
    let peak = status_kib(serve.id(), "VmHWM")?;
    std::thread::sleep(Duration::from_secs(2));
    let after = status_kib(serve.id(), "VmRSS")?;
    serve.kill()?;
    serve.wait()?;
    let loaded = synwatch_exporter::state::StateStore::new(&state).load();
    let open =
        loaded.records.get("lab").and_then(|record| record.results.as_ref()).map_or(0, |results| results.counts().open);
    println!("| (the scan found {open} of 65,536 open ports 80) | |");
    println!("| lab target /16 × 10 ports, at start | {:.1} |", before as f64 / 1024.0);
    println!(
        "| lab target /16 × 10 ports, peak while scanning (VmHWM; scan done {scan_seconds:.1} s after start) | {:.1} |",
        peak as f64 / 1024.0
    );
    println!(
        "| lab target /16 × 10 ports, idle after the scan, holding 655,360 results | {:.1} |",
        after as f64 / 1024.0
    );
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

/// An HTTP client (ureq) that keeps its connection alive between requests and takes error
/// statuses as answers.
pub(crate) fn http_client() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// Sends a GET and reads the answer; returns the status and the body.
pub(crate) fn get(client: &ureq::Agent, address: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut response = client.get(format!("http://{address}{path}")).call()?;
    let status = response.status().as_u16();
    Ok((status, response.body_mut().with_config().limit(64 << 20).read_to_string()?))
}

fn sample_value(body: &str, name: &str) -> Option<f64> {
    body.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Runs `requests` through `parallel` keep-alive connections (each takes the next request until
/// none is left) and returns the wall time (each connection's opening included); every answer
/// must be 200 with `success` = 1.
fn fan_out(address: SocketAddr, requests: &[String], parallel: usize, success: &str) -> Result<Duration> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    // One client per worker: each keeps one connection alive, opened by its first request.
    let mut clients: Vec<ureq::Agent> = (0..parallel).map(|_| http_client()).collect();
    let started = Instant::now();
    std::thread::scope(|scope| -> Result<()> {
        let workers: Vec<_> = clients
            .iter_mut()
            .map(|client| {
                let next = &next;
                scope.spawn(move || -> Result<()> {
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        let Some(path) = requests.get(index) else { return Ok(()) };
                        let (status, body) = get(client, address, path)?;
                        if status != 200 || sample_value(&body, success) != Some(1.0) {
                            bail!("{path}: {status}\n{body}");
                        }
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().expect("a client thread panicked")?;
        }
        Ok(())
    })?;
    Ok(started.elapsed())
}

pub fn probe_latency(arguments: &Arguments, repetitions: usize, max_rate: Option<u64>) -> Result<()> {
    let scratch = std::env::temp_dir().join(format!("lab-bench-probe-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;
    let ports = [22u16, 80, 443];
    let lab = Lab::build(LabConfig {
        target_ranges: vec!["198.18.0.0/24".parse().expect("valid")],
        listeners: ports.iter().map(|port| SocketAddr::from(([0, 0, 0, 0], *port))).collect(),
        ..LabConfig::default()
    })?;
    // A name server in the scanner namespace for the rows by name: dnsmasq on its 127.0.0.1:53,
    // answering only for synwatch.test; `ip netns exec` gives the programs started in the
    // namespace /etc/netns/<namespace>/resolv.conf as their /etc/resolv.conf (blackbox_exporter
    // reads it, as Go's resolver does).
    let netns_etc = std::path::PathBuf::from(format!("/etc/netns/{}", lab.scanner_namespace()));
    std::fs::create_dir_all(&netns_etc)?;
    std::fs::write(netns_etc.join("resolv.conf"), "nameserver 127.0.0.1\n")?;
    let mut dnsmasq = lab
        .scanner_command("dnsmasq")
        .args(["--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--bind-interfaces"])
        .args(["--listen-address=127.0.0.1", "--port=53", "--pid-file=", "--user=root", "--local=/synwatch.test/"])
        .args(["--host-record=host.synwatch.test,198.18.0.1", "--local-ttl=0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("dnsmasq (apt-get install dnsmasq-base)")?;
    let config = scratch.join("synwatch.yaml");
    let engine = max_rate.map(|rate| format!("engine: {{max_rate: {rate}}}\n")).unwrap_or_default();
    std::fs::write(
        &config,
        format!(
            "{engine}dns: {{nameservers: [\"127.0.0.1:53\"]}}\nondemand:\n  enabled: true\n  allow_targets: [198.18.0.0/24]\n  \
             rate_limit: 100000\n  burst: 100000\n  max_concurrent: 16\nmodules: {{no_canaries: {{canaries: 0}}}}\n"
        ),
    )?;
    let mut serve = lab
        .scanner_command(&arguments.synwatch)
        .args(["serve", "--listen", "127.0.0.1:10045", "--log-level", "warn", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let blackbox_config = scratch.join("blackbox.yml");
    std::fs::write(&blackbox_config, "modules:\n  tcp_connect: {prober: tcp, timeout: 5s}\n")?;
    let mut blackbox = lab
        .scanner_command("prometheus-blackbox-exporter")
        .arg(format!("--config.file={}", blackbox_config.display()))
        .arg("--web.listen-address=127.0.0.1:19115")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("prometheus-blackbox-exporter (apt-get install prometheus-blackbox-exporter)")?;
    std::thread::sleep(Duration::from_secs(2));
    let synwatch_address: SocketAddr = "127.0.0.1:10045".parse().expect("valid");
    let blackbox_address: SocketAddr = "127.0.0.1:19115".parse().expect("valid");
    let result = lab.in_scanner(|| -> Result<Vec<(String, f64, f64)>> {
        let mut rows = Vec::new();
        // One host × 3 ports: blackbox gets three parallel requests (as three Prometheus
        // targets would send them), synwatch one request.
        let one_host: Vec<String> =
            ports.iter().map(|port| format!("/probe?module=tcp_connect&target=198.18.0.1:{port}")).collect();
        let synwatch_one = ["/probe?target=198.18.0.1&ports=22,80,443".to_string()];
        // Medians of the two, alternating request by request.
        let alternate = |blackbox: &[String], synwatch: &[String]| -> Result<(f64, f64)> {
            let (mut blackbox_times, mut synwatch_times) = (Vec::new(), Vec::new());
            for _ in 0..repetitions {
                blackbox_times.push(fan_out(blackbox_address, blackbox, 3, "probe_success")?.as_secs_f64());
                synwatch_times.push(fan_out(synwatch_address, synwatch, 1, "probe_success")?.as_secs_f64());
            }
            Ok((median(blackbox_times), median(synwatch_times)))
        };
        let (blackbox_median, synwatch_median) = alternate(&one_host, &synwatch_one)?;
        rows.push(("1 host × 3 open ports".to_string(), blackbox_median, synwatch_median));
        // The same host by name: each blackbox request resolves it, synwatch's one request does
        // once (neither caches: the record's TTL is 0).
        let by_name: Vec<String> =
            ports.iter().map(|port| format!("/probe?module=tcp_connect&target=host.synwatch.test:{port}")).collect();
        let synwatch_name = ["/probe?target=host.synwatch.test&ports=22,80,443".to_string()];
        let (blackbox_median, synwatch_median) = alternate(&by_name, &synwatch_name)?;
        let (_, body) = get(&http_client(), synwatch_address, &synwatch_name[0])?;
        if sample_value(&body, "probe_ports_open") != Some(3.0) {
            bail!("synwatch by name did not find the 3 open ports:\n{body}");
        }
        rows.push(("1 host by name (dnsmasq) × 3 open ports".to_string(), blackbox_median, synwatch_median));
        // A /24 × 3 ports: 768 blackbox requests, 16 in parallel; one synwatch request.
        let mut slash_24 = Vec::new();
        for host in 0..=255 {
            for port in ports {
                slash_24.push(format!("/probe?module=tcp_connect&target=198.18.0.{host}:{port}"));
            }
        }
        let synwatch_24 = ["/probe?target=198.18.0.0%2F24&ports=22,80,443".to_string()];
        // The same without canaries: every host of the lab answers SYN-ACK on all three ports,
        // so its three canaries each double the probes (1,536 in all, past the 1,000 a probe
        // may send ahead of the rate).
        let synwatch_24_no_canaries = ["/probe?target=198.18.0.0%2F24&ports=22,80,443&module=no_canaries".to_string()];
        let mut blackbox_times = Vec::new();
        let mut synwatch_times = Vec::new();
        let mut no_canaries_times = Vec::new();
        for _ in 0..(repetitions / 10).max(3) {
            blackbox_times.push(fan_out(blackbox_address, &slash_24, 16, "probe_success")?.as_secs_f64());
            synwatch_times.push(fan_out(synwatch_address, &synwatch_24, 1, "probe_success")?.as_secs_f64());
            // What a probe sends ahead of the rate is paid back before the next may: the
            // default one's 1,536 probes borrowed 1,000 (100 ms at 10,000/s).
            std::thread::sleep(Duration::from_millis(200));
            no_canaries_times
                .push(fan_out(synwatch_address, &synwatch_24_no_canaries, 1, "probe_success")?.as_secs_f64());
        }
        // The synwatch answer must have found every port open.
        let (_, body) = get(&http_client(), synwatch_address, &synwatch_24[0])?;
        let open = sample_value(&body, "probe_ports_open").unwrap_or(0.0);
        if open != 768.0 {
            bail!("synwatch found {open} of 768 open ports:\n{body}");
        }
        let blackbox_median = median(blackbox_times);
        rows.push(("198.18.0.0/24 × 3 open ports (768)".to_string(), blackbox_median, median(synwatch_times)));
        rows.push((
            "198.18.0.0/24 × 3 open ports (768), synwatch module `canaries: 0`".to_string(),
            blackbox_median,
            median(no_canaries_times),
        ));
        Ok(rows)
    });
    let _ = serve.kill();
    let _ = serve.wait();
    let _ = blackbox.kill();
    let _ = blackbox.wait();
    let _ = dnsmasq.kill();
    let _ = dnsmasq.wait();
    let _ = std::fs::remove_dir_all(&netns_etc);
    let _ = std::fs::remove_dir_all(&scratch);
    let rows = result?;
    println!("| probe | blackbox_exporter (tcp) median | synwatch /probe median | synwatch / blackbox |");
    println!("|---|---|---|---|");
    for (what, blackbox, synwatch) in rows {
        println!("| {what} | {:.2} ms | {:.2} ms | {:.3}× |", blackbox * 1e3, synwatch * 1e3, synwatch / blackbox);
    }
    Ok(())
}
