//! The state kept across restarts: each target's last completed scan and its last attempt,
//! in one JSON file under `state_dir`.
//!
//! Writes are atomic: the new state goes to a temporary file in the same directory, which is
//! flushed to disk (`fsync`), renamed over `state.json`, and the directory is flushed too. A
//! crash at any point (SIGKILL included) leaves either the old file or the new one, never a
//! mixture. A file that does not parse or does not make sense (a truncated copy, a file from a
//! future version, states that do not fit their space) is renamed aside with a `.corrupt-<time>`
//! suffix and reported; the exporter then starts with no state, never crashes.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use synwatch_engine::targets::parse_target;
use synwatch_engine::{ExclusionPolicy, HostName, HostSet, PortSet, Suspect, TargetSpace};

use crate::names::ResolvedNames;
use crate::results::ScanResults;

/// The file name under `state_dir`.
pub const STATE_FILE: &str = "state.json";
const TEMPORARY_FILE: &str = ".state.json.tmp";
const FORMAT: &str = "synwatch-state/1";

/// The last attempt to scan a target, successful or not.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScanAttempt {
    /// When it ended, in seconds since the Unix epoch.
    pub timestamp: f64,
    /// How long it ran, in seconds.
    pub duration_seconds: f64,
    /// Whether it completed (its results replaced the previous ones).
    pub success: bool,
}

/// What the exporter knows about one target.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TargetRecord {
    /// The last completed scan (none before the first).
    pub results: Option<ScanResults>,
    /// The last attempt (none before the first).
    pub last_attempt: Option<ScanAttempt>,
    /// The names of a named target and the addresses they had for the last completed scan.
    pub names: Option<ResolvedNames>,
}

/// What loading found.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The records by target name (empty when there was no usable file).
    pub records: BTreeMap<String, TargetRecord>,
    /// Where an unusable file was moved, and why it was unusable.
    pub set_aside: Option<(PathBuf, String)>,
}

/// The state file of one `state_dir`.
#[derive(Debug, Clone)]
pub struct StateStore {
    directory: PathBuf,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    format: String,
    targets: Vec<StoredTarget>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredTarget {
    name: String,
    last_attempt: Option<ScanAttempt>,
    results: Option<StoredResults>,
    /// A named target's names (as written, with a family prefix) and their addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    names: Vec<(String, Vec<IpAddr>)>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredResults {
    addresses: Vec<String>,
    ports: String,
    /// The packed states, hex-encoded.
    states: String,
    /// Hosts judged suspect: address and reason (absent in files written before there were any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    suspects: Vec<(IpAddr, String)>,
    /// Open ports whose verification failed: address, port and verdict.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    unverified: Vec<(IpAddr, u16, String)>,
    /// The UDP probes filtered rather than open|filtered: one bit per probe, little-endian
    /// 64-bit words, hex-encoded (absent when none, and in files from before UDP).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    udp_filtered: String,
}

/// Seconds since the Unix epoch, as exported in timestamps.
pub fn unix_seconds(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs_f64()
}

impl StateStore {
    /// The store in `directory` (created on the first save if missing).
    pub fn new(directory: impl Into<PathBuf>) -> StateStore {
        StateStore { directory: directory.into() }
    }

    /// The state file's path.
    pub fn path(&self) -> PathBuf {
        self.directory.join(STATE_FILE)
    }

    /// Writes every record atomically (see the module documentation).
    pub fn save<R: Borrow<TargetRecord>>(&self, records: &BTreeMap<String, R>) -> io::Result<()> {
        let file = StateFile {
            format: FORMAT.to_string(),
            targets: records
                .iter()
                .map(|(name, record)| (name, record.borrow()))
                .map(|(name, record)| StoredTarget {
                    name: name.clone(),
                    last_attempt: record.last_attempt,
                    names: record.names.as_ref().map_or_else(Vec::new, |names| {
                        names.entries().iter().map(|(name, addresses)| (name.to_string(), addresses.clone())).collect()
                    }),
                    results: record.results.as_ref().map(|results| StoredResults {
                        addresses: results.space().hosts().ranges().iter().map(ToString::to_string).collect(),
                        ports: results.space().ports().to_string(),
                        states: hex::encode(results.packed()),
                        suspects: results
                            .suspects()
                            .iter()
                            .map(|(address, reason)| (*address, reason.name().to_string()))
                            .collect(),
                        unverified: results
                            .unverified()
                            .iter()
                            .map(|(address, port, verdict)| (*address, port.number, verdict.name().to_string()))
                            .collect(),
                        udp_filtered: hex::encode(
                            results.udp_filtered().iter().flat_map(|word| word.to_le_bytes()).collect::<Vec<u8>>(),
                        ),
                    }),
                })
                .collect(),
        };
        let text = serde_json::to_vec(&file).map_err(io::Error::other)?;
        fs::create_dir_all(&self.directory)?;
        let temporary = self.directory.join(TEMPORARY_FILE);
        let mut output = OpenOptions::new().write(true).create(true).truncate(true).open(&temporary)?;
        output.write_all(&text)?;
        output.sync_all()?;
        drop(output);
        fs::rename(&temporary, self.path())?;
        // The rename is durable only once the directory entry is on disk.
        File::open(&self.directory)?.sync_all()
    }

