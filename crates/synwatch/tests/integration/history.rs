//! Issue 23 end to end with the real binary on loopback: a port opening is one change in the
//! HTTP readings, in `synwatch history` (read-only, while `serve` runs) and in one JSON log
//! line; the status page in a real headless Chromium (tables checked, screenshot kept); and a
//! full disk under the history, survived and caught up.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::helpers::{Scratch, Serve, free_port, package_or_skip, synwatch, wait_until};

/// A loopback port nothing listens on now, which the test opens later: outside the kernel's
/// ephemeral range, so that no other test's socket (every one binds port 0, or connects from an
/// ephemeral port) takes it meanwhile, which a port from `free_port()` is not safe from.
fn closed_port_to_open_later() -> u16 {
    let (low, high) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut bounds = text.split_whitespace().map(|value| value.parse::<u16>().ok());
            Some((bounds.next()??, bounds.next()??))
        })
        .unwrap_or((32768, 60999));
    // Each call starts past the last one: two tests of this process never get the same port.
    static CALLS: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let call = CALLS.fetch_add(97, std::sync::atomic::Ordering::Relaxed);
    let start = 10_000 + ((std::process::id() as u16 % 10_000).wrapping_add(call) % 10_000);
    (start..u16::MAX)
        .chain(10_000..start)
        .filter(|port| *port < low || *port > high)
        .find(|port| TcpListener::bind(("127.0.0.1", *port)).is_ok())
        .expect("a free loopback port outside the ephemeral range")
}

/// A loopback target scanned with connect() every second (no privilege needed).
fn config(scratch: &Scratch, ports: &[u16], state_dir: &Path) -> String {
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    scratch.config(
        "history.yaml",
        &format!(
            "state_dir: {}\nengine: {{mode: connect}}\ndefaults: {{interval: 1s, timeout: 5s, retries: 0, wait: 200ms}}\n\
             targets:\n  - name: loopback\n    addresses: [127.0.0.1]\n    ports: \"{}\"\n",
            state_dir.display(),
            ports.join(",")
        ),
    )
}

fn json(serve: &Serve, path: &str) -> serde_json::Value {
    let (status, _, body) = serve.request("GET", path, &[], "").unwrap();
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// Headless Chromium as the environment notes say it runs here (root: no sandbox; no
/// background connections out of this machine).
fn chromium(profile: &Path) -> Command {
    let mut command = Command::new("chromium");
    command.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ]);
    command.arg(format!("--user-data-dir={}", profile.display()));
    command.stdin(Stdio::null()).stderr(Stdio::null());
    command
}

/// The text of each cell of each row of the table whose id is `id` in a dumped DOM.
fn table_rows(dom: &str, id: &str) -> Vec<Vec<String>> {
    let start = dom.find(&format!("<table id=\"{id}\"")).unwrap_or_else(|| panic!("no table {id} in:\n{dom}"));
    let end = start + dom[start..].find("</table>").unwrap();
    dom[start..end]
        .split("<tr")
        .skip(1)
        .map(|row| {
            row.split("<td")
                .skip(1)
                .map(|cell| {
                    let cell = &cell[cell.find('>').unwrap() + 1..];
                    let cell = &cell[..cell.find("</td>").unwrap_or(cell.len())];
                    // Links inside cells: keep their text.
                    let mut text = String::new();
                    let mut in_tag = false;
                    for character in cell.chars() {
                        match character {
                            '<' => in_tag = true,
                            '>' => in_tag = false,
                            _ if !in_tag => text.push(character),
                            _ => {}
                        }
                    }
                    text.trim().to_string()
                })
                .collect::<Vec<String>>()
        })
        .filter(|cells| !cells.is_empty())
        .collect()
}

