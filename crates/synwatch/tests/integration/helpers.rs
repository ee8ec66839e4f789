//! Helpers shared by the integration tests: running the binary, parsing its JSON lines,
//! building lab fixtures with known ground truth, and for the exporter a running
//! `synwatch serve`, a Prometheus server and a small HTTP client.

use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;
use synwatch_lab::{Expected, Lab, LabConfig};

/// Path of the synwatch binary built for these tests.
pub fn synwatch() -> &'static str {
    env!("CARGO_BIN_EXE_synwatch")
}

/// Parses a network.
pub fn net(text: &str) -> IpNetwork {
    text.parse().unwrap()
}

/// Parses `--format jsonl` output into (ip, port, state), asserting that no (ip, port) appears
/// twice.
pub fn parse_jsonl(output: &Output) -> BTreeSet<(IpAddr, u16, Expected)> {
    parse_jsonl_with_proto(output)
        .into_iter()
        .map(|(ip, proto, port, state)| {
            assert_eq!(proto, "tcp", "{ip}:{port}");
            (ip, port, state)
        })
        .collect()
}

/// Parses `--format jsonl` output into (ip, proto, port, state), asserting that no (ip,
/// proto, port) appears twice.
pub fn parse_jsonl_with_proto(output: &Output) -> BTreeSet<(IpAddr, &'static str, u16, Expected)> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut seen = BTreeSet::new();
    let mut results = BTreeSet::new();
    for line in stdout.lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|error| panic!("bad JSON line {line:?}: {error}"));
        let ip: IpAddr = value["ip"].as_str().unwrap().parse().unwrap();
        let port = value["port"].as_u64().unwrap() as u16;
        let proto = match value["proto"].as_str().unwrap() {
            "tcp" => "tcp",
            "udp" => "udp",
            other => panic!("unknown proto {other}"),
        };
        let state = match value["state"].as_str().unwrap() {
            "open" => Expected::Open,
            "closed" => Expected::Closed,
            "filtered" => Expected::Filtered,
            "open|filtered" => Expected::OpenFiltered,
            other => panic!("unknown state {other}"),
        };
        assert!(seen.insert((ip, proto, port)), "{ip}:{proto}/{port} reported twice");
        results.insert((ip, proto, port, state));
    }
    results
}

