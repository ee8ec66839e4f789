//! Issue 8: the references in `docs/` cover the program as built. The config keys are found
//! by asking the parsers themselves (an unknown key at each level makes serde list the keys it
//! knows), the metric names from the registry and the hand-written families; a key or metric
//! missing from its reference, or a reference entry that no longer exists, fails.

use std::collections::BTreeSet;
use std::path::Path;

use synwatch_engine::Shard;
use synwatch_exporter::metrics::{BuildInfo, Metrics, RENDERED_FAMILIES};
use synwatch_exporter::ondemand::probe::PROBE_FAMILIES;

fn doc(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// One step into a config: a key of a mapping, an item of a list, or an entry of a mapping
/// whose keys are names (`modules`).
#[derive(Debug, Clone)]
enum Step {
    Key(String),
    Item,
    Entry,
}

const PROBE_KEY: &str = "zz_not_a_key";

/// The YAML that puts an unknown key at `path`.
fn probe_at(path: &[Step]) -> String {
    let mut value = serde_json::json!({ PROBE_KEY: 1 });
    for step in path.iter().rev() {
        value = match step {
            Step::Key(key) => serde_json::json!({ key.as_str(): value }),
            Step::Item => serde_json::json!([value]),
            Step::Entry => serde_json::json!({ "name": value }),
        };
    }
    serde_saphyr::to_string(&value).unwrap()
}

/// The keys serde lists when it meets the unknown key at `path`, if that is a struct there.
fn keys_at(parse: &dyn Fn(&str) -> Result<(), String>, path: &[Step]) -> Option<Vec<String>> {
    let error = parse(&probe_at(path)).err()?;
    let rest = error.split(&format!("unknown field `{PROBE_KEY}`, expected")).nth(1)?;
    // "one of a, b, c" (serde-saphyr) or "one of `a`, `b`" (serde), or "`a`" / "nothing".
    let list = rest.trim().strip_prefix("one of ").unwrap_or(rest.trim());
    Some(
        list.split(", ")
            .map(|name| name.trim().trim_matches('`').to_string())
            .filter(|name| !name.is_empty() && name != "nothing" && !name.contains(' '))
            .collect(),
    )
}

/// Every key path of a config format, as the reference writes them: `engine.max_rate`,
/// `targets[].expect.open`, `modules.<name>.ports`.
fn key_paths(parse: &dyn Fn(&str) -> Result<(), String>) -> BTreeSet<String> {
    fn walk(
        parse: &dyn Fn(&str) -> Result<(), String>,
        path: &mut Vec<Step>,
        prefix: &str,
        into: &mut BTreeSet<String>,
    ) {
        let keys = keys_at(parse, path).unwrap_or_else(|| panic!("no struct at {prefix:?}: {}", probe_at(path)));
        for key in keys {
            let name = if prefix.is_empty() { key.to_string() } else { format!("{prefix}.{key}") };
            into.insert(name.clone());
            for (steps, suffix) in [
                (vec![Step::Key(key.clone())], ""),
                (vec![Step::Key(key.clone()), Step::Item], "[]"),
                (vec![Step::Key(key.clone()), Step::Entry], ".<name>"),
            ] {
                let depth = path.len();
                path.extend(steps);
                if keys_at(parse, path).is_some() {
                    walk(parse, path, &format!("{name}{suffix}"), into);
                    path.truncate(depth);
                    break;
                }
                path.truncate(depth);
            }
        }
    }
    let mut paths = BTreeSet::new();
    walk(parse, &mut Vec::new(), "", &mut paths);
    paths
}

/// The first cells of the reference tables (rows that start with a backquoted name), but for
/// command-line flags (`--config FILE`), which have a table of their own.
fn table_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split('`').next())
        .filter(|name| !name.starts_with('-'))
        .map(str::to_string)
        .collect()
}

#[test]
fn issue_8_the_configuration_reference_covers_every_key() {
    let exporter =
        |text: &str| synwatch_exporter::parse(text, "probe.yaml").map(|_| ()).map_err(|error| error.to_string());
    let keys = key_paths(&exporter);
    for expected in ["listen", "engine.max_rate", "targets[].expect.hosts", "modules.<name>.wait", "dns.nameservers"] {
        assert!(keys.contains(expected), "the key finder finds {expected}: {keys:?}");
    }
    let web = |text: &str| {
        synwatch_http::WebSecurity::parse(text, "web.yml", Path::new("/"))
            .map(|_| ())
            .map_err(|error| error.to_string())
    };
    let web_keys = key_paths(&web);
    assert!(web_keys.contains("tls_server_config.cert_file"), "{web_keys:?}");
    assert!(keys.is_disjoint(&web_keys), "one table serves both files");
    let reference = doc("CONFIGURATION.md");
    let documented = table_names(&reference);
    let all: BTreeSet<String> = keys.union(&web_keys).cloned().collect();
    let missing: Vec<&String> = all.difference(&documented).collect();
    assert!(missing.is_empty(), "keys missing from docs/CONFIGURATION.md's tables: {missing:?}");
    let stale: Vec<&String> = documented.difference(&all).collect();
    assert!(stale.is_empty(), "docs/CONFIGURATION.md documents keys that do not exist: {stale:?}");
}

#[test]
fn issue_8_the_metrics_reference_covers_every_metric() {
    let metrics = Metrics::new(&BuildInfo { version: "0".into(), revision: "0".into() }, "syn", Shard::WHOLE);
    let mut names: BTreeSet<String> = metrics.registered_names().iter().cloned().collect();
    assert!(names.contains("synwatch_packets_sent_total") && names.contains("process_cpu_seconds_total"), "{names:?}");
    names.extend(RENDERED_FAMILIES.iter().map(|name| name.to_string()));
    names.extend(PROBE_FAMILIES.iter().map(|name| name.to_string()));
    let reference = doc("METRICS.md");
    let documented = table_names(&reference);
    let missing: Vec<&String> = names.difference(&documented).collect();
    assert!(missing.is_empty(), "metrics missing from docs/METRICS.md's tables: {missing:?}");
    let stale: Vec<&String> = documented.difference(&names).collect();
    assert!(stale.is_empty(), "docs/METRICS.md documents metrics that do not exist: {stale:?}");
}
