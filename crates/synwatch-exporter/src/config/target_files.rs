//! `targets_files:`: target lists in Prometheus's `file_sd` format, read while the config is
//! loaded, so that a change to one of them is applied exactly like a reload (and a bad one is
//! rejected like a bad config, with the old targets kept running).
//!
//! A file is YAML or JSON (JSON is read as YAML), a list of groups
//! `[{targets: ["db-1:9100", "192.0.2.7", "[2001:db8::7]:22"], labels: {env: prod}}]`, exactly
//! as Prometheus reads it. An entry is an address, a CIDR, a DNS name, `host:port` or
//! `[IPv6]:port`; a port adds that TCP port to the target's ports. Labels become target
//! labels: names are checked like a target's `labels:`, those starting with `__` (Prometheus's
//! meta labels) and `job` and `instance` (which the scrape sets) are dropped.
//!
//! A pattern is a path whose last component may hold `*` wildcards (as in Prometheus, no `**`),
//! relative to the config file's directory. A missing directory matches no file; a matched
//! entry that is a directory is skipped; one that cannot be read (a symlink loop, no permission)
//! rejects the config with the reason. Every file is bounded: at most [`MAX_FILE_BYTES`]
//! bytes (refused with its size before it is read) and [`MAX_FILE_ENTRIES`] entries over all
//! files of a config (refused with the count).

use std::collections::BTreeMap;
use std::hash::Hash;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_with::serde_as;
use siphasher::sip::SipHasher13;
use synwatch_engine::{AddressFamily, Port, PortSet, TargetItem, parse_target_item};

use super::ConfigError;
use super::values::{Family, Ports, label_problem};
use super::yaml::{NodePositions, Step, from_yaml};

/// The largest target file read, in bytes.
pub const MAX_FILE_BYTES: u64 = 4 << 20;

/// The most entries all target files of one config may hold together.
pub const MAX_FILE_ENTRIES: usize = 100_000;

/// The most files one pattern may match.
pub const MAX_FILES_PER_PATTERN: usize = 1000;

/// One top-level `targets_files:` item: a pattern, or a mapping with the ports and settings of
/// the targets it makes (one per group).
#[serde_as]
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetsFilesEntry {
    /// The pattern.
    pub files: String,
    /// Ports scanned on every entry, beside the entries' own `host:port` ports.
    #[serde_as(as = "Option<Ports>")]
    #[serde(default)]
    pub ports: Option<PortSet>,
    /// Whether the targets it makes export per-port series.
    #[serde(default)]
    pub details: bool,
    /// Which records of the names in the files are scanned.
    #[serde_as(as = "Option<Family>")]
    #[serde(default)]
    pub family: Option<AddressFamily>,
}

/// Reads a top-level item as a bare pattern string or as a [`TargetsFilesEntry`] mapping,
/// keeping the position of an error inside the mapping.
pub(super) struct TopLevelItem;

impl<'de> serde_with::DeserializeAs<'de, TargetsFilesEntry> for TopLevelItem {
    fn deserialize_as<D: Deserializer<'de>>(deserializer: D) -> Result<TargetsFilesEntry, D::Error> {
        struct ItemVisitor;
        impl<'de> Visitor<'de> for ItemVisitor {
            type Value = TargetsFilesEntry;
            fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter
                    .write_str("a file pattern, or a mapping with `files` and optional `ports`, `details`, `family`")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<TargetsFilesEntry, E> {
                Ok(TargetsFilesEntry { files: value.to_string(), ports: None, details: false, family: None })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<TargetsFilesEntry, A::Error> {
                TargetsFilesEntry::deserialize(de::value::MapAccessDeserializer::new(map))
            }
        }
        deserializer.deserialize_any(ItemVisitor)
    }
}

impl serde_with::SerializeAs<TargetsFilesEntry> for TopLevelItem {
    fn serialize_as<S: serde::Serializer>(source: &TargetsFilesEntry, serializer: S) -> Result<S::Ok, S::Error> {
        serde::Serialize::serialize(source, serializer)
    }
}