/// Asserts that a command succeeded, showing its stderr otherwise.
pub fn assert_success(output: &Output) {
    assert!(
        output.status.success(),
        "exit {:?}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Deterministic pseudo-random listeners: `count` distinct (address, port) pairs inside
/// `range` on `ports`, avoiding `avoid`.
pub fn scattered_listeners(
    range: IpNetwork,
    ports: &[u16],
    count: usize,
    avoid: &[IpNetwork],
    seed: u64,
) -> Vec<SocketAddr> {
    let size = match range {
        IpNetwork::V4(v4) => u64::from(v4.size()),
        IpNetwork::V6(v6) => v6.size().min(u128::from(u64::MAX)) as u64,
    };
    let mut state = seed | 1;
    let mut chosen = BTreeSet::new();
    while chosen.len() < count {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let offset = state % size;
        let port = ports[(state >> 40) as usize % ports.len()];
        let address = match range {
            IpNetwork::V4(v4) => IpAddr::V4((u32::from(v4.network()) + offset as u32).into()),
            IpNetwork::V6(v6) => IpAddr::V6((u128::from(v6.network()) + u128::from(offset)).into()),
        };
        if avoid.iter().any(|network| network.contains(address)) {
            continue;
        }
        chosen.insert(SocketAddr::new(address, port));
    }
    chosen.into_iter().collect()
}

/// A lab answering for `range`, with `listeners` scattered listeners on `ports`, and the given
/// blackholed and prohibited sub-ranges.
pub fn lab_with(
    test: &str,
    range: &str,
    ports: &[u16],
    listeners: usize,
    blackholed: &[&str],
    prohibited: &[&str],
    loss_percent: u8,
) -> Option<Lab> {
    let range = net(range);
    let blackholed: Vec<IpNetwork> = blackholed.iter().map(|text| net(text)).collect();
    let prohibited: Vec<IpNetwork> = prohibited.iter().map(|text| net(text)).collect();
    let avoid: Vec<IpNetwork> = blackholed.iter().chain(&prohibited).copied().collect();
    let config = LabConfig {
        target_ranges: vec![range],
        listeners: scattered_listeners(range, ports, listeners, &avoid, 0x5eed ^ listeners as u64),
        blackholed,
        prohibited,
        loss_percent,
        ..LabConfig::default()
    };
    synwatch_lab::lab_or_skip(test, config)
}

/// Runs `synwatch scan` in the lab's scanner namespace with `arguments` plus JSON-lines output
/// of every state.
pub fn scan_in_lab(lab: &Lab, arguments: &[&str]) -> Output {
    lab.scanner_command(synwatch())
        .arg("scan")
        .args(arguments)
        .args(["--states", "all", "--format", "jsonl", "--no-progress"])
        .output()
        .expect("running synwatch")
}

/// The arguments of a dnsmasq that serves only what its other arguments say: in the
/// foreground, no config file, no upstream, no /etc/hosts, bound to its listen addresses.
pub const DNSMASQ_ALONE: [&str; 6] =
    ["--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--no-poll", "--bind-interfaces"];

/// A dnsmasq on 127.0.0.1:`port` of the lab's scanner namespace that serves only what
/// `records` (its further arguments) say ([`DNSMASQ_ALONE`]: no upstream, no /etc/hosts),
/// logging its queries to `dnsmasq.log` in the scratch directory. Ready once its TCP side
/// accepts (it binds UDP and TCP together); killed on drop (continued first, if stopped).
pub struct LabDnsmasq {
    child: Child,
    pub port: u16,
}

impl LabDnsmasq {
    pub fn start(lab: &Lab, scratch: &Scratch, records: &[String]) -> LabDnsmasq {
        let port = free_port();
        let mut command = lab.scanner_command("dnsmasq");
        command.args(DNSMASQ_ALONE);
        command.args(["--listen-address=127.0.0.1", "--pid-file=", "--user=root", "--log-queries", "--log-facility=-"]);
        command.arg(format!("--port={port}")).args(records);
        let child = command
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(scratch.join("dnsmasq.log")).unwrap())
            .spawn()
            .expect("starting dnsmasq");
        wait_until("dnsmasq to listen", 10, || {
            lab.in_scanner(|| std::net::TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ()))
        });
        LabDnsmasq { child, port }
    }

    /// Sends it `signal` (SIGHUP re-reads its hosts files; SIGSTOP makes it a silent server).
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }
}

