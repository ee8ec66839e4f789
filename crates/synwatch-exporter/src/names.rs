//! Targets by name: what a forward lookup answers ([`ForwardLookup`]), what makes them
//! ([`ForwardResolver`], implemented by the binary with hickory-resolver), and a target's names
//! resolved for one scan ([`ResolvedNames`], kept with its results so that every reading can
//! say which name an address came from).
//!
//! Names are resolved at the start of every scan of a target (on a thread of the scheduler's,
//! never on the scheduler's own loop), by `/probe` and the scans API once per request, and by
//! `synwatch scan` once. A failure is never a list of no addresses: [`resolve_names`] answers
//! [`Resolution::Failed`] with the name and why, and the caller keeps what it had.

use std::net::IpAddr;

use synwatch_engine::HostName;

/// The answer to the lookup of one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardLookup {
    /// The addresses of the records wanted (A, AAAA or both), possibly none of the family
    /// wanted.
    Found(Vec<IpAddr>),
    /// The name does not exist, or has no address records at all (NXDOMAIN or NODATA).
    NotFound,
    /// No answer within `dns.timeout`.
    TimedOut,
    /// Any other failure (refused, network, malformed answer).
    Failed(String),
}

/// What makes forward lookups (implemented by the binary with hickory-resolver).
pub trait ForwardResolver: Send + Sync {
    /// Looks up every name (concurrently, each within the configured timeout), answering in
    /// the order of `names`. Blocks until all are answered.
    fn forward(&self, names: &[HostName]) -> Vec<ForwardLookup>;
}

/// Why a target's names did not resolve: the `reason` label of
/// `synwatch_target_resolve_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolveFailure {
    /// NXDOMAIN, or no address records.
    NotFound,
    /// Records exist, but none of the family asked for (`ipv6:` with only A records).
    NoAddressOfFamily,
    /// The name server did not answer in time.
    Timeout,
    /// Any other failure, or no resolver.
    Error,
}

impl ResolveFailure {
    /// Every reason, in the order of the series.
    pub const ALL: [ResolveFailure; 4] =
        [ResolveFailure::NotFound, ResolveFailure::NoAddressOfFamily, ResolveFailure::Timeout, ResolveFailure::Error];

    /// The label.
    pub fn label(self) -> &'static str {
        match self {
            ResolveFailure::NotFound => "not_found",
            ResolveFailure::NoAddressOfFamily => "no_address_of_family",
            ResolveFailure::Timeout => "timeout",
            ResolveFailure::Error => "error",
        }
    }
}

/// A target's names and the addresses each resolved to for one scan, in the target's order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResolvedNames {
    entries: Vec<(HostName, Vec<IpAddr>)>,
    /// Every address with the index of the first entry (in the target's order) that has it,
    /// sorted by address: [`ResolvedNames::name_of`] runs for each series of a scrape, and a
    /// target file may give one target 100,000 names.
    first_entry_of: Vec<(IpAddr, usize)>,
}

impl ResolvedNames {
    /// From names and their addresses (each list sorted and without duplicates here).
    pub fn new(entries: Vec<(HostName, Vec<IpAddr>)>) -> ResolvedNames {
        let entries = entries
            .into_iter()
            .map(|(name, mut addresses)| {
                addresses.sort_unstable();
                addresses.dedup();
                (name, addresses)
            })
            .collect::<Vec<(HostName, Vec<IpAddr>)>>();
        let mut first_entry_of: Vec<(IpAddr, usize)> = entries
            .iter()
            .enumerate()
            .flat_map(|(index, (_, addresses))| addresses.iter().map(move |address| (*address, index)))
            .collect();
        // Sorted by address, then entry: the first of each address is its first entry.
        first_entry_of.sort_unstable();
        first_entry_of.dedup_by_key(|(address, _)| *address);
        ResolvedNames { entries, first_entry_of }
    }

    /// The names and their addresses.
    pub fn entries(&self) -> &[(HostName, Vec<IpAddr>)] {
        &self.entries
    }

    /// Every address, sorted, without duplicates.
    pub fn addresses(&self) -> Vec<IpAddr> {
        self.first_entry_of.iter().map(|(address, _)| *address).collect()
    }

    /// The first name (in the target's order) that resolved to `address`.
    pub fn name_of(&self, address: IpAddr) -> Option<&str> {
        let position = self.first_entry_of.binary_search_by_key(&address, |(address, _)| *address).ok()?;
        Some(self.entries[self.first_entry_of[position].1].0.name())
    }

    /// The names whose addresses differ from those in `previous`: name, old addresses, new
    /// addresses (names new to `previous` are not changes).
    pub fn changes_from<'a>(&'a self, previous: &'a ResolvedNames) -> Vec<(&'a HostName, &'a [IpAddr], &'a [IpAddr])> {
        let before: std::collections::HashMap<&str, &[IpAddr]> =
            previous.entries.iter().map(|(name, addresses)| (name.name(), addresses.as_slice())).collect();
        self.entries
            .iter()
            .filter_map(|(name, now)| {
                let before = *before.get(name.name())?;
                (before != now.as_slice()).then_some((name, before, now.as_slice()))
            })
            .collect()
    }

    /// Whether there are no names.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The names of a target resolved, or why one of them was not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Every name gave at least one address of its family.
    Resolved(ResolvedNames),
    /// A name gave none: the scan of the target does not start, its results stay.
    Failed {
        /// The first name that failed.
        name: HostName,
        /// Why.
        reason: ResolveFailure,
        /// The resolver's words.
        detail: String,
    },
}

