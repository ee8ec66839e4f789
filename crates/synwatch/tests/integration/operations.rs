//! Issue 8: how synwatch is run by operators: the systemd unit (its settings, `systemd-analyze`,
//! and every system call and address family `serve` makes under it), `serve --shard`, and the
//! container and Kubernetes files.
//!
//! The unit cannot be started here (no systemd as PID 1 on CI machines), so
//! `issue_8_the_unit_allows_every_system_call_and_family_serve_uses` runs `serve` the way the
//! unit does (a non-root user, CAP_NET_RAW as the only ambient and bounding capability, no new
//! privileges) under strace, and checks what it did against the unit's filters as
//! `systemd-analyze syscall-filter` expands them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::sys::signal::Signal;

use crate::helpers::{Scratch, Serve, free_port, http, package_or_skip, sample, wait_until};

/// The repository's top directory.
fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repository().join(path)).unwrap_or_else(|error| panic!("{path}: {error}"))
}

/// The `key=value` settings of a unit file, in order, as (section, key, value).
fn unit_settings(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut settings = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let (key, value) = line.split_once('=').unwrap_or_else(|| panic!("not a setting: {line}"));
        settings.push((section.clone(), key.trim().to_string(), value.trim().to_string()));
    }
    settings
}

fn service_values(settings: &[(String, String, String)], key: &str) -> Vec<String> {
    settings
        .iter()
        .filter(|(section, name, _)| section == "Service" && name == key)
        .map(|(_, _, value)| value.clone())
        .collect()
}

#[test]
fn issue_8_the_unit_sets_the_hardening_the_issue_names() {
    let settings = unit_settings(&read("systemd/synwatch.service"));
    let one = |key: &str| {
        let values = service_values(&settings, key);
        assert_eq!(values.len(), 1, "{key} is set once: {values:?}");
        values[0].clone()
    };
    assert_eq!(one("User"), "synwatch");
    assert_eq!(one("AmbientCapabilities"), "CAP_NET_RAW");
    assert_eq!(one("CapabilityBoundingSet"), "CAP_NET_RAW");
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("StateDirectory", "synwatch"),
        ("ConfigurationDirectory", "synwatch"),
        ("Restart", "on-failure"),
        ("EnvironmentFile", "-/etc/default/synwatch"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
    ] {
        assert_eq!(one(key), value, "{key}");
    }
    assert!(one("ExecStart").starts_with("/usr/bin/synwatch serve ") && one("ExecStart").ends_with(" $ARGS"));
    assert!(!service_values(&settings, "SystemCallFilter").is_empty());
    let families: BTreeSet<String> = one("RestrictAddressFamilies").split_whitespace().map(str::to_string).collect();
    let expected: BTreeSet<String> =
        ["AF_INET", "AF_INET6", "AF_PACKET", "AF_NETLINK", "AF_UNIX"].iter().map(|family| family.to_string()).collect();
    assert_eq!(families, expected);
    assert!(service_values(&settings, "PrivateUsers").is_empty(), "PrivateUsers= breaks raw sockets");
    assert!(service_values(&settings, "PrivateNetwork").is_empty(), "the service scans the host's networks");
}

/// The unit with its `ExecStart` pointing at the binary under test (`systemd-analyze verify`
/// checks that the program exists), written to `scratch`.
fn unit_for_test(scratch: &Scratch) -> PathBuf {
    let text =
        read("systemd/synwatch.service").replace("/usr/bin/synwatch ", &format!("{} ", crate::helpers::synwatch()));
    let path = scratch.join("synwatch.service");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn issue_8_systemd_analyze_verifies_the_unit_and_scores_it_2_or_lower() {
    let test = "issue_8_systemd_analyze_verifies_the_unit_and_scores_it_2_or_lower";
    if !package_or_skip(test, "systemd-analyze", "systemd") {
        return;
    }
    let scratch = Scratch::new("unit-verify");
    let unit = unit_for_test(&scratch);
    let verify = Command::new("systemd-analyze").arg("verify").arg(&unit).output().unwrap();
    let complaints = String::from_utf8_lossy(&verify.stderr).to_string() + &String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success() && complaints.trim().is_empty(), "systemd-analyze verify: {complaints}");
    let security =
        Command::new("systemd-analyze").args(["security", "--offline=true", "--no-pager"]).arg(&unit).output().unwrap();
    let report = String::from_utf8_lossy(&security.stdout);
    let score: f64 = report
        .lines()
        .find_map(|line| line.split("Overall exposure level for synwatch.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{report}\n{}", String::from_utf8_lossy(&security.stderr)));
    assert!(score <= 2.0, "exposure {score} > 2.0:\n{report}");
}