impl Drop for LabDnsmasq {
    fn drop(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port on 127.0.0.1 that was free a moment ago (bound to port 0, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One request (ureq, a fresh connection): status and body. Refusals (4xx, 5xx) are answers
/// here, not errors.
pub fn http(method: &str, address: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    http_with(method, address, path, &[], "").map(|(status, _, body)| (status, body))
}

/// An HTTP answer: status, headers (lower-case names) and body.
pub type Answer = (u16, Vec<(String, String)>, String);

/// [`http`] with extra headers and a body: status, response headers (lower-case names) and body.
pub fn http_with(
    method: &str,
    address: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> io::Result<Answer> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(5)))
        .timeout_global(Some(Duration::from_secs(20)))
        .max_idle_connections(0)
        .build()
        .into();
    let mut request = ureq::http::Request::builder().method(method).uri(format!("http://{address}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    // GET and HEAD carry no body.
    let body = if matches!(method, "GET" | "HEAD") { Vec::new() } else { body.as_bytes().to_vec() };
    let request = request.body(body).map_err(io::Error::other)?;
    let mut response = agent.run(request).map_err(io::Error::other)?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| (name.as_str().to_string(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
        .collect();
    let body = if method == "HEAD" {
        String::new()
    } else {
        response.body_mut().with_config().limit(64 << 20).read_to_string().map_err(io::Error::other)?
    };
    Ok((status, headers, body))
}

/// The value of the sample whose name and labels are exactly `series` in exposition text.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Waits until `condition` returns `Some`, or panics after `seconds` naming `what`.
pub fn wait_until<T>(what: &str, seconds: u64, mut condition: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        if let Some(value) = condition() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {seconds} s waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A scratch directory under the system temp directory, removed on drop.
#[derive(Debug)]
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let path = std::env::temp_dir().join(format!("synwatch-it-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Scratch(path)
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes a config file `name` holding `text` and returns its path, ready for `--config`.
    pub fn config(&self, name: &str, text: &str) -> String {
        let path = self.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `synwatch serve` process on a loopback port, killed on drop; its log goes to a file.
/// Started in a lab's scanner namespace, its HTTP requests are made from inside that namespace.
#[derive(Debug)]
pub struct Serve {
    pub child: Child,
    pub address: SocketAddr,
    pub log: PathBuf,
    pub namespace: Option<String>,
}

impl Serve {
    /// Starts `synwatch serve --listen 127.0.0.1:<free port>` with `arguments` and waits for
    /// `/-/ready`.
    pub fn start(scratch: &Scratch, arguments: &[&str]) -> Serve {
        let address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        Serve::start_at(scratch, address, arguments)
    }

    /// [`Serve::start`] on a given address.
    pub fn start_at(scratch: &Scratch, address: SocketAddr, arguments: &[&str]) -> Serve {
        Serve::launch(Command::new(synwatch()), None, scratch, address, arguments)
    }

    /// Starts `synwatch serve` inside the lab's scanner namespace (on its loopback).
    pub fn start_in_lab(lab: &Lab, scratch: &Scratch, arguments: &[&str]) -> Serve {
        let address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let namespace = Some(lab.scanner_namespace().to_string());
        Serve::launch(lab.scanner_command(synwatch()), namespace, scratch, address, arguments)
    }

    /// Runs `command` (the synwatch binary, possibly behind `ip netns exec`) as `serve` on
    /// `address` and waits for it to be ready.
    fn launch(
        mut command: Command,
        namespace: Option<String>,
        scratch: &Scratch,
        address: SocketAddr,
        arguments: &[&str],
    ) -> Serve {
        let log = scratch.join(&format!("serve-{}.log", address.port()));
        let child = command
            .arg("serve")
            .args(["--listen", &address.to_string(), "--log-level", "info"])
            .args(arguments)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut serve = Serve { child, address, log, namespace };
        serve.wait_ready();
        serve
    }

    /// A request to this serve (from inside its namespace when it has one).
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> io::Result<Answer> {
        match &self.namespace {
            None => http_with(method, self.address, path, headers, body),
            Some(namespace) => {
                synwatch_lab::run_in_namespace(namespace, || http_with(method, self.address, path, headers, body))?
            }
        }
    }

    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("synwatch serve exited with {status}:\n{}", self.log_text());
            }
            if matches!(self.request("GET", "/-/ready", &[], ""), Ok((200, _, _))) {
                return;
            }
            assert!(Instant::now() < deadline, "synwatch serve was not ready within 30 s:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn metrics(&self) -> String {
        let (status, _, body) = self.request("GET", "/metrics", &[], "").unwrap();
        assert_eq!(status, 200, "{body}");
        body
    }

    pub fn value(&self, series: &str) -> Option<f64> {
        sample(&self.metrics(), series)
    }

    /// Completed scans of `target` so far.
    pub fn successes(&self, target: &str) -> f64 {
        self.value(&format!("synwatch_scans_total{{result=\"success\",target=\"{target}\"}}")).unwrap_or(0.0)
    }

    /// Waits for `count` more completed scans of `target`.
    pub fn wait_for_scans(&self, target: &str, count: f64) {
        let goal = self.successes(target) + count;
        wait_until(&format!("{count} more scans of {target}"), 60, || (self.successes(target) >= goal).then_some(()));
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Prometheus server (Debian's `prometheus` package) on a loopback port, scraping
/// `targets` every second; killed on drop. `None` (skipped, with the reason printed) when the
/// program is missing, unless `SYNWATCH_REQUIRE_LAB=1`, which makes that a failure.
#[derive(Debug)]
pub struct Prometheus {
    child: Child,
    pub address: SocketAddr,
    /// The lab namespace it runs in, if any (its API is then reached from inside it).
    namespace: Option<String>,
}

/// Whether a program is on the PATH; when missing, skip (print why) or fail under
/// `SYNWATCH_REQUIRE_LAB=1`.
pub fn program_or_skip(test: &str, program: &str) -> bool {
    package_or_skip(test, program, "prometheus")
}

/// [`program_or_skip`] for a program of the Debian package `package`.
pub fn package_or_skip(test: &str, program: &str, package: &str) -> bool {
    let found = Command::new(program).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    if !found {
        if std::env::var("SYNWATCH_REQUIRE_LAB").is_ok_and(|value| value == "1") {
            panic!("{test}: SYNWATCH_REQUIRE_LAB=1 but {program} is not installed (apt-get install {package})");
        }
        eprintln!("skipping {test}: {program} is not installed (apt-get install {package})");
    }
    found
}

/// Whether this process may build a lab; when not, skip (print why) or fail under
/// `SYNWATCH_REQUIRE_LAB=1`. For tests whose lab the binary itself builds (`bench --lab`).
pub fn lab_possible_or_skip(test: &str) -> bool {
    match synwatch_lab::lab_available() {
        Ok(()) => true,
        Err(reason) if std::env::var("SYNWATCH_REQUIRE_LAB").is_ok_and(|value| value == "1") => {
            panic!("{test}: SYNWATCH_REQUIRE_LAB=1 but no lab can be built here: {reason}")
        }
        Err(reason) => {
            eprintln!("skipping {test}: no network lab ({reason})");
            false
        }
    }
}

/// Network namespaces whose name says the process `pid` made them (labs left behind).
pub fn labs_of(pid: u32) -> Vec<String> {
    let output = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with(&format!("swlab-{pid}-")))
        .map(str::to_string)
        .collect()
}

impl Prometheus {
    pub fn start(test: &str, scratch: &Scratch, targets: &[SocketAddr]) -> Option<Prometheus> {
        let targets: Vec<String> = targets.iter().map(|target| format!("\"{target}\"")).collect();
        let scrape_configs =
            format!("  - job_name: synwatch\n    static_configs:\n      - targets: [{}]\n", targets.join(", "));
        Prometheus::start_with(test, scratch, &scrape_configs)
    }

    /// Starts Prometheus with these `scrape_configs` entries (YAML, indented two spaces).
    pub fn start_with(test: &str, scratch: &Scratch, scrape_configs: &str) -> Option<Prometheus> {
        Prometheus::start_in(test, scratch, scrape_configs, None)
    }

    /// [`Prometheus::start_with`] inside the lab's scanner namespace (beside a `Serve` started
    /// there).
    pub fn start_in(test: &str, scratch: &Scratch, scrape_configs: &str, lab: Option<&Lab>) -> Option<Prometheus> {
        if !program_or_skip(test, "prometheus") {
            return None;
        }
        let address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = scratch.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}}\nscrape_configs:\n{scrape_configs}"
            ),
        )
        .unwrap();
        let mut command = match lab {
            Some(lab) => lab.scanner_command("prometheus"),
            None => Command::new("prometheus"),
        };
        let child = command
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", scratch.join("tsdb").display()))
            .arg(format!("--web.listen-address={address}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(scratch.join("prometheus.log")).unwrap())
            .spawn()
            .unwrap();
        let namespace = lab.map(|lab| lab.scanner_namespace().to_string());
        let prometheus = Prometheus { child, address, namespace };
        wait_until("Prometheus to be ready", 60, || matches!(prometheus.get("/-/ready"), Ok((200, _))).then_some(()));
        Some(prometheus)
    }

    /// A GET to Prometheus's HTTP API (from inside its namespace when it has one).
    pub fn get(&self, path: &str) -> io::Result<(u16, String)> {
        match &self.namespace {
            None => http("GET", self.address, path),
            Some(namespace) => synwatch_lab::run_in_namespace(namespace, || http("GET", self.address, path))?,
        }
    }

    /// An instant query through the HTTP API: each series' labels and value.
    pub fn query(&self, query: &str) -> Vec<(serde_json::Map<String, serde_json::Value>, f64)> {
        let encoded: String = query
            .bytes()
            .map(|byte| match byte {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (byte as char).to_string(),
                _ => format!("%{byte:02X}"),
            })
            .collect();
        let (status, body) = self.get(&format!("/api/v1/query?query={encoded}")).unwrap();
        assert_eq!(status, 200, "{query}: {body}");
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
        answer["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|series| {
                let labels = series["metric"].as_object().unwrap().clone();
                let value = series["value"][1].as_str().unwrap().parse().unwrap();
                (labels, value)
            })
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