/// Resolves `names` with `resolver`, keeping for each name the addresses of its family.
pub fn resolve_names(names: &[HostName], resolver: &dyn ForwardResolver) -> Resolution {
    let answers = resolver.forward(names);
    let mut entries = Vec::with_capacity(names.len());
    for (index, name) in names.iter().enumerate() {
        let failed = |reason: ResolveFailure, detail: String| Resolution::Failed { name: name.clone(), reason, detail };
        match answers.get(index) {
            Some(ForwardLookup::Found(addresses)) => {
                let wanted: Vec<IpAddr> =
                    addresses.iter().copied().filter(|address| name.family().admits(*address)).collect();
                if wanted.is_empty() {
                    return failed(
                        ResolveFailure::NoAddressOfFamily,
                        format!("{} has no {} address", name.name(), name.family().name()),
                    );
                }
                entries.push((name.clone(), wanted));
            }
            Some(ForwardLookup::NotFound) => {
                return failed(ResolveFailure::NotFound, format!("{} does not exist or has no address", name.name()));
            }
            Some(ForwardLookup::TimedOut) => {
                return failed(ResolveFailure::Timeout, format!("no answer for {} in time", name.name()));
            }
            Some(ForwardLookup::Failed(error)) => return failed(ResolveFailure::Error, error.clone()),
            None => return failed(ResolveFailure::Error, "the resolver gave no answer".into()),
        }
    }
    Resolution::Resolved(ResolvedNames::new(entries))
}

#[cfg(test)]
mod tests {
    use super::*;
    use synwatch_engine::AddressFamily;

    struct Table(Vec<ForwardLookup>);

    impl ForwardResolver for Table {
        fn forward(&self, names: &[HostName]) -> Vec<ForwardLookup> {
            self.0.iter().take(names.len()).cloned().collect()
        }
    }

    fn name(text: &str) -> HostName {
        HostName::parse(text, AddressFamily::Any).unwrap()
    }

    fn addresses(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|text| text.parse().unwrap()).collect()
    }

    #[test]
    fn each_name_keeps_the_addresses_of_its_family() {
        let names = [name("ipv6:a.example.org"), name("b.example.org")];
        let resolver = Table(vec![
            ForwardLookup::Found(addresses(&["192.0.2.1", "2001:db8::1"])),
            ForwardLookup::Found(addresses(&["192.0.2.2", "192.0.2.2"])),
        ]);
        let Resolution::Resolved(resolved) = resolve_names(&names, &resolver) else { panic!() };
        assert_eq!(resolved.addresses(), addresses(&["192.0.2.2", "2001:db8::1"]));
        assert_eq!(resolved.name_of("2001:db8::1".parse().unwrap()), Some("a.example.org"));
        assert_eq!(resolved.name_of("192.0.2.1".parse().unwrap()), None, "the A record of an ipv6: name is not kept");
    }

    #[test]
    fn one_failing_name_fails_the_whole_resolution_with_its_reason() {
        let names = [name("a.example.org"), name("ipv6:b.example.org"), name("c.example.org")];
        for (answer, reason) in [
            (ForwardLookup::NotFound, ResolveFailure::NotFound),
            (ForwardLookup::TimedOut, ResolveFailure::Timeout),
            (ForwardLookup::Failed("refused".into()), ResolveFailure::Error),
            (ForwardLookup::Found(addresses(&["192.0.2.9"])), ResolveFailure::NoAddressOfFamily),
        ] {
            let resolver =
                Table(vec![ForwardLookup::Found(addresses(&["192.0.2.1"])), answer, ForwardLookup::NotFound]);
            match resolve_names(&names, &resolver) {
                Resolution::Failed { name, reason: found, .. } => {
                    assert_eq!(name.name(), "b.example.org");
                    assert_eq!(found, reason);
                }
                other => panic!("{other:?}"),
            }
        }
        let short = Table(vec![ForwardLookup::Found(addresses(&["192.0.2.1"]))]);
        assert!(matches!(resolve_names(&names, &short), Resolution::Failed { reason: ResolveFailure::Error, .. }));
    }

    #[test]
    fn an_address_of_two_names_is_named_by_the_first_in_the_targets_order() {
        let resolved = ResolvedNames::new(vec![
            (name("z.example.org"), addresses(&["192.0.2.7", "192.0.2.1"])),
            (name("a.example.org"), addresses(&["192.0.2.1", "192.0.2.3"])),
        ]);
        assert_eq!(resolved.name_of("192.0.2.1".parse().unwrap()), Some("z.example.org"));
        assert_eq!(resolved.name_of("192.0.2.3".parse().unwrap()), Some("a.example.org"));
        assert_eq!(resolved.name_of("192.0.2.2".parse().unwrap()), None);
        assert_eq!(resolved.addresses(), addresses(&["192.0.2.1", "192.0.2.3", "192.0.2.7"]));
    }

    #[test]
    fn a_moved_name_is_a_change_and_a_new_one_is_not() {
        let before = ResolvedNames::new(vec![(name("a.example.org"), addresses(&["192.0.2.1"]))]);
        let after = ResolvedNames::new(vec![
            (name("a.example.org"), addresses(&["192.0.2.5"])),
            (name("b.example.org"), addresses(&["192.0.2.6"])),
        ]);
        let changes = after.changes_from(&before);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].0.name(), "a.example.org");
        assert_eq!(changes[0].2, addresses(&["192.0.2.5"]).as_slice());
        assert!(after.changes_from(&after).is_empty());
    }
}
