//! `GET /sd`: the open endpoints found by background scans as Prometheus HTTP service discovery
//! (`http_sd_configs`) JSON.
//!
//! One group per open (address, port): `{"targets": ["192.0.2.1:443"], "labels":
//! {"__meta_synwatch_target": ..., "__meta_synwatch_ip": ..., "__meta_synwatch_port": ...,
//! "__meta_synwatch_hostname": ...}}`. The hostname is the cached reverse-DNS name when
//! `resolve_hostnames` is on and one was found, else the address itself, so the label is never
//! empty. The target address is the IP (bracketed for IPv6), so that Prometheus scrapes exactly
//! what was scanned without a lookup of its own, except for an address a named target's names
//! gave: its scrape address is the name (`db.example.org:9100`, as a user would write it, and
//! as TLS certificates name it) and its hostname label the name too. A target's own labels
//! (`labels:`, and those of its `file_sd` groups) are group labels as well.
//!
//! The SYN-ACKs of hosts judged suspect (a SYN proxy, a host that answers on every port) are not
//! services to scrape, and are left out unless `?suspect=include` asks for them; they then carry
//! `__meta_synwatch_suspect` with the reason (`all_open` or `synproxy`).
//!
//! Filters: `?port=9100,8080` (a port specification; repeatable) and `?target=NAME` (repeatable
//! or comma-separated). A target name that is not configured matches nothing and gives `[]`
//! (after a reload that removed it, Prometheus must see its endpoints go, not an error that
//! makes it keep the old list); a malformed filter or an unknown parameter is a 400 with the
//! reason. An empty answer is `[]`, never `null`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;
use synwatch_engine::{Port, PortSet, Suspect};

use crate::names::ResolvedNames;
use crate::query::query_pairs;

/// What a `/sd` request asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SdFilter {
    /// Only these ports (none: all).
    pub ports: Option<PortSet>,
    /// Only these targets (none: all).
    pub targets: Option<BTreeSet<String>>,
    /// Offer suspect endpoints too (`suspect=include`; `exclude` is the default).
    pub include_suspect: bool,
}

/// One target's endpoints as `/sd` offers them.
#[derive(Debug, Clone, Copy)]
pub struct SdTarget<'a> {
    /// The target's name.
    pub name: &'a str,
    /// Its open endpoints.
    pub open: &'a [(IpAddr, Port)],
    /// Its suspect hosts' SYN-ACKs.
    pub suspect: &'a [(IpAddr, Port, Suspect)],
    /// A named target's names and the addresses they gave in its last scan.
    pub names: Option<&'a ResolvedNames>,
    /// The target's own labels.
    pub labels: &'a BTreeMap<String, String>,
}

/// Parses the query string of a `/sd` request.
pub fn parse_sd_query(query: &str) -> Result<SdFilter, String> {
    let mut filter = SdFilter::default();
    let mut port_specs = Vec::new();
    for (key, value) in query_pairs(query) {
        match key.as_str() {
            "port" => port_specs.push(value),
            "target" => {
                let names = filter.targets.get_or_insert_with(BTreeSet::new);
                for name in value.split(',').map(str::trim).filter(|name| !name.is_empty()) {
                    names.insert(name.to_string());
                }
            }
            "suspect" => {
                filter.include_suspect = match value.as_str() {
                    "include" => true,
                    "exclude" => false,
                    other => return Err(format!("suspect={other:?}: expected include or exclude")),
                }
            }
            other => return Err(format!("unknown parameter {other:?}; /sd takes port=, target= and suspect=")),
        }
    }
    if !port_specs.is_empty() {
        let joined = port_specs.join(",");
        filter.ports = Some(crate::config::serve_ports(&joined).map_err(|error| format!("port={joined:?}: {error}"))?);
    }
    Ok(filter)
}

#[derive(Serialize)]
struct Group<'a> {
    targets: [String; 1],
    labels: Labels<'a>,
}