    /// Reads the state file. A missing file is an empty state; an unusable one is set aside.
    pub fn load(&self) -> Loaded {
        let path = self.path();
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Loaded::default(),
            Err(error) => return self.set_aside(&path, format!("cannot read it: {error}")),
        };
        match decode(&bytes) {
            Ok(records) => Loaded { records, set_aside: None },
            Err(reason) => self.set_aside(&path, reason),
        }
    }

    fn set_aside(&self, path: &Path, reason: String) -> Loaded {
        let stamp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let aside = self.directory.join(format!("{STATE_FILE}.corrupt-{stamp}"));
        match fs::rename(path, &aside) {
            Ok(()) => Loaded { records: BTreeMap::new(), set_aside: Some((aside, reason)) },
            Err(error) => Loaded {
                records: BTreeMap::new(),
                set_aside: Some((path.to_path_buf(), format!("{reason}; it could not be moved aside: {error}"))),
            },
        }
    }
}

fn decode(bytes: &[u8]) -> Result<BTreeMap<String, TargetRecord>, String> {
    let file: StateFile = serde_json::from_slice(bytes).map_err(|error| format!("not a state file: {error}"))?;
    if file.format != FORMAT {
        return Err(format!("format {:?}, expected {FORMAT:?}", file.format));
    }
    let mut records = BTreeMap::new();
    for target in file.targets {
        let results = match target.results {
            None => None,
            Some(stored) => {
                Some(decode_results(&stored).map_err(|reason| format!("target {:?}: {reason}", target.name))?)
            }
        };
        let mut names = Vec::with_capacity(target.names.len());
        for (name, addresses) in target.names {
            let name = HostName::parse(&name, synwatch_engine::AddressFamily::Any)
                .map_err(|reason| format!("target {:?}: name {name:?}: {reason}", target.name))?;
            names.push((name, addresses));
        }
        let names = (!names.is_empty()).then(|| ResolvedNames::new(names));
        records.insert(target.name, TargetRecord { results, last_attempt: target.last_attempt, names });
    }
    Ok(records)
}