#[test]
fn issue_23_a_port_opening_is_one_change_in_the_api_the_cli_the_log_and_the_status_page_in_chromium() {
    const TEST: &str = "issue_23_status_page";
    if !package_or_skip(TEST, "chromium", "chromium") {
        return;
    }
    let scratch = Scratch::new("history-page");
    let state_dir = scratch.join("state");
    let first = TcpListener::bind("127.0.0.1:0").unwrap();
    let first_port = first.local_addr().unwrap().port();
    let second_port = closed_port_to_open_later();
    let config = config(&scratch, &[first_port, second_port], &state_dir);
    let serve = Serve::start(&scratch, &["--config", &config, "--log-format", "json"]);
    serve.wait_for_scans("loopback", 1.0);
    let second = TcpListener::bind(("127.0.0.1", second_port)).unwrap();
    let changes = wait_until("the opened change", 30, || {
        let changes = json(&serve, "/api/v1/changes?target=loopback&change=opened");
        let list = changes["changes"].as_array()?.clone();
        (!list.is_empty()).then_some(list)
    });
    serve.wait_for_scans("loopback", 2.0);
    let all = json(&serve, "/api/v1/changes")["changes"].as_array().unwrap().clone();
    assert_eq!(all.len(), 1, "one change, written once: {all:?}");
    assert_eq!(changes[0]["port"], second_port);
    assert_eq!((changes[0]["from"].as_str(), changes[0]["to"].as_str()), (Some("closed"), Some("open")));
    let change_time = changes[0]["time"].as_str().unwrap().to_string();
    let metrics = serve.metrics();
    assert_eq!(
        crate::helpers::sample(&metrics, "synwatch_port_state_changes_total{change=\"opened\",target=\"loopback\"}"),
        Some(1.0)
    );
    assert!(crate::helpers::sample(&metrics, "synwatch_history_database_bytes").unwrap() > 0.0);
    let (status, headers, csv) =
        serve.request("GET", "/api/v1/endpoints?state=open", &[("Accept", "text/csv")], "").unwrap();
    assert_eq!(status, 200, "{csv}");
    assert!(headers.iter().any(|(name, value)| name == "content-type" && value.starts_with("text/csv")), "{headers:?}");
    assert_eq!(csv.lines().count(), 3, "header and the two open ports:\n{csv}");
    let (status, _, refusal) = serve.request("GET", "/api/v1/changes?since=yesterday", &[], "").unwrap();
    assert_eq!(status, 400);
    assert!(refusal.contains("yesterday"), "{refusal}");

    // The CLI reads the same database while serve writes it.
    let output = Command::new(synwatch())
        .args(["history", "--state-dir", &state_dir.display().to_string(), "--format", "jsonl", "--since", "1h"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8(output.stdout).unwrap().lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(
        (lines[0]["port"].as_u64(), lines[0]["change"].as_str()),
        (Some(u64::from(second_port)), Some("opened"))
    );
    let output = Command::new(synwatch())
        .args(["history", "--config", &config, "--endpoints", "--state", "open", "--format", "csv"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let csv = String::from_utf8(output.stdout).unwrap();
    for port in [first_port, second_port] {
        assert!(csv.contains(&format!(",127.0.0.1,tcp,{port},open,")), "{port} in:\n{csv}");
    }
    let output = Command::new(synwatch())
        .args(["history", "--state-dir", &state_dir.display().to_string(), "--since", "yesterday"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "a bad time is a usage error");

    // One structured log line per change.
    let log = serve.log_text();
    let line = log
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|line| line["fields"]["message"] == "port state changed")
        .unwrap_or_else(|| panic!("no change line in the log:\n{log}"));
    let fields = &line["fields"];
    assert_eq!((fields["target"].as_str(), fields["ip"].as_str()), (Some("loopback"), Some("127.0.0.1")));
    assert_eq!(
        (fields["port"].as_u64(), fields["from"].as_str(), fields["to"].as_str()),
        (Some(u64::from(second_port)), Some("closed"), Some("open"))
    );
    assert_eq!(fields["time"].as_str(), Some(change_time.as_str()));

    // The status page, in a real browser: the front page and the target's page.
    let profile = scratch.join("chromium-profile");
    let dump = |path: &str| {
        let output =
            chromium(&profile).arg("--dump-dom").arg(format!("http://{}{path}", serve.address)).output().unwrap();
        assert!(output.status.success(), "chromium --dump-dom {path} failed");
        String::from_utf8(output.stdout).unwrap()
    };
    let front = dump("/");
    let targets = table_rows(&front, "targets-table");
    assert_eq!(targets.len(), 1, "{targets:?}");
    assert_eq!(targets[0][0], "loopback");
    assert_eq!(targets[0][5], "ok");
    assert_eq!(targets[0][6], "2", "two open ports: {targets:?}");
    let rows = table_rows(&front, "changes-table");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        rows[0],
        vec![
            change_time.clone(),
            "loopback".into(),
            "127.0.0.1".into(),
            second_port.to_string(),
            "closed".into(),
            "open".into(),
            "opened".into()
        ]
    );
    let engine = table_rows(&front, "engine-table");
    assert_eq!(engine[0], vec!["connect".to_string()], "{engine:?}");
    let page = dump("/?target=loopback");
    let endpoints = table_rows(&page, "endpoints-table");
    let mut ports: Vec<(String, String)> = endpoints.iter().map(|row| (row[1].clone(), row[3].clone())).collect();
    ports.sort();
    assert_eq!(ports.len(), 2, "{endpoints:?}");
    let since_of =
        |port: u16| ports.iter().find(|(found, _)| *found == port.to_string()).map(|(_, since)| since.clone());
    assert_eq!(since_of(second_port), Some(change_time.clone()), "open since the change: {endpoints:?}");
    assert!(since_of(first_port).is_some_and(|since| since.ends_with('Z') && since <= change_time), "{endpoints:?}");
    let artefacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("artefacts");
    std::fs::create_dir_all(&artefacts).unwrap();
    let screenshot = artefacts.join("status-page-target.png");
    let _ = std::fs::remove_file(&screenshot);
    let status = chromium(&profile)
        .arg("--window-size=1280,800")
        .arg(format!("--screenshot={}", screenshot.display()))
        .arg(format!("http://{}/?target=loopback", serve.address))
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let png = std::fs::read(&screenshot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 5_000,
        "the screenshot is a PNG of a page ({} bytes)",
        png.len()
    );
    eprintln!("status page screenshot: {}", screenshot.display());
    let (status, _, body) = serve.request("GET", "/?target=nope", &[], "").unwrap();
    assert_eq!(status, 404, "{body}");
    drop((first, second));
}

/// `synwatch serve` in a mount namespace of its own, with a tmpfs mounted (`options`) on
/// `state_dir`; ready when it returns. `exec` makes the child serve itself, so the returned
/// [`Serve`] kills it on drop.
fn serve_on_tmpfs(scratch: &Scratch, state_dir: &Path, config: &str, options: &str, log: &str) -> Serve {
    let address = format!("127.0.0.1:{}", free_port());
    let log = scratch.join(log);
    let child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount -t tmpfs -o {options} synwatch-test {} && exec {} serve --listen {address} --config {config}",
            state_dir.display(),
            synwatch()
        ))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let serve = Serve { child, address: address.parse().unwrap(), log, namespace: None };
    wait_until("serve ready", 30, || serve.request("GET", "/-/ready", &[], "").ok().filter(|answer| answer.0 == 200));
    serve
}

/// The history on a full, then a read-only disk: a tmpfs of 1 MiB in a mount namespace of its
/// own, in which serve runs. Filled up, the history's writes fail (counted), scans and scrapes
/// go on; with room again, the next scan writes what was missed. Read-only, the history cannot
/// be opened (counted), and scans and scrapes go on.
#[test]
fn issue_23_a_full_or_read_only_disk_fails_history_writes_counted_while_scans_go_on_and_the_history_catches_up() {
    const TEST: &str = "issue_23_full_disk";
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var("SYNWATCH_REQUIRE_LAB").map_or(true, |value| value != "1"),
            "{TEST}: SYNWATCH_REQUIRE_LAB=1 but not root (a tmpfs is mounted for the test)"
        );
        eprintln!("skipping {TEST}: mounting the test's tmpfs needs root");
        return;
    }
    if !package_or_skip(TEST, "unshare", "util-linux") || !package_or_skip(TEST, "nsenter", "util-linux") {
        return;
    }
    let scratch = Scratch::new("history-full");
    let state_dir = scratch.join("state");
    std::fs::create_dir_all(&state_dir).unwrap();
    let first = TcpListener::bind("127.0.0.1:0").unwrap();
    let first_port = first.local_addr().unwrap().port();
    let second_port = closed_port_to_open_later();
    let config = config(&scratch, &[first_port, second_port], &state_dir);
    let serve = serve_on_tmpfs(&scratch, &state_dir, &config, "size=1m", "serve.log");
    let pid = serve.child.id().to_string();
    let metric = |name: &str| crate::helpers::sample(&serve.metrics(), name);
    serve.wait_for_scans("loopback", 1.0);
    // Fill the tmpfs from inside serve's mount namespace.
    let filler = state_dir.join("filler");
    let fill = Command::new("nsenter")
        .args(["-t", &pid, "-m", "--", "sh", "-c"])
        .arg(format!("dd if=/dev/zero of={} bs=4k 2>/dev/null; sync; true", filler.display()))
        .status()
        .unwrap();
    assert!(fill.success());
    let second = TcpListener::bind(("127.0.0.1", second_port)).unwrap();
    wait_until("a failed history write", 30, || {
        metric("synwatch_history_write_failures_total").filter(|count| *count > 0.0)
    });
    let scans = serve.successes("loopback");
    serve.wait_for_scans("loopback", 2.0);
    assert!(serve.successes("loopback") >= scans + 2.0, "scans go on");
    assert_eq!(metric("synwatch_port_state_changes_total{change=\"opened\",target=\"loopback\"}"), Some(1.0));
    // Room again: the next scan catches the history up with the change it missed.
    let freed = Command::new("nsenter").args(["-t", &pid, "-m", "--", "rm", "-f"]).arg(&filler).status().unwrap();
    assert!(freed.success());
    let changes = wait_until("the missed change written", 30, || {
        let changes = json(&serve, "/api/v1/changes?change=opened");
        let list = changes["changes"].as_array()?.clone();
        (!list.is_empty()).then_some(list)
    });
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0]["port"], second_port);
    let open = json(&serve, "/api/v1/endpoints?state=open");
    assert_eq!(open["endpoints"].as_array().unwrap().len(), 2, "{open}");

    drop(serve);

    // A read-only disk from the start (a running process cannot be moved to one: Linux refuses
    // to remount a file system read-only while files are open for writing): the history cannot
    // be opened, which is logged and counted; scans and scrapes go on.
    let serve = serve_on_tmpfs(&scratch, &state_dir, &config, "size=1m,ro", "serve-read-only.log");
    serve.wait_for_scans("loopback", 2.0);
    let metrics = serve.metrics();
    assert_eq!(crate::helpers::sample(&metrics, "synwatch_history_write_failures_total"), Some(1.0), "{metrics}");
    assert!(crate::helpers::sample(&metrics, "synwatch_state_write_failures_total").unwrap() >= 1.0, "{metrics}");
    let (status, _, reason) = serve.request("GET", "/api/v1/changes", &[], "").unwrap();
    assert_eq!(status, 404, "{reason}");
    let (status, _, page) = serve.request("GET", "/", &[], "").unwrap();
    assert_eq!(status, 200);
    assert!(page.contains("No exposure history"), "{page}");
    assert!(serve.log_text().contains("cannot open the exposure history"), "{}", serve.log_text());
    drop((serve, first, second));
}