/// The system calls a unit's `SystemCallFilter=` lines allow, expanded the way systemd reads
/// them: the first line is an allow list, later lines add (or, with `~`, remove) calls.
fn allowed_system_calls(filters: &[String]) -> BTreeSet<String> {
    fn expand(item: &str, into: &mut BTreeSet<String>) {
        if !item.starts_with('@') {
            into.insert(item.to_string());
            return;
        }
        let output = Command::new("systemd-analyze").args(["syscall-filter", "--no-pager", item]).output().unwrap();
        assert!(output.status.success(), "systemd-analyze syscall-filter {item}");
        for line in String::from_utf8_lossy(&output.stdout).lines().skip(1).map(str::trim) {
            if !line.is_empty() && !line.starts_with('#') {
                expand(line, into);
            }
        }
    }
    assert!(!filters[0].starts_with('~'), "the first SystemCallFilter= line is an allow list");
    let mut allowed = BTreeSet::new();
    for line in filters {
        let (deny, items) = match line.strip_prefix('~') {
            Some(items) => (true, items),
            None => (false, line.as_str()),
        };
        let mut calls = BTreeSet::new();
        for item in items.split_whitespace() {
            expand(item, &mut calls);
        }
        if deny {
            allowed.retain(|call| !calls.contains(call));
        } else {
            allowed.extend(calls);
        }
    }
    allowed
}

/// The system calls and socket families of the traced process after it became `program`.
fn traced_calls(trace: &Path, program: &Path) -> (BTreeSet<String>, BTreeSet<String>) {
    let text = std::fs::read_to_string(trace).unwrap();
    let start = text.find(&format!("execve(\"{}\"", program.display())).expect("the trace shows synwatch's exec");
    let (mut calls, mut families) = (BTreeSet::new(), BTreeSet::new());
    for line in text[start..].lines() {
        // `PID name(args...` or `PID <... name resumed>`: the first form names each call.
        let Some(rest) = line.split_once(' ').map(|(_, rest)| rest.trim_start()) else { continue };
        let Some((name, arguments)) = rest.split_once('(') else { continue };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
            continue;
        }
        calls.insert(name.to_string());
        if name == "socket"
            && let Some(family) = arguments.split(',').next()
        {
            families.insert(family.trim().to_string());
        }
    }
    (calls, families)
}

