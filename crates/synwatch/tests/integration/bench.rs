//! `synwatch bench` end to end: a short sweep on a lab the binary builds and tears down itself
//! (ground truth from the same plan), the programs it compares with reading their real output,
//! the plot as SVG and PNG, and the rules for named targets.

use std::net::TcpListener;
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use synwatch_bench::{LabFamily, LabPlan};

use crate::helpers::{Scratch, assert_success, lab_possible_or_skip, labs_of, package_or_skip, synwatch};

/// Runs `synwatch bench` and returns its output and pid.
fn bench(arguments: &[&str]) -> (Output, u32) {
    let child = Command::new(synwatch())
        .arg("bench")
        .args(arguments)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("synwatch starts");
    let pid = child.id();
    (child.wait_with_output().expect("synwatch runs"), pid)
}

fn read_json(path: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("the JSON file")).expect("valid JSON")
}

fn repetitions(tool: &Value) -> impl Iterator<Item = &Value> {
    tool["steps"].as_array().unwrap().iter().flat_map(|step| step["repetitions"].as_array().unwrap())
}

#[test]
fn issue_7_a_short_lab_sweep_finds_the_ground_truth_in_both_modes_and_families() {
    let test = "issue_7_a_short_lab_sweep_finds_the_ground_truth_in_both_modes_and_families";
    if !lab_possible_or_skip(test) {
        return;
    }
    let scratch = Scratch::new("bench-sweep");
    let (json, plot) = (scratch.join("sweep.json"), scratch.join("sweep.svg"));
    let (output, pid) = bench(&[
        "--lab",
        "--lab-hosts",
        "512",
        "--lab-family",
        "both",
        "--lab-open",
        "10",
        "--lab-filtered",
        "12.5",
        "--lab-seed",
        "3",
        "--ports",
        "22,80",
        "--rates",
        "5k,20k",
        "--repetitions",
        "2",
        "--wait",
        "500ms",
        "--mode",
        "syn,connect",
        "--json",
        json.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
    ]);
    assert_success(&output);
    assert!(labs_of(pid).is_empty(), "the lab was left behind: {:?}", labs_of(pid));
    // The same plan computed here: the binary's ground truth must be this one.
    let plan = LabPlan {
        hosts: 512,
        family: LabFamily::Both,
        ports: vec![22, 80],
        open_percent: 10.0,
        filtered_percent: 12.5,
        loss_percent: 0,
        seed: 3,
        field: None,
    };
    let truth = plan.open_endpoints().len() as u64;
    let answering_probes = u64::from(plan.hosts - plan.filtered_hosts()) * 2 * 2;
    let report = read_json(&json);
    assert_eq!(report["ground_truth_open"], truth);
    assert_eq!(report["probes"], plan.probes());
    let tools = report["tools"].as_array().unwrap();
    let names: Vec<&str> = tools.iter().map(|tool| tool["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["synwatch-syn", "synwatch-connect"]);
    for tool in tools {
        assert_eq!(repetitions(tool).count(), 4, "2 steps × 2 repetitions");
        for repetition in repetitions(tool) {
            // Exactly the lab's open ports, each answered probe counted once, every probe sent.
            assert_eq!(repetition["open_true"], truth, "{}: {repetition}", tool["name"]);
            assert_eq!(repetition["open_found"], truth, "{}: {repetition}", tool["name"]);
            assert_eq!(repetition["replies"], answering_probes, "{}: {repetition}", tool["name"]);
            assert_eq!(repetition["probes"], plan.probes());
            assert!(repetition["achieved_pps"].as_f64().is_some_and(|rate| rate > 0.0), "{repetition}");
            assert!(repetition["cpu_seconds"].as_f64().is_some_and(|cpu| cpu > 0.0), "{repetition}");
        }
    }
    for summary in report["summaries"].as_array().unwrap() {
        // Full recall at both rates: the curve never bent, the knee is the top of the range.
        assert_eq!((summary["knee"].as_u64(), summary["bent"].as_bool()), (Some(20_000), Some(false)), "{summary}");
        assert!(summary["steps"].as_array().unwrap().iter().all(|step| step["recall"] == 1.0), "{summary}");
    }
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(table.contains(&format!("recall is against the lab's {truth} open ports")), "{table}");
    // Each mode gets its recommendation line (its wording depends on the achieved rate, which
    // is timing and not asserted here).
    for name in ["synwatch-syn: ", "synwatch-connect: "] {
        assert!(table.lines().any(|line| line.starts_with(name) && line.contains("engine.max_rate")), "{table}");
    }
    let svg = std::fs::read_to_string(&plot).unwrap();
    let document = roxmltree::Document::parse(&svg).expect("the plot is well-formed XML");
    let texts: Vec<&str> = document.descendants().filter_map(|node| node.text()).collect();
    for expected in ["synwatch-syn achieved rate", "synwatch-connect recall", "requested rate (packets/s)"] {
        assert!(texts.iter().any(|text| text.contains(expected)), "no {expected:?} in the plot");
    }
}

#[test]
fn issue_7_compared_scanners_run_on_the_same_lab_and_their_output_is_read() {
    let test = "issue_7_compared_scanners_run_on_the_same_lab_and_their_output_is_read";
    if !lab_possible_or_skip(test) {
        return;
    }
    let tools: Vec<&str> = [("masscan", "masscan"), ("zmap", "zmap"), ("nmap", "nmap")]
        .into_iter()
        .filter(|(program, package)| package_or_skip(test, program, package))
        .map(|(program, _)| program)
        .collect();
    let scratch = Scratch::new("bench-compare");
    let (json, plot) = (scratch.join("compare.json"), scratch.join("compare.png"));
    let compare = tools.join(",");
    let mut arguments = vec![
        "--lab",
        "--lab-hosts",
        "256",
        "--lab-open",
        "20",
        "--rates",
        "2k,4k",
        "--repetitions",
        "1",
        "--wait",
        "1s",
        "--mode",
        "syn",
        "--json",
        json.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
    ];
    if !tools.is_empty() {
        arguments.extend(["--compare", &compare]);
    }
    let (output, pid) = bench(&arguments);
    assert_success(&output);
    assert!(labs_of(pid).is_empty(), "the lab was left behind");
    let report = read_json(&json);
    let truth = report["ground_truth_open"].as_u64().unwrap();
    assert!(truth > 20, "{truth} open ports in the lab");
    let names: Vec<&str> =
        report["tools"].as_array().unwrap().iter().map(|tool| tool["name"].as_str().unwrap()).collect();
    let mut expected = vec!["synwatch-syn"];
    expected.extend(&tools);
    assert_eq!(names, expected, "stderr: {}", String::from_utf8_lossy(&output.stderr));
    for tool in report["tools"].as_array().unwrap() {
        let name = tool["name"].as_str().unwrap();
        assert_eq!(repetitions(tool).count(), 2, "{name}");
        for repetition in repetitions(tool) {
            // Whatever a tool reports open is open in the lab (its output was read right).
            assert_eq!(repetition["open_found"], repetition["open_true"], "{name}: {repetition}");
            // zmap and nmap find every open port at these rates; masscan's receive side may
            // start after its first probes on so short a scan, so it is held only to the above.
            if name != "masscan" {
                assert_eq!(repetition["open_true"], truth, "{name}: {repetition}");
            }
            if name == "zmap" {
                assert_eq!(repetition["replies"], 256, "zmap's metadata: every probe answered");
            }
        }
    }
    // The PNG: signature and the plot's size in the header.
    let png = std::fs::read(&plot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(&png[12..16], b"IHDR");
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert_eq!((width, height), (1000, 620));
}

#[test]
fn issue_7_named_targets_only_and_fast_rates_need_confirmation() {
    let (output, _) = bench(&["--ports", "80", "--rates", "5k"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("name the targets"));
    let (output, _) = bench(&["127.0.0.1", "--ports", "80", "--rates", "5k,50k"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--confirm-targets"));
    let (output, _) = bench(&["127.0.0.1", "--ports", "80", "--compare", "zmap"]);
    assert_eq!(output.status.code(), Some(2), "--compare is for the lab only");
    // A slow sweep of loopback runs (SYN as root, connect otherwise): one open port, recall
    // against the best step.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let open = listener.local_addr().unwrap().port();
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let ports = format!("{open},{closed}");
    let scratch = Scratch::new("bench-loopback");
    let json = scratch.join("loopback.json");
    let (output, _) = bench(&[
        "127.0.0.1",
        "--ports",
        &ports,
        "--rates",
        "1k,2k",
        "--repetitions",
        "1",
        "--wait",
        "200ms",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_success(&output);
    let report = read_json(&json);
    assert_eq!(report["ground_truth_open"], Value::Null, "no ground truth outside the lab");
    let tool = &report["tools"][0];
    assert!(tool["name"].as_str().unwrap().starts_with("synwatch-"));
    for repetition in repetitions(tool) {
        assert_eq!((repetition["open_found"].as_u64(), repetition["replies"].as_u64()), (Some(1), Some(2)));
    }
    assert_eq!(report["summaries"][0]["knee"], 2_000);
}

#[test]
fn issue_19_a_field_profile_sweep_scores_against_the_model_and_counts_middleboxes_as_false_opens() {
    let test = "issue_19_a_field_profile_sweep_scores_against_the_model";
    if !lab_possible_or_skip(test) {
        return;
    }
    use synwatch_lab::field::{TrueState, profile};
    let (seed, ports) = (4u64, [22u16, 80, 443]);
    let model = profile("internet", seed).unwrap();
    let (mut truth, mut suspect) = (0u64, 0u64);
    for address in "198.18.0.0/24".parse::<ipnetwork::IpNetwork>().unwrap().iter() {
        for port in ports {
            match model.truth(address, port, std::time::Duration::ZERO) {
                TrueState::Open => truth += 1,
                TrueState::Suspect => suspect += 1,
                _ => {}
            }
        }
    }
    assert!(truth > 0 && suspect > 0, "seed {seed} gives the /24 open ports ({truth}) and a middlebox ({suspect})");
    let scratch = Scratch::new("bench-field");
    let json = scratch.join("field.json");
    let (output, pid) = bench(&[
        "--lab",
        "--lab-profile",
        "internet",
        "--lab-hosts",
        "256",
        "--lab-seed",
        "4",
        "--ports",
        "22,80,443",
        "--rates",
        "10k",
        "--repetitions",
        "1",
        "--retries",
        "2",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_success(&output);
    assert!(labs_of(pid).is_empty(), "the lab was left behind");
    let report = read_json(&json);
    assert_eq!(report["ground_truth_open"], truth);
    assert!(report["targets"].as_str().unwrap().starts_with("field lab `internet` (seed 4)"), "{report}");
    let tool = &report["tools"][0];
    let repetition = repetitions(tool).next().unwrap();
    // Three tries against 1 % loss each way find every real service; today's engine also
    // reports every SYN proxy's and tarpit's port as open.
    assert_eq!(repetition["open_true"], truth, "{repetition}");
    assert_eq!(repetition["open_found"], truth + suspect, "{repetition}");
    // Knobs of the field lab need a profile.
    let (output, _) = bench(&["--lab", "--lab-rtt", "5ms"]);
    assert_eq!(output.status.code(), Some(2), "{}", String::from_utf8_lossy(&output.stderr));
}
