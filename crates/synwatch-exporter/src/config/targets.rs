//! `targets:` and the targets of `targets_files:`: each target as written ([`TargetFile`]) or
//! as a `file_sd` group made it, checked and resolved against `defaults:` into a [`Target`]
//! (with its space built once when it has no names), and its `expect:`.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::Hasher;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_with::serde_as;
use synwatch_engine::{
    AddressFamily, AddressRange, ExclusionPolicy, HostName, HostSet, PortSet, Shard, TargetError, TargetItem,
    TargetSpace, TimeSetting,
};

use super::target_files::{self, FileGroup, FilesRead, TargetsFilesEntry};
use super::values::{
    Addresses, AnyDuration, Canaries, Family, Labels, Name, Ports, PositiveDuration, Retries, TargetItems, TimeValue,
};
use super::yaml::{NodePositions, Step};
use super::{ConfigError, Defaults, VerifySetting};

/// A target's `expect:`: the ports that should be open and the ones that should not.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Expectation {
    /// Ports expected open. When given, it is an allowlist: any other open port is unexpected.
    #[serde_as(as = "Option<Ports>")]
    pub open: Option<PortSet>,
    /// Ports expected closed or filtered.
    #[serde_as(as = "Option<Ports>")]
    pub closed: Option<PortSet>,
    /// Which hosts must have the `open` ports: `all` of the target's addresses, or only the
    /// `responding` ones (for sparse ranges).
    pub hosts: ExpectHosts,
}

/// Which hosts an expectation's `open` ports apply to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExpectHosts {
    /// Every address of the target.
    #[default]
    All,
    /// Addresses that answered at least one probe (SYN-ACK or RST).
    Responding,
}

/// One configured target, with the defaults applied.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Target {
    /// Unique name, the `target` label.
    pub name: String,
    /// Addresses, CIDRs and ranges (from `addresses:` and the target's files).
    #[serde_as(as = "Addresses<0>")]
    pub addresses: Vec<AddressRange>,
    /// DNS names, resolved at the start of every scan (from `addresses:` and the target's files).
    #[serde_as(as = "Vec<serde_with::DisplayFromStr>")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<HostName>,
    /// The target's own labels, written on its per-target series after `target`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The patterns of the target's own files (as written).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub targets_files: Vec<String>,
    /// Ports.
    #[serde_as(as = "Ports")]
    pub ports: PortSet,
    /// Interval, timeout, retries and wait for this target.
    #[serde(flatten)]
    pub settings: Defaults,
    /// Whether per-port series are exported.
    pub details: bool,
    /// The expected-port policy, if any.
    pub expect: Option<Expectation>,
    /// The probes of this target when it has no names: its addresses minus the built-in
    /// exclusions, times its ports, built once while parsing. `None` for a named target (its
    /// space is built at each scan) and for one whose files list nothing yet.
    #[serde(skip)]
    space: Option<Arc<TargetSpace>>,
}

impl Target {
    /// Whether the target has names, resolved at the start of each scan.
    pub fn is_named(&self) -> bool {
        !self.names.is_empty()
    }

    /// Whether there is anything to scan: addresses, names, and ports.
    pub fn has_hosts(&self) -> bool {
        self.space.is_some() || self.is_named()
    }

    /// The probes of a target without names (see the field).
    pub fn space(&self) -> Option<&Arc<TargetSpace>> {
        self.space.as_ref()
    }

    /// The probes of this target that a replica running `shard` scans: its block of the
    /// target's hosts ([`HostSet::shard`]) times every port; `None` when the target has fewer
    /// hosts than shards and this replica's block is empty, and for named targets.
    pub fn shard_space(&self, shard: Shard) -> Option<Arc<TargetSpace>> {
        let space = self.space.as_ref()?;
        if shard == Shard::WHOLE {
            return Some(Arc::clone(space));
        }
        let hosts = space.hosts().shard(shard)?;
        TargetSpace::new(hosts, self.ports.clone()).ok().map(Arc::new)
    }