fn decode_results(stored: &StoredResults) -> Result<ScanResults, String> {
    let ranges = stored
        .addresses
        .iter()
        .map(|text| parse_target(text).map_err(|error| error.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let hosts =
        HostSet::build(ranges, Vec::new(), ExclusionPolicy::AllowReserved).map_err(|error| error.to_string())?;
    let ports = PortSet::parse(&stored.ports).map_err(|error| error.to_string())?;
    let space = TargetSpace::new(hosts, ports).map_err(|error| error.to_string())?;
    let packed = hex::decode(&stored.states).map_err(|error| format!("states: {error}"))?;
    let suspects = stored
        .suspects
        .iter()
        .map(|(address, reason)| {
            Suspect::from_name(reason).map(|reason| (*address, reason)).ok_or(format!("suspect reason {reason:?}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let verdicts = stored
        .unverified
        .iter()
        .map(|(address, port, verdict)| {
            synwatch_io::Verdict::from_name(verdict)
                // Verification is TCP only: a stored unverified port is a TCP one.
                .map(|verdict| (*address, synwatch_engine::Port::tcp(*port), verdict))
                .ok_or(format!("verdict {verdict:?}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let udp_filtered = hex::decode(&stored.udp_filtered).map_err(|error| format!("udp_filtered: {error}"))?;
    if udp_filtered.len() % 8 != 0 {
        return Err("udp_filtered is not whole 64-bit words".into());
    }
    let udp_filtered: Vec<u64> =
        udp_filtered.chunks_exact(8).map(|chunk| u64::from_le_bytes(chunk.try_into().expect("eight bytes"))).collect();
    let results = ScanResults::from_packed(Arc::new(space), packed)
        .ok_or_else(|| "the states do not fit the space".to_string())?
        .with_udp_filtered(udp_filtered)
        .ok_or_else(|| "udp_filtered does not fit the space".to_string())?;
    Ok(results.with_suspects(suspects).with_verdicts(verdicts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use synwatch_engine::PortState;

    fn temporary_directory(name: &str) -> PathBuf {
        let directory = std::env::temp_dir().join(format!("synwatch-state-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&directory);
        directory
    }

    fn sample() -> BTreeMap<String, TargetRecord> {
        let hosts =
            HostSet::build(vec![parse_target("192.0.2.0/29").unwrap()], Vec::new(), ExclusionPolicy::Default).unwrap();
        let space = Arc::new(TargetSpace::new(hosts, PortSet::parse("22,80").unwrap()).unwrap());
        let results =
            ScanResults::from_fn(space, |index| if index % 5 == 0 { PortState::Open } else { PortState::Closed })
                .with_suspects(vec![("192.0.2.5".parse().unwrap(), Suspect::AllOpen)]);
        // A timestamp whose shortest decimal form needs all 17 digits: it must come back to the
        // same bits (serde_json's `float_roundtrip`), or a restart would serve a changed value.
        let attempt = ScanAttempt { timestamp: 1_795_268_343.280_401_5, duration_seconds: 0.1 + 0.2, success: true };
        let mut records = BTreeMap::new();
        records.insert(
            "web".to_string(),
            TargetRecord { results: Some(results), last_attempt: Some(attempt), names: None },
        );
        records.insert("never".to_string(), TargetRecord::default());
        // UDP ports with all four states: the filtered ones must come back filtered and the
        // silent ones open|filtered.
        let hosts =
            HostSet::build(vec![parse_target("192.0.2.8/30").unwrap()], Vec::new(), ExclusionPolicy::Default).unwrap();
        let space = Arc::new(TargetSpace::new(hosts, PortSet::parse("22,udp/53,123").unwrap()).unwrap());
        let states = [PortState::Open, PortState::Closed, PortState::Filtered, PortState::OpenFiltered];
        let results = ScanResults::from_fn(space, |index| match index % 3 {
            0 => PortState::Closed,
            _ => states[(index % 4) as usize],
        });
        assert_eq!(results.counts_of(synwatch_engine::Protocol::Udp).filtered, 2);
        assert_eq!(results.counts_of(synwatch_engine::Protocol::Udp).open_filtered, 2);
        records.insert(
            "dns".to_string(),
            TargetRecord { results: Some(results), last_attempt: Some(attempt), names: None },
        );
        records
    }

    #[test]
    fn saved_state_loads_back_equal() {
        let store = StateStore::new(temporary_directory("round-trip"));
        assert!(store.load().records.is_empty(), "no file is an empty state");
        store.save(&sample()).unwrap();
        let loaded = store.load();
        assert!(loaded.set_aside.is_none());
        assert_eq!(loaded.records, sample());
        fs::remove_dir_all(&store.directory).unwrap();
    }

    #[test]
    fn a_state_file_from_before_udp_loads_as_tcp() {
        let store = StateStore::new(temporary_directory("before-udp"));
        fs::create_dir_all(&store.directory).unwrap();
        // Written by the exporter of issue 21: no `udp_filtered`, bare TCP port numbers.
        let old = format!(
            "{{\"format\":\"{FORMAT}\",\"targets\":[{{\"name\":\"web\",\"last_attempt\":null,\
             \"results\":{{\"addresses\":[\"192.0.2.0/31\"],\"ports\":\"22,80\",\"states\":\"95\"}}}}]}}"
        );
        fs::write(store.path(), old).unwrap();
        let loaded = store.load();
        assert!(loaded.set_aside.is_none(), "{:?}", loaded.set_aside);
        let results = loaded.records["web"].results.as_ref().unwrap();
        assert!(results.space().ports().is_tcp_only());
        // 0x95 = 0b10_01_01_01: probes 0 to 3 are open, open, open, closed (two bits each, low
        // bits first).
        let states: Vec<PortState> = (0..4).map(|index| results.get(index)).collect();
        assert_eq!(states, [PortState::Open, PortState::Open, PortState::Open, PortState::Closed]);
        fs::remove_dir_all(&store.directory).unwrap();
    }

    #[test]
    fn truncated_or_foreign_files_are_set_aside() {
        let store = StateStore::new(temporary_directory("corrupt"));
        store.save(&sample()).unwrap();
        let full = fs::read(store.path()).unwrap();
        let bad_states = String::from_utf8(full.clone()).unwrap().replace("\"states\":\"", "\"states\":\"00");
        for (case, bytes) in [
            ("truncated", full[..full.len() / 2].to_vec()),
            ("empty", Vec::new()),
            ("other format", br#"{"format":"synwatch-state/9","targets":[]}"#.to_vec()),
            ("states too long", bad_states.into_bytes()),
        ] {
            fs::write(store.path(), &bytes).unwrap();
            let loaded = store.load();
            assert!(loaded.records.is_empty(), "{case}");
            let (aside, reason) = loaded.set_aside.expect(case);
            assert_eq!(fs::read(&aside).unwrap(), bytes, "{case}: the file is kept aside as it was");
            assert!(!store.path().exists(), "{case}: {reason}");
            fs::remove_file(aside).unwrap();
        }
        fs::remove_dir_all(&store.directory).unwrap();
    }
}
