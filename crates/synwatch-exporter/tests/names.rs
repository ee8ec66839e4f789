//! Targets by name and target files, in the running exporter against the simulated network:
//! a named target follows its name's addresses from scan to scan, a name that stops resolving
//! keeps the old results and is counted, and `file_sd` files added, changed, broken and removed
//! are applied like reloads. (The same with a real DNS server, a real `serve` and a real
//! Prometheus is in the binary's integration tests.)

mod common;

use common::*;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use synwatch_engine::{HostName, PortState};
use synwatch_exporter::Exporter;
use synwatch_exporter::hostnames::{Resolver, ReverseLookup, ReverseResolver};
use synwatch_exporter::names::{ForwardLookup, ForwardResolver};
use synwatch_http::site::HistoryResource;

/// A name server whose answers a test changes, counting the lookups.
#[derive(Default)]
struct Names {
    table: Mutex<HashMap<String, ForwardLookup>>,
    lookups: Mutex<u64>,
}

impl Names {
    fn answer(&self, name: &str, answer: ForwardLookup) {
        self.table.lock().insert(name.to_string(), answer);
    }
}

impl ForwardResolver for Names {
    fn forward(&self, names: &[HostName]) -> Vec<ForwardLookup> {
        *self.lookups.lock() += names.len() as u64;
        let table = self.table.lock();
        names.iter().map(|name| table.get(name.name()).cloned().unwrap_or(ForwardLookup::NotFound)).collect()
    }
}

impl ReverseResolver for Names {
    fn reverse(&self, addresses: &[IpAddr]) -> Vec<(IpAddr, ReverseLookup)> {
        addresses.iter().map(|address| (*address, ReverseLookup::NotFound)).collect()
    }
}

fn addresses(list: &[&str]) -> ForwardLookup {
    ForwardLookup::Found(list.iter().map(|text| text.parse().unwrap()).collect())
}

fn with_names(exporter: &Exporter, names: &Arc<Names>) {
    let handed = Arc::clone(names);
    exporter.set_resolver_factory(Box::new(move |_| Ok(Arc::clone(&handed) as Arc<dyn Resolver>)));
}

fn scans(exporter: &Exporter, target: &str, result: &str) -> f64 {
    sample(&render(exporter), &format!("synwatch_scans_total{{result=\"{result}\",target=\"{target}\"}}"))
        .unwrap_or(0.0)
}

const NAMED: &str = "targets:\n  - name: db\n    addresses: [db.example.org, 192.0.2.9]\n    ports: \"22\"\n    \
                     interval: 50ms\n    details: true\n    labels: {env: prod}\n";