/// One group of a target file, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FileGroup {
    /// The file, as it names it in errors.
    pub(super) origin: String,
    /// The file's stem, for the names of the targets it makes.
    pub(super) stem: String,
    /// The group's 0-based place in its file, and how many groups the file has.
    pub(super) index: usize,
    pub(super) groups_in_file: usize,
    /// Where the group starts.
    pub(super) position: (usize, usize),
    /// Addresses and names.
    pub(super) items: Vec<TargetItem>,
    /// The ports of `host:port` entries.
    pub(super) ports: Vec<Port>,
    /// The labels kept.
    pub(super) labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupText {
    targets: Vec<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// What reading the patterns of a config found: the groups, in pattern then file order, and a
/// fingerprint of every file read (the watcher compares it to decide on a reload).
#[derive(Debug, Default)]
pub(super) struct FilesRead {
    pub(super) groups: Vec<FileGroup>,
    pub(super) entries: usize,
    pub(super) hasher: SipHasher13,
}

/// The files `pattern` matches, relative to `base`, sorted, with the pattern as resolved.
pub fn matching_files(pattern: &str, base: &Path) -> Result<(PathBuf, Vec<PathBuf>), String> {
    let resolved = base.join(pattern);
    let directory = resolved.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    let Some(file_pattern) = resolved.file_name().and_then(|name| name.to_str()).map(str::to_string) else {
        return Err(format!("targets_files pattern {pattern:?} names no file"));
    };
    if directory.to_string_lossy().contains('*') {
        return Err(format!(
            "targets_files pattern {pattern:?}: `*` is allowed in the file name only, as in Prometheus's file_sd"
        ));
    }
    let entries = match std::fs::read_dir(&directory) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok((resolved, Vec::new())),
        Err(error) => return Err(format!("targets_files: cannot list {}: {error}", directory.display())),
    };
    let mut files = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        // Editors' and Kubernetes' hidden files are not targets.
        if name.starts_with('.') || !wildcard_match(&file_pattern, name) {
            continue;
        }
        // `metadata` follows symlinks: a loop or a dangling link is an error of that file.
        let path = entry.path();
        match std::fs::metadata(&path) {
            Ok(metadata) if metadata.is_dir() => continue,
            Ok(_) => files.push(path),
            Err(error) => return Err(format!("{}: cannot read the target file: {error}", path.display())),
        }
        if files.len() > MAX_FILES_PER_PATTERN {
            return Err(format!("targets_files pattern {pattern:?} matches more than {MAX_FILES_PER_PATTERN} files"));
        }
    }
    files.sort();
    Ok((resolved, files))
}

/// Whether `name` matches `pattern`, where `*` stands for any run of characters.
fn wildcard_match(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    true
}

/// Reads every file `pattern` matches into `read`.
pub(super) fn read_pattern(pattern: &str, base: &Path, read: &mut FilesRead) -> Result<(), ConfigError> {
    let refuse =
        |origin: &str, message: String| ConfigError { origin: origin.to_string(), line: 1, column: 1, message };
    let (resolved, files) = matching_files(pattern, base).map_err(|message| refuse(pattern, message))?;
    resolved.hash(&mut read.hasher);
    for path in files {
        read_file(&path, read)?;
    }
    Ok(())
}

/// The fingerprint the target files of `patterns` (resolved, in the order the config read
/// them) have now: the one [`read_pattern`] computes while loading, for the same files and
/// contents. The watcher compares the two to decide on a reload.
pub fn target_files_fingerprint(patterns: &[PathBuf]) -> u64 {
    let mut hasher = SipHasher13::new();
    for pattern in patterns {
        let Some(text) = pattern.to_str() else { continue };
        pattern.hash(&mut hasher);
        match matching_files(text, Path::new("")) {
            Ok((_, files)) => {
                for path in files {
                    let mut text = String::new();
                    let read = std::fs::File::open(&path)
                        .and_then(|file| file.take(MAX_FILE_BYTES + 1).read_to_string(&mut text));
                    path.display().to_string().hash(&mut hasher);
                    match read {
                        Ok(_) => text.hash(&mut hasher),
                        Err(error) => error.to_string().hash(&mut hasher),
                    }
                }
            }
            Err(error) => error.hash(&mut hasher),
        }
    }
    std::hash::Hasher::finish(&hasher)
}

