//! `lab_bench target-files`: what Prometheus `file_sd` target files cost (issue 24).
//!
//! No lab and no packets beyond loopback: `synwatch check-config` reads configs whose
//! `targets_files` hold 1,000 to 100,000 loopback entries (YAML and JSON), a file one entry over
//! the bound is timed until it is refused, and a `synwatch serve` in connect() mode (targets
//! scanned once an hour, loopback only) is timed from a file's rewrite to its new label on
//! `/metrics`, through the inotify watch.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::Arguments;

/// A file_sd file of `entries` distinct loopback addresses with port 9100, in one group.
fn write_file_sd(path: &Path, entries: usize, json: bool) -> Result<()> {
    let address = |index: usize| format!("127.{}.{}.{}:9100", 1 + index / 65_536, (index / 256) % 256, index % 256);
    let mut text = String::with_capacity(entries * 24);
    if json {
        text.push_str("[{\"labels\": {\"team\": \"bench\"}, \"targets\": [");
        for index in 0..entries {
            if index > 0 {
                text.push(',');
            }
            text.push_str(&format!("\"{}\"", address(index)));
        }
        text.push_str("]}]\n");
    } else {
        text.push_str("- labels: {team: bench}\n  targets:\n");
        for index in 0..entries {
            text.push_str(&format!("    - \"{}\"\n", address(index)));
        }
    }
    std::fs::write(path, text)?;
    Ok(())
}

/// Runs `synwatch check-config CONFIG` and returns its wall time, its success and its stderr.
fn check_config(arguments: &Arguments, config: &Path) -> Result<(Duration, bool, String)> {
    let start = Instant::now();
    let output = Command::new(&arguments.synwatch)
        .arg("check-config")
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .context("run synwatch check-config (build it with cargo build --release)")?;
    Ok((start.elapsed(), output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned()))
}

fn median_ms(mut times: Vec<Duration>) -> f64 {
    times.sort();
    times[times.len() / 2].as_secs_f64() * 1000.0
}