#[derive(Serialize)]
struct Labels<'a> {
    #[serde(rename = "__meta_synwatch_target")]
    target: &'a str,
    #[serde(rename = "__meta_synwatch_ip")]
    ip: String,
    #[serde(rename = "__meta_synwatch_port")]
    port: String,
    #[serde(rename = "__meta_synwatch_proto")]
    proto: &'static str,
    #[serde(rename = "__meta_synwatch_hostname")]
    hostname: String,
    #[serde(rename = "__meta_synwatch_suspect", skip_serializing_if = "Option::is_none")]
    suspect: Option<&'static str>,
    #[serde(flatten)]
    own: &'a BTreeMap<String, String>,
}

/// Renders the groups of `targets` (name and open endpoints, in config order) that pass
/// `filter`; `hostname` gives the cached name of an address, if any.
pub fn render_sd(
    targets: &[SdTarget<'_>],
    filter: &SdFilter,
    hostname: impl Fn(IpAddr) -> Option<Arc<str>>,
) -> Vec<u8> {
    let mut groups = Vec::new();
    for target in targets {
        let name = target.name;
        if filter.targets.as_ref().is_some_and(|names| !names.contains(name)) {
            continue;
        }
        let open = target.open.iter().map(|&(address, port)| (address, port, None));
        let suspect = target.suspect.iter().map(|&(address, port, reason)| (address, port, Some(reason.name())));
        let suspect = suspect.filter(|_| filter.include_suspect);
        for (address, port, suspect) in open.chain(suspect) {
            // Scrape targets are TCP: a UDP open is offered only when `port=` names it.
            let wanted = match &filter.ports {
                Some(wanted) => wanted.contains(port),
                None => port.is_tcp(),
            };
            if !wanted {
                continue;
            }
            let ip = address.to_string();
            let number = port.number;
            let forward = target.names.and_then(|names| names.name_of(address));
            let endpoint = match (forward, address) {
                (Some(name), _) => format!("{name}:{number}"),
                (None, IpAddr::V4(_)) => format!("{ip}:{number}"),
                (None, IpAddr::V6(_)) => format!("[{ip}]:{number}"),
            };
            let hostname = match forward {
                Some(name) => name.to_string(),
                None => hostname(address).map_or_else(|| ip.clone(), |name| name.to_string()),
            };
            groups.push(Group {
                targets: [endpoint],
                labels: Labels {
                    target: name,
                    ip,
                    port: number.to_string(),
                    proto: port.protocol.name(),
                    hostname,
                    suspect,
                    own: target.labels,
                },
            });
        }
    }
    serde_json::to_vec(&groups).unwrap_or_else(|_| b"[]".to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::ScanResults;
    use synwatch_engine::targets::parse_target;
    use synwatch_engine::{ExclusionPolicy, HostSet, PortState, TargetSpace};

    fn results(addresses: &[&str], ports: &str, open: &[(&str, u16)]) -> crate::results::Endpoints {
        let ranges = addresses.iter().map(|address| parse_target(address).unwrap()).collect();
        let hosts = HostSet::build(ranges, Vec::new(), ExclusionPolicy::Default).unwrap();
        let space = Arc::new(TargetSpace::new(hosts, PortSet::parse(ports).unwrap()).unwrap());
        ScanResults::from_fn(Arc::clone(&space), |index| {
            let (address, port) = space.probe_at(index).unwrap();
            if open
                .iter()
                .any(|(host, open_port)| host.parse::<IpAddr>().unwrap() == address && *open_port == port.number)
            {
                PortState::Open
            } else {
                PortState::Closed
            }
        })
        .with_suspects(vec![("192.0.2.3".parse().unwrap(), Suspect::AllOpen)])
        .endpoints()
    }

    fn sd<'a>(name: &'a str, endpoints: &'a crate::results::Endpoints) -> SdTarget<'a> {
        SdTarget { name, open: &endpoints.open, suspect: &endpoints.suspect, names: None, labels: &NO_LABELS }
    }

    static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

    fn groups(body: &[u8]) -> Vec<serde_json::Value> {
        serde_json::from_slice::<serde_json::Value>(body).unwrap().as_array().unwrap().clone()
    }

    #[test]
    fn open_endpoints_become_groups_with_their_labels_and_filters_apply() {
        let web = results(&["192.0.2.1", "192.0.2.2"], "22,443,9100", &[("192.0.2.1", 443), ("192.0.2.2", 9100)]);
        let v6 = results(&["2001:db8::5"], "9100", &[("2001:db8::5", 9100)]);
        let targets = [sd("web", &web), sd("v6", &v6)];
        let names =
            |address: IpAddr| (address == "192.0.2.1".parse::<IpAddr>().unwrap()).then(|| Arc::from("www.example.org"));
        let all = groups(&render_sd(&targets, &SdFilter::default(), names));
        assert_eq!(all.len(), 3);
        assert_eq!(all[0]["targets"][0], "192.0.2.1:443");
        assert_eq!(all[0]["labels"]["__meta_synwatch_hostname"], "www.example.org");
        assert_eq!(all[0]["labels"]["__meta_synwatch_target"], "web");
        assert_eq!(all[0]["labels"]["__meta_synwatch_port"], "443");
        // No name: the address stands in.
        assert_eq!(all[1]["labels"]["__meta_synwatch_hostname"], "192.0.2.2");
        assert_eq!(all[2]["targets"][0], "[2001:db8::5]:9100");
        assert_eq!(all[2]["labels"]["__meta_synwatch_ip"], "2001:db8::5");
        let by_port = groups(&render_sd(&targets, &parse_sd_query("port=9100,8080").unwrap(), names));
        assert_eq!(by_port.len(), 2);
        let by_target = groups(&render_sd(&targets, &parse_sd_query("target=v6&port=9100").unwrap(), names));
        assert_eq!(by_target.len(), 1);
        // Nothing matches: `[]`, not `null`.
        let none = render_sd(&targets, &parse_sd_query("target=gone").unwrap(), names);
        assert_eq!(none, b"[]");
        assert_eq!(render_sd(&[], &SdFilter::default(), names), b"[]");
    }

    #[test]
    fn suspect_endpoints_are_offered_only_when_asked_for_and_say_why() {
        let web = results(
            &["192.0.2.1", "192.0.2.3"],
            "22,443",
            &[("192.0.2.1", 443), ("192.0.2.3", 22), ("192.0.2.3", 443)],
        );
        assert_eq!((web.open.len(), web.suspect.len()), (1, 2));
        let targets = [sd("web", &web)];
        let default = groups(&render_sd(&targets, &SdFilter::default(), |_| None));
        assert_eq!(default.len(), 1);
        assert!(default[0]["labels"].get("__meta_synwatch_suspect").is_none());
        let included = groups(&render_sd(&targets, &parse_sd_query("suspect=include").unwrap(), |_| None));
        assert_eq!(included.len(), 3);
        assert_eq!(included[1]["targets"][0], "192.0.2.3:22");
        assert_eq!(included[1]["labels"]["__meta_synwatch_suspect"], "all_open");
        assert_eq!(groups(&render_sd(&targets, &parse_sd_query("suspect=exclude").unwrap(), |_| None)).len(), 1);
        assert!(parse_sd_query("suspect=yes").unwrap_err().contains("include or exclude"));
    }

    #[test]
    fn bad_filters_are_refused_with_a_reason() {
        for (query, needle) in
            [("port=0", "port="), ("port=http", "port="), ("ports=22", "unknown parameter"), ("port=1-70000", "port=")]
        {
            let error = parse_sd_query(query).unwrap_err();
            assert!(error.contains(needle), "{query}: {error}");
        }
        assert_eq!(parse_sd_query("target=a,b&target=c").unwrap().targets.unwrap().len(), 3);
        assert_eq!(parse_sd_query("").unwrap(), SdFilter::default());
    }
}