    /// The probes of a scan that found its names at `resolved`: the target's addresses and
    /// those, minus the built-in exclusions, this replica's block of them, times the ports.
    pub fn resolved_space(&self, resolved: &[IpAddr], shard: Shard) -> Result<Option<TargetSpace>, TargetError> {
        let mut includes = self.addresses.clone();
        includes.extend(resolved.iter().map(|address| AddressRange::single(*address)));
        let hosts = HostSet::build(includes, Vec::new(), ExclusionPolicy::Default)?;
        let hosts = if shard == Shard::WHOLE {
            hosts
        } else {
            match hosts.shard(shard) {
                Some(hosts) => hosts,
                None => return Ok(None),
            }
        };
        TargetSpace::new(hosts, self.ports.clone()).map(Some)
    }
}

/// One target as written: its settings are `defaults:`'s where not given.
#[serde_as]
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TargetFile {
    #[serde_as(as = "Name")]
    name: String,
    #[serde_as(as = "TargetItems")]
    #[serde(default)]
    addresses: Vec<TargetItem>,
    #[serde_as(as = "Option<Family>")]
    #[serde(default)]
    family: Option<AddressFamily>,
    #[serde_as(as = "Labels")]
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    targets_files: Vec<String>,
    #[serde_as(as = "Option<Ports>")]
    #[serde(default)]
    ports: Option<PortSet>,
    #[serde_as(as = "Option<PositiveDuration>")]
    #[serde(default)]
    interval: Option<Duration>,
    #[serde_as(as = "Option<PositiveDuration>")]
    #[serde(default)]
    timeout: Option<Duration>,
    #[serde_as(as = "Option<Retries>")]
    #[serde(default)]
    retries: Option<u32>,
    #[serde_as(as = "Option<TimeValue>")]
    #[serde(default)]
    wait: Option<TimeSetting>,
    #[serde_as(as = "Option<TimeValue>")]
    #[serde(default)]
    retry_gap: Option<TimeSetting>,
    #[serde(default)]
    verify: Option<VerifySetting>,
    #[serde_as(as = "Option<Canaries>")]
    #[serde(default)]
    canaries: Option<u32>,
    #[serde_as(as = "Option<AnyDuration>")]
    #[serde(default)]
    udp_host_interval: Option<Duration>,
    #[serde(default)]
    details: bool,
    expect: Option<Expectation>,
}