pub fn target_files(arguments: &Arguments) -> Result<()> {
    let directory = std::env::temp_dir().join(format!("lab-bench-target-files-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&directory);
    std::fs::create_dir_all(directory.join("targets"))?;
    let result = measure(arguments, &directory);
    let _ = std::fs::remove_dir_all(&directory);
    result
}

fn measure(arguments: &Arguments, directory: &Path) -> Result<()> {
    let runs = arguments.runs.max(1);
    let config = directory.join("synwatch.yaml");
    let targets = directory.join("targets");
    std::fs::write(
        &config,
        format!(
            "engine: {{mode: connect}}\ndefaults: {{interval: 1h}}\ntargets_files: [\"{}/*.yml\", \"{}/*.json\"]\n",
            targets.display(),
            targets.display()
        ),
    )?;
    println!(
        "## `synwatch check-config` of a config whose target file holds N loopback entries (median of {runs} runs)\n"
    );
    println!("| entries | format | file bytes | check-config median ms | result |");
    println!("|---|---|---|---|---|");
    for entries in [0usize, 1_000, 10_000, 100_000, 100_001] {
        for json in [false, true] {
            let file = targets.join(if json { "nodes.json" } else { "nodes.yml" });
            for stale in ["nodes.json", "nodes.yml"] {
                let _ = std::fs::remove_file(targets.join(stale));
            }
            if entries > 0 {
                write_file_sd(&file, entries, json)?;
            }
            let bytes = std::fs::metadata(&file).map(|metadata| metadata.len()).unwrap_or(0);
            let mut times = Vec::new();
            let mut outcome = String::new();
            for _ in 0..runs {
                let (time, success, stderr) = check_config(arguments, &config)?;
                times.push(time);
                outcome = if success {
                    "accepted".to_string()
                } else {
                    stderr.lines().last().unwrap_or("").chars().take(160).collect::<String>().replace('|', "\\|")
                };
            }
            let expected_success = entries <= 100_000;
            ensure!(outcome == "accepted" || !expected_success, "{entries} entries refused: {outcome}");
            ensure!(outcome != "accepted" || expected_success, "{entries} entries accepted past the bound");
            println!(
                "| {entries} | {} | {bytes} | {:.1} | {outcome} |",
                if json { "JSON" } else { "YAML" },
                median_ms(times)
            );
            if entries == 0 {
                break;
            }
        }
    }
    for stale in ["nodes.json", "nodes.yml"] {
        let _ = std::fs::remove_file(targets.join(stale));
    }
    // The same bound in host names (one target of 100,000 names: parsed, checked and kept
    // once each; check-config resolves none of them).
    let mut text = String::from("- labels: {team: bench}\n  targets:\n");
    for index in 0..100_000 {
        text.push_str(&format!("    - \"host-{index}.synwatch.test:9100\"\n"));
    }
    let file = targets.join("nodes.yml");
    std::fs::write(&file, &text)?;
    let mut times = Vec::new();
    for _ in 0..runs {
        let (time, success, stderr) = check_config(arguments, &config)?;
        ensure!(success, "100,000 names refused: {stderr}");
        times.push(time);
    }
    println!("| 100000 host names | YAML | {} | {:.1} | accepted |", text.len(), median_ms(times));
    std::fs::remove_file(&file)?;
    reload_latency(arguments, &config, &targets, runs)
}

/// From a file's rewrite to its new label on `/metrics`, for a one-entry file and a
/// 10,000-entry file (the watch's 200 ms debounce included).
fn reload_latency(arguments: &Arguments, config: &Path, targets: &Path, runs: usize) -> Result<()> {
    let file = targets.join("nodes.yml");
    let write = |entries: usize, team: &str| -> Result<()> {
        let temporary = targets.join(".nodes.yml.new");
        write_file_sd(&temporary, entries, false)?;
        let text = std::fs::read_to_string(&temporary)?.replace("team: bench", &format!("team: {team}"));
        std::fs::write(&temporary, text)?;
        // A rename, as configuration management writes files: one event, never a half file.
        std::fs::rename(&temporary, &file)?;
        Ok(())
    };
    write(1, "start")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let address: std::net::SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let mut serve = Command::new(&arguments.synwatch)
        .args(["serve", "--log-level", "warn", "--listen", &address.to_string(), "--config"])
        .arg(config)
        .arg("--state-dir")
        .arg(targets.parent().unwrap().join("state"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start synwatch serve")?;
    let result = (|| -> Result<()> {
        let client = crate::exporter::http_client();
        let wait_for = |needle: &str, seconds: u64| -> Result<Duration> {
            let start = Instant::now();
            loop {
                if let Ok((200, body)) = crate::exporter::get(&client, address, "/metrics")
                    && body.contains(needle)
                {
                    return Ok(start.elapsed());
                }
                if start.elapsed() > Duration::from_secs(seconds) {
                    bail!("{needle} not on /metrics after {seconds} s");
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        };
        wait_for("team=\"start\"", 30)?;
        println!(
            "\n## From a target file's rewrite (rename) to its new label on `/metrics` of a running serve (median of {runs} runs, and max)\n"
        );
        println!("| entries in the file | median ms | max ms |");
        println!("|---|---|---|");
        for entries in [1usize, 10_000] {
            let mut times = Vec::new();
            for run in 0..runs {
                let team = format!("t{entries}x{run}");
                write(entries, &team)?;
                let start = Instant::now();
                wait_for(&format!("team=\"{team}\""), 60)?;
                times.push(start.elapsed());
                // Let the reload's scan of the new addresses settle before the next rewrite.
                std::thread::sleep(Duration::from_millis(if entries > 1 { 2_000 } else { 300 }));
            }
            let max = times.iter().max().copied().unwrap_or_default().as_secs_f64() * 1000.0;
            println!("| {entries} | {:.1} | {max:.1} |", median_ms(times));
        }
        Ok(())
    })();
    let _ = serve.kill();
    let _ = serve.wait();
    result
}