fn read_file(path: &Path, read: &mut FilesRead) -> Result<(), ConfigError> {
    let origin = path.display().to_string();
    let at =
        |line: usize, column: usize, message: String| ConfigError { origin: origin.clone(), line, column, message };
    let file = std::fs::File::open(path).map_err(|error| at(1, 1, format!("cannot read the target file: {error}")))?;
    let size = file.metadata().map(|metadata| metadata.len()).unwrap_or(0);
    if size > MAX_FILE_BYTES {
        return Err(at(1, 1, format!("the target file is {size} bytes, more than the limit of {MAX_FILE_BYTES}")));
    }
    // The file may grow between the size check and the read: the read is bounded too.
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|error| at(1, 1, format!("cannot read the target file: {error}")))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(at(1, 1, format!("the target file is over the limit of {MAX_FILE_BYTES} bytes")));
    }
    origin.hash(&mut read.hasher);
    text.hash(&mut read.hasher);
    let stem = path.file_stem().and_then(|stem| stem.to_str()).unwrap_or("targets").to_string();
    parse_file_text(&text, &origin, &stem, read)
}

/// Parses the text of one target file into `read` (its groups, and its entries counted
/// against the bound over all files). Untrusted text never panics here (fuzzed by
/// `fuzz/fuzz_targets/target_file.rs`).
fn parse_file_text(text: &str, origin: &str, stem: &str, read: &mut FilesRead) -> Result<(), ConfigError> {
    let at =
        |line: usize, column: usize, message: String| ConfigError { origin: origin.to_string(), line, column, message };
    if text.trim().is_empty() {
        return Ok(());
    }
    let groups: Vec<GroupText> =
        from_yaml(text).map_err(|error| at(error.position.0, error.position.1, error.message))?;
    let entries: usize = groups.iter().map(|group| group.targets.len()).sum();
    if read.entries + entries > MAX_FILE_ENTRIES {
        return Err(at(
            1,
            1,
            format!(
                "{entries} target entries here ({} in all target files), more than the limit of {MAX_FILE_ENTRIES}",
                read.entries + entries
            ),
        ));
    }
    read.entries += entries;
    let nodes = NodePositions::of(text);
    let position = |path: &[Step]| nodes.as_ref().and_then(|nodes| nodes.value(path)).unwrap_or((1, 1));
    let groups_in_file = groups.len();
    for (index, group) in groups.into_iter().enumerate() {
        let mut checked = FileGroup {
            origin: origin.to_string(),
            stem: stem.to_string(),
            index,
            groups_in_file,
            position: position(&[Step::Item(index)]),
            items: Vec::with_capacity(group.targets.len()),
            ports: Vec::new(),
            labels: BTreeMap::new(),
        };
        for (entry_index, entry) in group.targets.iter().enumerate() {
            let (item, port) = parse_entry(entry).map_err(|message| {
                let (line, column) =
                    position(&[Step::Item(index), Step::Key("targets".into()), Step::Item(entry_index)]);
                at(line, column, message)
            })?;
            checked.items.push(item);
            if let Some(port) = port
                && !checked.ports.contains(&port)
            {
                checked.ports.push(port);
            }
        }
        for (name, value) in group.labels {
            if name.starts_with("__") || name == "job" || name == "instance" {
                continue;
            }
            if let Some(problem) = label_problem(&name, &value) {
                let (line, column) =
                    position(&[Step::Item(index), Step::Key("labels".into()), Step::Key(name.clone())]);
                return Err(at(line, column, problem));
            }
            checked.labels.insert(name, value);
        }
        read.groups.push(checked);
    }
    Ok(())
}