/// Checks and builds every target: those of `targets:` (with their own files) in order, then
/// one per group of the top-level `targets_files`. Answers the targets, the resolved patterns
/// of every file read, and the fingerprint of those files.
pub(super) fn build_targets(
    written: Vec<TargetFile>,
    top_level_files: &[TargetsFilesEntry],
    defaults: Defaults,
    text: &str,
    origin: &str,
    base: &Path,
) -> Result<(Vec<Target>, Vec<PathBuf>, u64), ConfigError> {
    let at =
        |line: usize, column: usize, message: String| ConfigError { origin: origin.to_string(), line, column, message };
    let name_of_target = |index: usize| {
        let path = [Step::Key("targets".into()), Step::Item(index), Step::Key("name".into())];
        NodePositions::of(text).and_then(|nodes| nodes.value(&path)).unwrap_or((1, 1))
    };
    let mut files = FilesRead::default();
    let mut patterns = Vec::new();
    let mut names = BTreeSet::new();
    let mut targets = Vec::with_capacity(written.len());
    for (index, target) in written.into_iter().enumerate() {
        let refuse = |message: String| {
            let (line, column) = name_of_target(index);
            at(line, column, message)
        };
        if !names.insert(target.name.clone()) {
            return Err(refuse(format!("duplicate target name {:?}; names must be unique", target.name)));
        }
        if target.addresses.is_empty() && target.targets_files.is_empty() {
            let path = [Step::Key("targets".into()), Step::Item(index), Step::Key("addresses".into())];
            if let Some((line, column)) = NodePositions::of(text).and_then(|nodes| nodes.value(&path)) {
                return Err(at(
                    line,
                    column,
                    format!("target {:?}: expected at least one address, CIDR, range or host name", target.name),
                ));
            }
            return Err(refuse(format!(
                "target {:?}: addresses: expected at least one address, CIDR, range or host name (or targets_files)",
                target.name
            )));
        }
        let mut items = target.addresses;
        let mut ports = target.ports.map(|ports| ports.ports().to_vec()).unwrap_or_default();
        let mut labels = target.labels;
        for pattern in &target.targets_files {
            patterns.push(base.join(pattern));
            target_files::read_pattern(pattern, base, &mut files)?;
        }
        for group in files.groups.drain(..) {
            merge_group(&target.name, group, &mut items, &mut ports, &mut labels)?;
        }
        let settings = Defaults {
            interval: target.interval.unwrap_or(defaults.interval),
            timeout: target.timeout.unwrap_or(defaults.timeout),
            retries: target.retries.unwrap_or(defaults.retries),
            wait: target.wait.unwrap_or(defaults.wait),
            retry_gap: target.retry_gap.unwrap_or(defaults.retry_gap),
            verify: target.verify.unwrap_or(defaults.verify),
            canaries: target.canaries.unwrap_or(defaults.canaries),
            udp_host_interval: target.udp_host_interval.unwrap_or(defaults.udp_host_interval),
        };
        let written = TargetParts {
            name: target.name.clone(),
            items,
            family: target.family.unwrap_or_default(),
            ports: PortSet::from_entries(ports),
            settings,
            details: target.details,
            expect: target.expect,
            labels,
            targets_files: target.targets_files,
        };
        targets.push(build_target(written).map_err(|problem| refuse(format!("target {:?}: {problem}", target.name)))?);
    }
    for entry in top_level_files {
        patterns.push(base.join(&entry.files));
        target_files::read_pattern(&entry.files, base, &mut files)?;
        for group in files.groups.drain(..) {
            let refuse = |message: String| ConfigError {
                origin: group.origin.clone(),
                line: group.position.0,
                column: group.position.1,
                message,
            };
            let name = if group.groups_in_file == 1 {
                group.stem.clone()
            } else {
                format!("{}-{}", group.stem, group.index + 1)
            };
            if name.is_empty()
                || name.len() > 64
                || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            {
                return Err(refuse(format!(
                    "this group would be target {name:?}; a target name has 1 to 64 letters, digits, '_', '-' or '.': rename the file"
                )));
            }
            if !names.insert(name.clone()) {
                return Err(refuse(format!("this group would be target {name:?}, a name already taken")));
            }
            let mut ports = entry.ports.as_ref().map(|ports| ports.ports().to_vec()).unwrap_or_default();
            for port in &group.ports {
                if !ports.contains(port) {
                    ports.push(*port);
                }
            }
            let written = TargetParts {
                name: name.clone(),
                items: group.items.clone(),
                family: entry.family.unwrap_or_default(),
                ports: PortSet::from_entries(ports),
                settings: defaults,
                details: entry.details,
                expect: None,
                labels: group.labels.clone(),
                targets_files: Vec::new(),
            };
            targets.push(build_target(written).map_err(|problem| refuse(format!("target {name:?}: {problem}")))?);
        }
    }
    Ok((targets, patterns, files.hasher.finish()))
}

/// A target as written or as a file's group made it, before its checks.
struct TargetParts {
    name: String,
    items: Vec<TargetItem>,
    family: AddressFamily,
    ports: PortSet,
    settings: Defaults,
    details: bool,
    expect: Option<Expectation>,
    labels: BTreeMap<String, String>,
    targets_files: Vec<String>,
}