/// Runs `serve` as the unit does (user nobody; `capabilities` ambient and bounding, or none)
/// under strace, exercises scans, `/probe`, `/sd`, a reload and the shutdown, and returns the
/// trace and the scan mode it reported.
fn traced_serve(
    scratch: &Scratch,
    program: &Path,
    label: &str,
    config: &Path,
    capabilities: bool,
) -> (PathBuf, String) {
    let state = scratch.join(&format!("state-{label}"));
    std::fs::create_dir_all(&state).unwrap();
    nix::unistd::chown(&state, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    let trace = scratch.join(&format!("trace-{label}"));
    let address = format!("127.0.0.1:{}", free_port());
    let log = scratch.join(&format!("serve-{label}.log"));
    let mut command = Command::new("strace");
    command.args(["-f", "-qq", "-o"]).arg(&trace);
    command.args(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "--no-new-privs"]);
    if capabilities {
        command.args(["--inh-caps", "+net_raw", "--ambient-caps", "+net_raw", "--bounding-set", "-all,+net_raw"]);
    } else {
        command.args(["--inh-caps", "-all", "--bounding-set", "-all"]);
    }
    command.arg(program).args(["serve", "--listen", &address, "--config"]).arg(config);
    command.arg("--state-dir").arg(&state);
    let child = command.stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap()).spawn().unwrap();
    let mut serve = Serve { child, address: address.parse().unwrap(), log, namespace: None };
    serve.wait_ready();
    serve.wait_for_scans("loopback", 1.0);
    let metrics = serve.metrics();
    let mode = ["syn", "connect"]
        .into_iter()
        .find(|mode| sample(&metrics, &format!("synwatch_scan_mode{{mode=\"{mode}\"}}")) == Some(1.0))
        .expect("a scan mode")
        .to_string();
    let (status, body) = http("GET", serve.address, "/probe?target=127.0.0.1&ports=22,80").unwrap();
    assert_eq!(status, 200, "{body}");
    let (status, body) = http("GET", serve.address, "/sd").unwrap();
    assert_eq!(status, 200, "{body}");
    let reloads = sample(&metrics, "synwatch_config_last_reload_success_timestamp_seconds").unwrap();
    // The child is strace; synwatch is its child (setpriv exec'd it).
    let strace = serve.child.id();
    let children = std::fs::read_to_string(format!("/proc/{strace}/task/{strace}/children")).unwrap();
    let synwatch: i32 = children.split_whitespace().next().expect("strace's child").parse().unwrap();
    let signal = |signal: Signal| nix::sys::signal::kill(nix::unistd::Pid::from_raw(synwatch), signal).unwrap();
    signal(Signal::SIGHUP);
    wait_until("the reload", 20, || {
        (serve.value("synwatch_config_last_reload_success_timestamp_seconds") > Some(reloads)).then_some(())
    });
    serve.wait_for_scans("loopback", 1.0);
    signal(Signal::SIGTERM);
    let status = wait_until("exit after SIGTERM", 20, || serve.child.try_wait().unwrap());
    assert!(status.success(), "{}", serve.log_text());
    (trace, mode)
}

#[test]
fn issue_8_the_unit_allows_every_system_call_and_family_serve_uses() {
    let test = "issue_8_the_unit_allows_every_system_call_and_family_serve_uses";
    if !package_or_skip(test, "systemd-analyze", "systemd")
        || !package_or_skip(test, "strace", "strace")
        || !package_or_skip(test, "setpriv", "util-linux")
    {
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var("SYNWATCH_REQUIRE_LAB").as_deref() != Ok("1"),
            "{test}: SYNWATCH_REQUIRE_LAB=1 but not root (setpriv needs it to become another user)"
        );
        eprintln!("skipping {test}: needs root to run serve as another user with CAP_NET_RAW");
        return;
    }
    let settings = unit_settings(&read("systemd/synwatch.service"));
    let allowed = allowed_system_calls(&service_values(&settings, "SystemCallFilter"));
    assert!(allowed.contains("sendmmsg") && !allowed.contains("setuid"), "the filter expands: {allowed:?}");
    let families: BTreeSet<String> =
        service_values(&settings, "RestrictAddressFamilies")[0].split_whitespace().map(str::to_string).collect();
    let scratch = Scratch::new("unit-trace");
    std::fs::set_permissions(&scratch.0, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // A copy the unprivileged user can run wherever the checkout lives (a home directory may be
    // closed to it).
    let program = scratch.join("synwatch");
    std::fs::copy(crate::helpers::synwatch(), &program).unwrap();
    let config = scratch.join("synwatch.yaml");
    // Every collector on: listeners, reverse DNS (to a loopback port where nothing answers),
    // on-demand probes.
    let dns_port = free_port();
    std::fs::write(
        &config,
        format!(
            "engine: {{max_rate: 10000}}\ndefaults: {{interval: 1s, timeout: 10s, retries: 1, wait: 200ms}}\nresolve_hostnames: true\ndns: {{nameservers: [\"127.0.0.1:{dns_port}\"], timeout: 200ms}}\nlisteners: {{enabled: true, interval: 1s}}\nondemand: {{enabled: true, allow_targets: [127.0.0.0/8]}}\ntargets:\n  - name: loopback\n    addresses: [127.0.0.1, \"::1\"]\n    ports: \"22,80,443\"\n    details: true\n"
        ),
    )
    .unwrap();
    let mut modes = Vec::new();
    let mut used_calls = BTreeMap::new();
    for (label, capabilities) in [("raw", true), ("connect", false)] {
        let (trace, mode) = traced_serve(&scratch, &program, label, &config, capabilities);
        modes.push(mode);
        let (calls, used_families) = traced_calls(&trace, &program);
        for family in &used_families {
            assert!(families.contains(family), "{label}: serve opened an {family} socket, which the unit forbids");
        }
        for call in calls {
            used_calls.entry(call).or_insert(label);
        }
    }
    assert_eq!(modes, ["syn", "connect"], "CAP_NET_RAW alone gives SYN mode; none gives connect()");
    assert!(used_calls.contains_key("sendmmsg") || used_calls.contains_key("sendto"), "{used_calls:?}");
    let denied: Vec<_> = used_calls.iter().filter(|(call, _)| !allowed.contains(*call)).collect();
    assert!(denied.is_empty(), "system calls serve made that the unit's SystemCallFilter denies: {denied:?}");
}