#[test]
fn a_named_target_follows_its_name_to_new_addresses_without_false_changes() {
    let directory = scratch("names-move");
    let config = directory.join("synwatch.yaml");
    std::fs::write(&config, NAMED).unwrap();
    let network = Arc::new(SimulatedNetwork::default());
    network.set("192.0.2.1", 22, PortState::Open);
    network.set("192.0.2.5", 22, PortState::Open);
    let names = Arc::new(Names::default());
    names.answer("db.example.org", addresses(&["192.0.2.1"]));
    let exporter = start(&network, &config, Some(&directory.join("state")));
    with_names(&exporter, &names);
    let old = "synwatch_port_open{target=\"db\",env=\"prod\",ip=\"192.0.2.1\",hostname=\"db.example.org\",port=\"22\",proto=\"tcp\"}";
    let new = "synwatch_port_open{target=\"db\",env=\"prod\",ip=\"192.0.2.5\",hostname=\"db.example.org\",port=\"22\",proto=\"tcp\"}";
    let literal = "synwatch_port_open{target=\"db\",env=\"prod\",ip=\"192.0.2.9\",port=\"22\",proto=\"tcp\"}";
    wait_for("the first scan at the name's address", || sample(&render(&exporter), old) == Some(1.0));
    let text = render(&exporter);
    assert_eq!(sample(&text, literal), Some(0.0), "the literal address is scanned beside the name, without a hostname");
    assert_eq!(sample(&text, new), None, "an address the name does not have is not scanned");
    assert_eq!(
        sample(&text, "synwatch_target_ports{target=\"db\",env=\"prod\",proto=\"tcp\",state=\"open\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "synwatch_host_info{target=\"db\",env=\"prod\",ip=\"192.0.2.1\",hostname=\"db.example.org\"}"),
        Some(1.0),
        "per-host series name the host without resolve_hostnames"
    );
    let sd: serde_json::Value = serde_json::from_slice(&exporter.service_discovery("").unwrap()).unwrap();
    assert_eq!(sd[0]["targets"][0], "db.example.org:22", "/sd scrapes by the name: {sd}");
    assert_eq!(sd[0]["labels"]["__meta_synwatch_hostname"], "db.example.org");
    assert_eq!(sd[0]["labels"]["env"], "prod", "the target's labels reach /sd");

    // The record moves to .5: the next scans are there, and nothing is counted as closed.
    names.answer("db.example.org", addresses(&["192.0.2.5"]));
    wait_for("the scan at the new address", || sample(&render(&exporter), new) == Some(1.0));
    wait_for_scans(&exporter, "db", 2.0);
    let text = render(&exporter);
    assert_eq!(sample(&text, old), None, "the old address is no longer reported");
    assert_eq!(sample(&text, "synwatch_target_address_changes_total{target=\"db\"}"), Some(1.0), "counted once");
    assert_eq!(sample(&text, "synwatch_port_state_changes_total{change=\"closed\",target=\"db\"}"), Some(0.0));
    assert_eq!(sample(&text, "synwatch_port_state_changes_total{change=\"opened\",target=\"db\"}"), Some(0.0));
    // The history no longer lists the old address as open: it left the target's scans (a
    // change of kind `other`, neither opened nor closed), with the name it came from.
    let endpoint = |ip: &str| {
        wait_for("the history's endpoints", || history_endpoints(&exporter).iter().any(|row| row["ip"] == ip));
        history_endpoints(&exporter).into_iter().find(|row| row["ip"] == ip).unwrap()
    };
    wait_for("the old endpoint to leave the scans", || endpoint("192.0.2.1")["state"] == "not_scanned");
    assert_eq!(endpoint("192.0.2.1")["hostname"], "db.example.org");
    assert_eq!(endpoint("192.0.2.5")["state"], "open");
    let changes = json(&exporter, HistoryResource::Changes, "change=other");
    let left: Vec<_> = changes["changes"].as_array().unwrap().iter().filter(|row| row["ip"] == "192.0.2.1").collect();
    assert_eq!(left.len(), 1, "{changes}");
    assert_eq!((&left[0]["from"], &left[0]["to"]), (&"open".into(), &"not_scanned".into()));
    exporter.shutdown(Duration::from_secs(1));
    std::fs::remove_dir_all(&directory).unwrap();
}

/// The history's endpoints of every target.
fn history_endpoints(exporter: &Exporter) -> Vec<serde_json::Value> {
    json(exporter, HistoryResource::Endpoints, "")["endpoints"].as_array().cloned().unwrap_or_default()
}

#[test]
fn a_name_that_stops_resolving_keeps_the_old_results_and_counts_each_failure_by_reason() {
    let directory = scratch("names-fail");
    let config = directory.join("synwatch.yaml");
    std::fs::write(&config, NAMED).unwrap();
    let state_dir = directory.join("state");
    let network = Arc::new(SimulatedNetwork::default());
    network.set("192.0.2.1", 22, PortState::Open);
    let names = Arc::new(Names::default());
    names.answer("db.example.org", addresses(&["192.0.2.1"]));
    let exporter = start(&network, &config, Some(&state_dir));
    with_names(&exporter, &names);
    let open = "synwatch_port_open{target=\"db\",env=\"prod\",ip=\"192.0.2.1\",hostname=\"db.example.org\",port=\"22\",proto=\"tcp\"}";
    wait_for("the first scan", || sample(&render(&exporter), open) == Some(1.0));
    for (answer, reason) in [
        (ForwardLookup::NotFound, "not_found"),
        (ForwardLookup::TimedOut, "timeout"),
        (addresses(&["2001:db8::1"]), "no_address_of_family"),
    ] {
        let family = if reason == "no_address_of_family" { "    family: ipv4\n" } else { "" };
        std::fs::write(&config, format!("{NAMED}{family}")).unwrap();
        exporter.reload().unwrap();
        names.answer("db.example.org", answer);
        let series = format!("synwatch_target_resolve_failures_total{{reason=\"{reason}\",target=\"db\"}}");
        wait_for(reason, || sample(&render(&exporter), &series).unwrap_or(0.0) >= 2.0);
        let text = render(&exporter);
        assert_eq!(sample(&text, open), Some(1.0), "{reason}: the previous results stay");
        assert_eq!(sample(&text, "synwatch_target_last_scan_success{target=\"db\",env=\"prod\"}"), Some(0.0));
        assert_eq!(sample(&text, "synwatch_port_state_changes_total{change=\"closed\",target=\"db\"}"), Some(0.0));
    }
    assert!(scans(&exporter, "db", "resolve_failed") >= 6.0);
    // The exporter lives on, and the name's return is scanned again.
    names.answer("db.example.org", addresses(&["192.0.2.1"]));
    std::fs::write(&config, NAMED).unwrap();
    exporter.reload().unwrap();
    let before = scans(&exporter, "db", "success");
    wait_for("a scan after the name came back", || scans(&exporter, "db", "success") > before);
    exporter.shutdown(Duration::from_secs(1));
    // The names are kept in the state file with the results they gave.
    let saved = std::fs::read_to_string(state_dir.join("state.json")).unwrap();
    assert!(saved.contains("\"names\":[[\"db.example.org\",[\"192.0.2.1\"]]]"), "{saved}");
    std::fs::remove_dir_all(&directory).unwrap();
}

fn target_names(exporter: &Exporter) -> Vec<String> {
    exporter.config().targets.iter().map(|target| target.name.clone()).collect()
}

#[test]
fn target_files_added_changed_broken_and_removed_are_applied_like_reloads() {
    let directory = scratch("file-sd");
    let config = directory.join("synwatch.yaml");
    let files = directory.join("targets");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(
        &config,
        "targets_files:\n  - targets/*.yml\n  - {files: \"targets/*.json\", ports: \"80\", details: true}\n\
         targets_files_refresh: 1h\ntargets:\n  - name: own\n    addresses: [192.0.2.20]\n    ports: \"22\"\n    \
         interval: 50ms\n    targets_files: [own/*.yaml]\n",
    )
    .unwrap();
    let network = Arc::new(SimulatedNetwork::default());
    network.set("192.0.2.1", 9100, PortState::Open);
    network.set("192.0.2.2", 80, PortState::Open);
    let exporter = start(&network, &config, None);
    assert_eq!(target_names(&exporter), ["own"]);

    // A YAML file appears: its one group is target "web", scanned on its entries' ports.
    std::fs::write(
        files.join("web.yml"),
        "- targets: [\"192.0.2.1:9100\"]\n  labels: {team: a, __meta_x: dropped, job: dropped}\n",
    )
    .unwrap();
    wait_for("the new file's target", || target_names(&exporter).contains(&"web".to_string()));
    let web = exporter.config().targets.iter().find(|target| target.name == "web").cloned().unwrap();
    assert_eq!(web.ports.to_string(), "9100");
    assert_eq!(web.labels.keys().collect::<Vec<_>>(), ["team"], "__ labels and job are dropped");
    let ports = "synwatch_target_ports{target=\"web\",team=\"a\",proto=\"tcp\",state=\"open\"}";
    wait_for("web's labelled series", || sample(&render(&exporter), ports) == Some(1.0));

    // A JSON file with two groups: two targets, with the entry's ports and its own.
    std::fs::write(
        files.join("db.json"),
        r#"[{"targets": ["192.0.2.2", "[2001:db8::2]:5432"], "labels": {"env": "prod"}}, {"targets": ["192.0.2.3"]}]"#,
    )
    .unwrap();
    wait_for("the JSON file's targets", || target_names(&exporter).contains(&"db-2".to_string()));
    let db = exporter.config().targets.iter().find(|target| target.name == "db-1").cloned().unwrap();
    assert_eq!((db.ports.to_string().as_str(), db.details), ("80,5432", true));

    // A change of labels is applied; then a broken file is rejected with its line and column
    // and the old targets keep running.
    std::fs::write(files.join("web.yml"), "- targets: [\"192.0.2.1:9100\"]\n  labels: {team: b}\n").unwrap();
    let relabelled = "synwatch_target_ports{target=\"web\",team=\"b\",proto=\"tcp\",state=\"open\"}";
    wait_for("the new label", || sample(&render(&exporter), relabelled) == Some(1.0));
    std::fs::write(files.join("web.yml"), "- targets: [\"192.0.2.1:99999\"]\n").unwrap();
    let rejected = "synwatch_config_last_reload_successful";
    wait_for("the broken file's rejection", || sample(&render(&exporter), rejected) == Some(0.0));
    let error = exporter.reload().unwrap_err();
    assert_eq!((error.line, error.column), (1, 13), "{error}");
    assert!(error.origin.ends_with("web.yml") && error.message.contains("99999"), "{error}");
    assert!(target_names(&exporter).contains(&"web".to_string()), "the old list keeps running");

    // Removing the files removes their targets (and the fix of web.yml is picked up).
    std::fs::remove_file(files.join("db.json")).unwrap();
    std::fs::write(files.join("web.yml"), "- targets: [\"192.0.2.1:9100\"]\n").unwrap();
    wait_for("the removed file's targets to go", || !target_names(&exporter).contains(&"db-1".to_string()));
    assert_eq!(sample(&render(&exporter), rejected), Some(1.0));

    // A target's own files add to its addresses and ports.
    std::fs::create_dir_all(directory.join("own")).unwrap();
    std::fs::write(directory.join("own/more.yaml"), "- targets: [\"192.0.2.21:8080\"]\n").unwrap();
    wait_for("the target's own file", || {
        exporter.config().targets.iter().any(|target| target.name == "own" && target.ports.to_string() == "22,8080")
    });
    exporter.shutdown(Duration::from_secs(1));
    std::fs::remove_dir_all(&directory).unwrap();
}

#[test]
fn a_config_of_target_files_alone_starts_empty_and_takes_the_first_file_written() {
    // As Prometheus's file_sd, an exporter may start before its inventory is deployed: an empty
    // directory (or none yet) is no targets, not a config that would do nothing.
    let directory = scratch("file-sd-empty");
    let config = directory.join("synwatch.yaml");
    std::fs::write(&config, "defaults: {interval: 50ms}\ntargets_files: [later/*.yml]\ntargets_files_refresh: 1h\n")
        .unwrap();
    let network = Arc::new(SimulatedNetwork::default());
    network.set("192.0.2.9", 22, PortState::Open);
    let exporter = start(&network, &config, None);
    assert!(target_names(&exporter).is_empty());
    assert_eq!(sample(&render(&exporter), "synwatch_config_last_reload_successful"), Some(1.0));
    // The directory appears with a file in it. The periodic re-read is an hour away: the files
    // thread tries again to watch the missing directory every turn, and reads the files once it
    // watches it.
    std::fs::create_dir_all(directory.join("later")).unwrap();
    std::fs::write(directory.join("later/ssh.yml"), "- targets: [\"192.0.2.9:22\"]\n").unwrap();
    let open = "synwatch_target_ports{target=\"ssh\",proto=\"tcp\",state=\"open\"}";
    wait_for("the first file's target, scanned", || sample(&render(&exporter), open) == Some(1.0));
    // Without targets_files the same config is still refused.
    let error = synwatch_exporter::config::parse_in("defaults: {interval: 50ms}\n", "synwatch.yaml", &directory)
        .map(|_| ())
        .unwrap_err();
    assert!(error.message.contains("would do nothing"), "{error}");
    exporter.shutdown(Duration::from_secs(1));
    std::fs::remove_dir_all(&directory).unwrap();
}

#[test]
fn an_idle_exporter_does_not_read_its_target_files_again() {
    // The files thread's own reading is an inotify event (an open, a close without writing):
    // taken for a change, it read the files again every debounce, for ever.
    use notify::Watcher;
    let directory = scratch("file-sd-idle");
    let config = directory.join("synwatch.yaml");
    std::fs::create_dir_all(directory.join("targets")).unwrap();
    std::fs::write(directory.join("targets/web.yml"), "- targets: [\"192.0.2.1:9100\"]\n").unwrap();
    std::fs::write(&config, "defaults: {interval: 1h}\ntargets_files: [targets/*.yml]\ntargets_files_refresh: 1h\n")
        .unwrap();
    let network = Arc::new(SimulatedNetwork::default());
    let exporter = start(&network, &config, None);
    assert_eq!(target_names(&exporter), ["web"]);
    // Past the start's one reading (the watch is set, the files read once, the debounce over).
    std::thread::sleep(Duration::from_millis(800));
    let opens = Arc::new(Mutex::new(0u64));
    let counted = Arc::clone(&opens);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && matches!(event.kind, notify::EventKind::Access(notify::event::AccessKind::Open(_)))
        {
            *counted.lock() += 1;
        }
    })
    .unwrap();
    watcher.watch(&directory.join("targets"), notify::RecursiveMode::NonRecursive).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(*opens.lock(), 0, "the target file was opened while nothing changed");
    // A change is still read (and opens the file).
    std::fs::write(directory.join("targets/web.yml"), "- targets: [\"192.0.2.1:9100\"]\n  labels: {team: a}\n")
        .unwrap();
    wait_for("the changed file", || {
        exporter.config().targets.iter().any(|target| target.labels.keys().any(|key| key == "team"))
    });
    assert!(*opens.lock() > 0);
    drop(watcher);
    exporter.shutdown(Duration::from_secs(1));
    std::fs::remove_dir_all(&directory).unwrap();
}