/// Adds a file's group to a target: its entries, its ports, and its labels, which must agree
/// with the target's (a conflict is an error at the group).
fn merge_group(
    target: &str,
    group: FileGroup,
    items: &mut Vec<TargetItem>,
    ports: &mut Vec<synwatch_engine::Port>,
    labels: &mut BTreeMap<String, String>,
) -> Result<(), ConfigError> {
    let refuse = |message: String| ConfigError {
        origin: group.origin.clone(),
        line: group.position.0,
        column: group.position.1,
        message,
    };
    for (name, value) in &group.labels {
        match labels.get(name) {
            Some(existing) if existing != value => {
                return Err(refuse(format!(
                    "label {name:?} is {value:?} here but {existing:?} elsewhere for target {target:?}: a target's labels must agree"
                )));
            }
            _ => {
                labels.insert(name.clone(), value.clone());
            }
        }
    }
    if labels.len() > super::values::MAX_TARGET_LABELS {
        return Err(refuse(format!(
            "target {target:?} would have {} labels, more than the limit of {}",
            labels.len(),
            super::values::MAX_TARGET_LABELS
        )));
    }
    for port in &group.ports {
        if !ports.contains(port) {
            ports.push(*port);
        }
    }
    items.extend(group.items);
    Ok(())
}

/// Checks a target and builds its space when it has no names.
fn build_target(parts: TargetParts) -> Result<Target, String> {
    let mut addresses = Vec::new();
    let mut names: Vec<HostName> = Vec::new();
    // Kept once each, in the order written (a target file may hold 100,000 names).
    let mut seen = std::collections::HashSet::new();
    for item in parts.items {
        match item {
            TargetItem::Addresses(range) => addresses.push(range),
            TargetItem::Name(name) => {
                let name = if name.family() == AddressFamily::Any { name.with_family(parts.family) } else { name };
                if seen.insert(name.clone()) {
                    names.push(name);
                }
            }
        }
    }
    let has_hosts = !addresses.is_empty() || !names.is_empty();
    if has_hosts && parts.ports.is_empty() {
        return Err("no ports: give `ports:`, or host:port entries in its files".into());
    }
    // Addresses that are all excluded (multicast, say) or a space too large are found only
    // once addresses and ports are combined.
    let space = if names.is_empty() && has_hosts {
        let space = HostSet::build(addresses.clone(), Vec::new(), ExclusionPolicy::Default)
            .and_then(|hosts| TargetSpace::new(hosts, parts.ports.clone()))
            .map_err(|error| error.to_string())?;
        Some(Arc::new(space))
    } else {
        None
    };
    if let Some(problem) = parts.expect.as_ref().and_then(|expect| expectation_problem(expect, &parts.ports)) {
        return Err(problem);
    }
    Ok(Target {
        name: parts.name,
        addresses,
        names,
        labels: parts.labels,
        targets_files: parts.targets_files,
        ports: parts.ports,
        settings: parts.settings,
        details: parts.details,
        expect: parts.expect,
        space,
    })
}

/// What is wrong with an `expect:` of a target scanning `ports`, if anything.
fn expectation_problem(expect: &Expectation, ports: &PortSet) -> Option<String> {
    if expect.open.is_none() && expect.closed.is_none() {
        return Some("expect needs `open`, `closed` or both".into());
    }
    for (key, listed) in [("open", &expect.open), ("closed", &expect.closed)] {
        let Some(listed) = listed else { continue };
        if let Some(port) = listed.ports().iter().find(|port| !ports.contains(**port)) {
            return Some(format!("expect.{key} lists port {port}, which the target does not scan (ports: {ports})"));
        }
    }
    if let (Some(open), Some(closed)) = (&expect.open, &expect.closed)
        && let Some(port) = open.ports().iter().find(|port| closed.contains(**port))
    {
        return Some(format!("port {port} is in both expect.open and expect.closed"));
    }
    None
}