/// Reads one target file on its own (`synwatch scan @file`): its entries, and the ports of its
/// `host:port` entries; its labels are not used there.
pub fn read_target_file(path: &Path) -> Result<(Vec<TargetItem>, Vec<Port>), ConfigError> {
    let mut read = FilesRead::default();
    read_file(path, &mut read)?;
    Ok(entries_of(read))
}

/// [`read_target_file`] for text in hand (`origin` names it in errors).
pub fn parse_target_file(text: &str, origin: &str) -> Result<(Vec<TargetItem>, Vec<Port>), ConfigError> {
    let mut read = FilesRead::default();
    parse_file_text(text, origin, "targets", &mut read)?;
    Ok(entries_of(read))
}

fn entries_of(read: FilesRead) -> (Vec<TargetItem>, Vec<Port>) {
    let mut items = Vec::new();
    let mut ports: Vec<Port> = Vec::new();
    for group in read.groups {
        items.extend(group.items);
        for port in group.ports {
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
    }
    (items, ports)
}

/// Parses one `file_sd` entry: an address, CIDR or name, `host:port`, or `[IPv6]:port`.
pub fn parse_entry(entry: &str) -> Result<(TargetItem, Option<Port>), String> {
    let entry = entry.trim();
    let port_of = |text: &str| -> Result<Port, String> {
        match text.parse::<u16>() {
            Ok(number) if number > 0 => Ok(Port::tcp(number)),
            _ => Err(format!("target {entry:?}: the port {text:?} is not a number from 1 to 65535")),
        }
    };
    let item_of =
        |text: &str| parse_target_item(text, AddressFamily::Any).map_err(|error| format!("target {entry:?}: {error}"));
    if let Some(rest) = entry.strip_prefix('[') {
        let Some((address, after)) = rest.split_once(']') else {
            return Err(format!("target {entry:?}: a `[` without its `]`"));
        };
        let item = item_of(address)?;
        return match after {
            "" => Ok((item, None)),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((item, Some(port_of(port)?))),
                None => Err(format!("target {entry:?}: expected `]:port` after the address")),
            },
        };
    }
    match entry.matches(':').count() {
        // More than one colon: a bare IPv6 address or network.
        0 | 2.. => Ok((item_of(entry)?, None)),
        _ => {
            let (host, port) = entry.split_once(':').unwrap_or((entry, ""));
            Ok((item_of(host)?, Some(port_of(port)?)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_read_as_prometheus_writes_them() {
        let (item, port) = parse_entry("db-1.example.org:9100").unwrap();
        assert_eq!((item.to_string(), port), ("db-1.example.org".to_string(), Some(Port::tcp(9100))));
        let (item, port) = parse_entry("[2001:db8::7]:22").unwrap();
        assert_eq!((item.to_string(), port), ("2001:db8::7".to_string(), Some(Port::tcp(22))));
        let (item, port) = parse_entry("2001:db8::/126").unwrap();
        assert_eq!((item.to_string(), port), ("2001:db8::/126".to_string(), None));
        let (item, port) = parse_entry("192.0.2.7").unwrap();
        assert_eq!((item.to_string(), port), ("192.0.2.7".to_string(), None));
        for (bad, reason) in [
            ("db:0", "port"),
            ("db:http", "port"),
            ("[2001:db8::7:22", "without its"),
            ("[2001:db8::7]22", "]:port"),
            ("db..x:22", "empty label"),
        ] {
            let error = parse_entry(bad).unwrap_err();
            assert!(error.contains(reason), "{bad}: {error}");
        }
    }

    #[test]
    fn wildcards_match_the_file_name() {
        assert!(wildcard_match("*.yml", "web.yml"));
        assert!(wildcard_match("tg_*.json", "tg_a.json"));
        assert!(!wildcard_match("tg_*.json", "tg_a.yml"));
        assert!(wildcard_match("a*b*c", "aXbYc"));
        assert!(!wildcard_match("a*b*c", "ac"));
        assert!(wildcard_match("exact.yml", "exact.yml"));
    }
}