#[test]
fn issue_8_serve_shards_split_the_hosts_and_refuse_bad_shards() {
    let scratch = Scratch::new("serve-shards");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let open = listener.local_addr().unwrap().port();
    let closed = free_port();
    let config = scratch.join("synwatch.yaml");
    std::fs::write(
        &config,
        format!(
            "engine: {{max_rate: 10000}}\ndefaults: {{interval: 1s, timeout: 10s, retries: 1, wait: 200ms}}\ntargets:\n  - name: block\n    addresses: [127.0.0.1-127.0.0.5]\n    ports: \"{open},{closed}\"\n    details: true\n"
        ),
    )
    .unwrap();
    let config_text = config.to_str().unwrap();
    // Pod synwatch-0 of a StatefulSet of 2, and shard 2/2 written out.
    let first = Serve::start(&scratch, &["--config", config_text, "--shard", "ordinal:synwatch-0/2"]);
    let second = Serve::start(&scratch, &["--config", config_text, "--shard", "2/2"]);
    let mut seen = BTreeMap::new();
    for (index, serve) in [&first, &second].into_iter().enumerate() {
        serve.wait_for_scans("block", 1.0);
        let metrics = serve.metrics();
        let info = format!("synwatch_shard_info{{shard=\"{}\",shards=\"2\"}}", index + 1);
        assert_eq!(sample(&metrics, &info), Some(1.0), "{metrics}");
        for line in metrics.lines().filter(|line| line.starts_with("synwatch_port_open{")) {
            let (series, value) = line.rsplit_once(' ').unwrap();
            assert!(seen.insert(series.to_string(), (index, value.to_string())).is_none(), "{series} in both shards");
        }
    }
    // Hosts [5·0/2, 5·1/2) = 127.0.0.1-2 in shard 1 and 127.0.0.3-5 in shard 2, each host with
    // both ports; only 127.0.0.1 listens.
    assert_eq!(seen.len(), 10, "{seen:?}");
    for host in 1..=5 {
        for port in [open, closed] {
            let series =
                format!("synwatch_port_open{{target=\"block\",ip=\"127.0.0.{host}\",port=\"{port}\",proto=\"tcp\"}}");
            let expected = (usize::from(host > 2), if host == 1 && port == open { "1" } else { "0" }.to_string());
            assert_eq!(seen.get(&series), Some(&expected), "{series}");
        }
    }
    drop(listener);
    for (bad, reason) in [("3/2", "need 1 <= i <= n"), ("ordinal:synwatch/2", "does not end in an ordinal")] {
        let output = Command::new(crate::helpers::synwatch())
            .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port()), "--config", config_text])
            .env("SYNWATCH_SHARD", bad)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{bad}: {stderr}");
        assert!(stderr.contains("--shard") && stderr.contains(reason), "{bad}: {stderr}");
    }
}