#[test]
fn bad_target_files_are_refused_with_their_place_and_bounds() {
    let directory = scratch("file-sd-bad");
    let files = directory.join("targets");
    std::fs::create_dir_all(&files).unwrap();
    let config = "targets_files: [targets/*.yml]\nondemand: {enabled: true, allow_targets: [192.0.2.0/24]}\n";
    let load = |file: &str, text: &str| {
        for old in std::fs::read_dir(&files).unwrap() {
            let path = old.unwrap().path();
            let _ = std::fs::remove_file(&path);
        }
        std::fs::write(files.join(file), text).unwrap();
        synwatch_exporter::config::parse_in(config, "synwatch.yaml", &directory)
            .map(|_| ())
            .expect_err(&text.chars().take(80).collect::<String>())
    };
    for (text, line, column, reason) in [
        ("- targets: [\"db..x:22\"]\n", 1, 13, "empty label"),
        ("- targets: [\"192.0.2.1\"]\n  labels: {\"bad-name\": x}\n", 2, 24, "label name"),
        ("- targets: [\"192.0.2.1\"]\n  labels: {ip: x}\n", 2, 16, "sets itself"),
        ("- targets: [\"192.0.2.1\"]\n  lables: {a: b}\n", 2, 3, "unknown field"),
        ("- targets: [\"192.0.2.1\"]\n", 1, 3, "no ports"),
        ("{targets: []}\n", 1, 1, "sequence"),
        (&format!("- targets: [\"{}.example.org:22\"]\n", "a".repeat(250)), 1, 13, "limit of 253"),
    ] {
        let error = load("web.yml", text);
        assert!(error.origin.ends_with("web.yml"), "{text}: {error}");
        assert!(error.message.contains(reason), "{text}: {error}");
        assert_eq!((error.line, error.column), (line, column), "{text}: {error}");
    }
    // A million entries: refused by size before anything is parsed.
    let million: String =
        (0..1_000_000u32).map(|index| format!("\"198.18.{}.{}:22\",", index / 256 % 256, index % 256)).collect();
    let error = load("big.yml", &format!("- targets: [{}]\n", million.trim_end_matches(',')));
    assert!(error.message.contains("more than the limit of 4194304"), "{error}");
    // Entries are bounded over all files too.
    let many: Vec<String> =
        (0..100_001u32).map(|index| format!("198.18.{}.{}", index / 256 % 256, index % 256)).collect();
    let error = load("many.yml", &format!("[{{\"targets\": {}}}]", serde_json::to_string(&many).unwrap()));
    assert!(error.message.contains("100001 target entries") && error.message.contains("limit of 100000"), "{error}");
    // A symlink loop matched by the pattern is an error of that file, not a hang.
    for old in std::fs::read_dir(&files).unwrap() {
        std::fs::remove_file(old.unwrap().path()).unwrap();
    }
    std::os::unix::fs::symlink(files.join("b.yml"), files.join("a.yml")).unwrap();
    std::os::unix::fs::symlink(files.join("a.yml"), files.join("b.yml")).unwrap();
    let error = synwatch_exporter::config::parse_in(config, "synwatch.yaml", &directory).map(|_| ()).unwrap_err();
    assert!(error.message.contains("symbolic links"), "{error}");
    // `*` only in the file name, as in Prometheus.
    let error = synwatch_exporter::config::parse_in(
        "targets_files: [\"*/x.yml\"]\nondemand: {enabled: true, allow_targets: [192.0.2.0/24]}\n",
        "synwatch.yaml",
        &directory,
    )
    .map(|_| ())
    .unwrap_err();
    assert!(error.message.contains("in the file name only"), "{error}");
    std::fs::remove_dir_all(&directory).unwrap();
}