fn manifest(name: &str) -> serde_json::Value {
    serde_saphyr::from_str(&read(&format!("packaging/kubernetes/{name}")))
        .unwrap_or_else(|error| panic!("{name}: {error}"))
}

/// `value[key][key]...`, or a panic naming the path.
fn at<'a>(value: &'a serde_json::Value, path: &[&str]) -> &'a serde_json::Value {
    path.iter().fold(value, |value, key| match key.parse::<usize>() {
        Ok(index) => value.get(index).unwrap_or_else(|| panic!("no [{index}] in {path:?}")),
        Err(_) => value.get(*key).unwrap_or_else(|| panic!("no {key} in {path:?}")),
    })
}

fn text(value: &serde_json::Value, path: &[&str]) -> String {
    match at(value, path) {
        serde_json::Value::String(text) => text.clone(),
        serde_json::Value::Number(number) => number.to_string(),
        serde_json::Value::Bool(flag) => flag.to_string(),
        other => panic!("{path:?} is not a scalar: {other:?}"),
    }
}

#[test]
fn issue_8_kubernetes_manifests_agree_and_a_pods_command_line_runs_its_shard() {
    let set = manifest("statefulset.yaml");
    let service = manifest("service.yaml");
    let monitor = manifest("servicemonitor.yaml");
    let config_map = manifest("configmap.yaml");
    assert_eq!(text(&set, &["kind"]), "StatefulSet");
    // Selectors: the set's pods, the Service's endpoints and the ServiceMonitor's Service.
    let pod_labels = at(&set, &["spec", "template", "metadata", "labels"]);
    assert_eq!(at(&set, &["spec", "selector", "matchLabels"]), pod_labels);
    assert_eq!(at(&service, &["spec", "selector"]), pod_labels);
    let service_labels = at(&service, &["metadata", "labels"]).as_object().unwrap();
    for (key, value) in at(&monitor, &["spec", "selector", "matchLabels"]).as_object().unwrap() {
        assert_eq!(service_labels.get(key), Some(value), "the ServiceMonitor selects the Service by {key:?}");
    }
    assert_eq!(text(&set, &["spec", "serviceName"]), text(&service, &["metadata", "name"]));
    assert_eq!(text(&service, &["spec", "clusterIP"]), "None", "headless: one endpoint per replica");
    let container = at(&set, &["spec", "template", "spec", "containers", "0"]);
    let port_name = text(&monitor, &["spec", "endpoints", "0", "port"]);
    assert_eq!(text(&service, &["spec", "ports", "0", "name"]), port_name);
    assert_eq!(text(&service, &["spec", "ports", "0", "targetPort"]), port_name);
    assert_eq!(text(container, &["ports", "0", "name"]), port_name);
    let container_port = text(container, &["ports", "0", "containerPort"]);
    // The arguments: --listen on the container port, --shard of the replica count, POD_NAME.
    let args: Vec<String> =
        at(container, &["args"]).as_array().unwrap().iter().map(|arg| arg.as_str().unwrap().to_string()).collect();
    let flag = |name: &str| {
        args.iter()
            .find_map(|arg| arg.strip_prefix(&format!("--{name}=")))
            .unwrap_or_else(|| panic!("--{name}"))
            .to_string()
    };
    assert!(flag("listen").ends_with(&format!(":{container_port}")));
    let replicas = text(&set, &["spec", "replicas"]);
    assert_eq!(flag("shard"), format!("ordinal:$(POD_NAME)/{replicas}"), "--shard's n is the replica count");
    assert_eq!(text(container, &["env", "0", "name"]), "POD_NAME");
    assert_eq!(text(container, &["env", "0", "valueFrom", "fieldRef", "fieldPath"]), "metadata.name");
    // Least privilege: non-root, NET_RAW only.
    assert_eq!(text(&set, &["spec", "template", "spec", "securityContext", "runAsNonRoot"]), "true");
    let capabilities = at(container, &["securityContext", "capabilities"]);
    assert_eq!(*capabilities, serde_json::json!({"drop": ["ALL"], "add": ["NET_RAW"]}));
    assert_eq!(text(container, &["securityContext", "readOnlyRootFilesystem"]), "true");
    // The ConfigMap's config is the loopback-only default, word for word.
    let config = text(&config_map, &["data", "synwatch.yaml"]);
    assert_eq!(config, read("configs/synwatch.yaml"), "the ConfigMap is configs/synwatch.yaml");
    let mount = text(container, &["volumeMounts", "0", "mountPath"]);
    assert_eq!(format!("{mount}/synwatch.yaml"), flag("config"));
    // Pod synwatch-1's command line, with the paths of this machine and a free port, runs and
    // serves shard 2 of the replica count.
    let scratch = Scratch::new("kubernetes");
    let config_path = scratch.join("synwatch.yaml");
    std::fs::write(&config_path, &config).unwrap();
    let address = format!("127.0.0.1:{}", free_port());
    let pod_args: Vec<String> = args
        .iter()
        .map(|arg| {
            let arg = arg.replace("$(POD_NAME)", "synwatch-1");
            match arg.split_once('=') {
                Some(("--config", _)) => format!("--config={}", config_path.display()),
                Some(("--listen", _)) => format!("--listen={address}"),
                Some(("--state-dir", _)) => format!("--state-dir={}", scratch.0.display()),
                _ => arg,
            }
        })
        .collect();
    let log = scratch.join("pod.log");
    let child = Command::new(crate::helpers::synwatch())
        .args(&pod_args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut serve = Serve { child, address: address.parse().unwrap(), log, namespace: None };
    serve.wait_ready();
    let info = format!("synwatch_shard_info{{shard=\"2\",shards=\"{replicas}\"}}");
    assert_eq!(serve.value(&info), Some(1.0), "{}", serve.metrics());
    let first_line = serve.log_text().lines().next().unwrap_or_default().to_string();
    assert!(serde_json::from_str::<serde_json::Value>(&first_line).is_ok(), "--log-format=json: {first_line}");
}

#[test]
fn issue_8_the_dockerfile_runs_serve_as_a_non_root_user_with_the_loopback_default() {
    let dockerfile = read("Dockerfile");
    let instruction = |name: &str| -> Vec<String> {
        dockerfile.lines().filter_map(|line| line.strip_prefix(&format!("{name} "))).map(str::to_string).collect()
    };
    let user = instruction("USER");
    assert_eq!(user.len(), 1, "{user:?}");
    let uid: u32 = user[0].split(':').next().unwrap().parse().expect("a numeric user (runAsNonRoot checks it)");
    assert_ne!(uid, 0);
    let manifest_uid =
        text(&manifest("statefulset.yaml"), &["spec", "template", "spec", "securityContext", "runAsUser"]);
    assert_eq!(manifest_uid, uid.to_string(), "the StatefulSet runs as the image's user");
    assert!(dockerfile.contains("setcap cap_net_raw=ep /usr/bin/synwatch"));
    assert!(instruction("COPY").contains(&"configs/synwatch.yaml /etc/synwatch/synwatch.yaml".to_string()));
    // The CMD is a command line the binary accepts (parsed, not run: --help after it).
    let command: Vec<String> = serde_json::from_str(&instruction("CMD")[0]).unwrap();
    let config = command.iter().position(|arg| arg == "--config").unwrap();
    let mut arguments = command.clone();
    arguments[config + 1] = format!("{}/configs/synwatch.yaml", repository().display());
    let output =
        Command::new(crate::helpers::synwatch()).args(["check-config", &arguments[config + 1]]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    arguments.push("--help".into());
    let output = Command::new(crate::helpers::synwatch()).args(&arguments).output().unwrap();
    assert!(output.status.success(), "{arguments:?}: {}", String::from_utf8_lossy(&output.stderr));
}
