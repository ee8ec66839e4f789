//! The value types of the config file, as `serde_with` adapters (`#[serde_as(as = "...")]`):
//! each checks its value inside the visitor that reads it, so that an error carries the
//! position of the value itself (an error raised after deserialization would carry the position
//! of the enclosing mapping), and writes it back as a user would (`30s`, `"22,80"`), for the
//! effective config. `serde_with` composes them into `Option`, `Vec` and maps.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_with::{DeserializeAs, SerializeAs};
use synwatch_engine::targets::parse_target;
use synwatch_engine::{AddressFamily, AddressRange, PortSet, TargetItem, TimeSetting, parse_target_item};

use super::{ListenerPorts, Protocol};

/// Deserializes a string and converts it inside the visitor.
fn from_string<'de, D, T>(
    deserializer: D,
    expected: &'static str,
    convert: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    struct ConvertVisitor<F> {
        expected: &'static str,
        convert: F,
    }
    impl<T, F: FnOnce(&str) -> Result<T, String>> Visitor<'_> for ConvertVisitor<F> {
        type Value = T;
        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            formatter.write_str(self.expected)
        }
        fn visit_str<E: de::Error>(self, value: &str) -> Result<T, E> {
            (self.convert)(value).map_err(E::custom)
        }
    }
    deserializer.deserialize_str(ConvertVisitor { expected, convert })
}

/// Writes a value that was read as-is (numbers, addresses).
macro_rules! serialize_as_itself {
    ($adapter:ty) => {
        impl<T: Serialize> SerializeAs<T> for $adapter {
            fn serialize_as<S: Serializer>(source: &T, serializer: S) -> Result<S::Ok, S::Error> {
                source.serialize(serializer)
            }
        }
    };
}

/// `host:port`, such as `127.0.0.1:10045`.
pub(crate) struct Listen;

impl<'de> DeserializeAs<'de, SocketAddr> for Listen {
    fn deserialize_as<D: Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
        from_string(deserializer, "an address and port such as 127.0.0.1:10045", |text| {
            text.parse().map_err(|_| format!("{text:?} is not an address and port such as 127.0.0.1:10045"))
        })
    }
}

serialize_as_itself!(Listen);

/// Config files write every duration with its unit, as Prometheus's do (`30s`, `5m`); the
/// command line also takes a bare number as seconds, as masscan and zmap do, but a file is read
/// long after it was written, when `5` could mean anything.
fn parse_duration(text: &str) -> Result<Duration, String> {
    if text.trim().parse::<f64>().is_ok() {
        return Err(format!(
            "{text:?} needs a unit, such as {}s or {}m: durations in config files are written with units, as in Prometheus's",
            text.trim(),
            text.trim()
        ));
    }
    humantime::parse_duration(text)
        .map_err(|error| format!("{text:?} is not a duration such as 30s, 5m or 1h30m ({error})"))
}

fn serialize_duration<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&humantime::format_duration(*duration).to_string())
}

/// A duration above zero (intervals and timeouts).
pub(crate) struct PositiveDuration;

impl<'de> DeserializeAs<'de, Duration> for PositiveDuration {
    fn deserialize_as<D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        from_string(deserializer, "a duration such as 30s or 5m", |text| {
            let duration = parse_duration(text)?;
            if duration.is_zero() {
                return Err(format!("{text:?}: expected a duration above zero"));
            }
            Ok(duration)
        })
    }
}

impl SerializeAs<Duration> for PositiveDuration {
    fn serialize_as<S: Serializer>(source: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_duration(source, serializer)
    }
}

/// A duration, zero allowed (the wait for late replies).
pub(crate) struct AnyDuration;

impl<'de> DeserializeAs<'de, Duration> for AnyDuration {
    fn deserialize_as<D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        from_string(deserializer, "a duration such as 1s or 500ms", parse_duration)
    }
}

impl SerializeAs<Duration> for AnyDuration {
    fn serialize_as<S: Serializer>(source: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_duration(source, serializer)
    }
}

/// `auto` (learned from the network) or a duration, zero allowed (waits and retry gaps).
pub(crate) struct TimeValue;

impl<'de> DeserializeAs<'de, TimeSetting> for TimeValue {
    fn deserialize_as<D: Deserializer<'de>>(deserializer: D) -> Result<TimeSetting, D::Error> {
        from_string(deserializer, "auto or a duration such as 1s or 500ms", |text| {
            if text.trim() == "auto" {
                return Ok(TimeSetting::Auto);
            }
            parse_duration(text).map(TimeSetting::Fixed).map_err(|error| format!("{error}; or auto"))
        })
    }
}

impl SerializeAs<TimeSetting> for TimeValue {
    fn serialize_as<S: Serializer>(source: &TimeSetting, serializer: S) -> Result<S::Ok, S::Error> {
        match source {
            TimeSetting::Auto => serializer.serialize_str("auto"),
            TimeSetting::Fixed(duration) => serialize_duration(duration, serializer),
        }
    }
}

/// A whole number from `MIN` to `MAX`, checked where it is written.
pub(crate) struct Bounded<const MIN: u64, const MAX: u64>;

impl<'de, T: TryFrom<u64>, const MIN: u64, const MAX: u64> DeserializeAs<'de, T> for Bounded<MIN, MAX> {
    fn deserialize_as<D: Deserializer<'de>>(deserializer: D) -> Result<T, D::Error> {
        struct NumberVisitor<T, const MIN: u64, const MAX: u64>(PhantomData<T>);
        impl<T: TryFrom<u64>, const MIN: u64, const MAX: u64> Visitor<'_> for NumberVisitor<T, MIN, MAX> {
            type Value = T;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(formatter, "a whole number from {MIN} to {MAX}")
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<T, E> {
                if (MIN..=MAX).contains(&value)
                    && let Ok(value) = T::try_from(value)
                {
                    return Ok(value);
                }
                Err(E::custom(format!("{value}: expected {MIN} to {MAX}")))
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<T, E> {
                Err(E::custom(format!("{value}: expected {MIN} to {MAX}")))
            }
        }
        deserializer.deserialize_u64(NumberVisitor::<T, MIN, MAX>(PhantomData))
    }
}

impl<T: Serialize, const MIN: u64, const MAX: u64> SerializeAs<T> for Bounded<MIN, MAX> {
    fn serialize_as<S: Serializer>(source: &T, serializer: S) -> Result<S::Ok, S::Error> {
        source.serialize(serializer)
    }
}

/// Probes per second (`max_rate`, a module's `rate`).
pub(crate) type Rate = Bounded<1, 100_000_000>;
/// Scans or on-demand jobs at once.
pub(crate) type ConcurrentScans = Bounded<1, 64>;
/// Re-sends of unanswered probes.
pub(crate) type Retries = Bounded<0, 10>;
/// Canary ports per host that answered SYN-ACK (`synwatch_engine::MAX_CANARIES`).
pub(crate) type Canaries = Bounded<0, 8>;
/// Requests a client may make at once after being idle.
pub(crate) type Burst = Bounded<1, 100_000>;
/// Hosts × ports of one on-demand request.
pub(crate) type ProbeCount = Bounded<1, 1_000_000_000>;

/// Requests per second: a number above 0 and at most 1,000,000.
pub(crate) struct RequestRate;

impl<'de> DeserializeAs<'de, f64> for RequestRate {
    fn deserialize_as<D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
        struct RateVisitor;
        impl Visitor<'_> for RateVisitor {
            type Value = f64;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("requests per second, a number above 0 such as 0.5 or 10")
            }
            fn visit_f64<E: de::Error>(self, value: f64) -> Result<f64, E> {
                if value.is_finite() && value > 0.0 && value <= 1_000_000.0 {
                    Ok(value)
                } else {
                    Err(E::custom(format!("rate {value}: expected requests per second above 0 and at most 1000000")))
                }
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<f64, E> {
                self.visit_f64(value as f64)
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<f64, E> {
                self.visit_f64(value as f64)
            }
        }
        deserializer.deserialize_f64(RateVisitor)
    }
}

serialize_as_itself!(RequestRate);

/// A target or module name: 1 to 64 letters, digits, `_`, `-` or `.`.
pub(crate) struct Name;

impl<'de> DeserializeAs<'de, String> for Name {
    fn deserialize_as<D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
        from_string(deserializer, "a target name", |text| {
            let valid = !text.is_empty()
                && text.len() <= 64
                && text.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
            if valid {
                Ok(text.to_string())
            } else {
                Err(format!("target name {text:?}: expected 1 to 64 letters, digits, '_', '-' or '.'"))
            }
        })
    }
}

serialize_as_itself!(Name);

/// A list of addresses, CIDRs and ranges with at least `MIN` items (0 for the allowlists, 1
/// for a target's addresses).
pub(crate) struct Addresses<const MIN: usize>;

impl<'de, const MIN: usize> DeserializeAs<'de, Vec<AddressRange>> for Addresses<MIN> {
    fn deserialize_as<D: Deserializer<'de>>(deserializer: D) -> Result<Vec<AddressRange>, D::Error> {
        struct ListVisitor<const MIN: usize>;
        impl<'de, const MIN: usize> Visitor<'de> for ListVisitor<MIN> {
            type Value = Vec<AddressRange>;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a list of addresses, CIDRs and ranges")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut sequence: A) -> Result<Self::Value, A::Error> {
                let mut ranges = Vec::new();
                while let Some(Address(range)) = sequence.next_element()? {
                    ranges.push(range);
                }
                if ranges.len() < MIN {
                    return Err(de::Error::custom("expected at least one address"));
                }
                Ok(ranges)
            }
        }
        deserializer.deserialize_seq(ListVisitor::<MIN>)
    }
}

impl<const MIN: usize> SerializeAs<Vec<AddressRange>> for Addresses<MIN> {
    fn serialize_as<S: Serializer>(source: &Vec<AddressRange>, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(source.iter().map(|range| range.to_string()))
    }
}

/// One address, CIDR or range.
struct Address(AddressRange);

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Address, D::Error> {
        from_string(deserializer, "an address, CIDR or range", |text| {
            parse_target(text).map(Address).map_err(|error| error.to_string())
        })
    }
}

/// A target's `addresses:`: addresses, CIDRs, ranges and DNS names (see
/// [`synwatch_engine::names`]), in any mix, possibly empty (a target may take its addresses
/// from `targets_files` only).
pub(crate) struct TargetItems;

impl<'de> DeserializeAs<'de, Vec<TargetItem>> for TargetItems {
    fn deserialize_as<D: Deserializer<'de>>(deserializer: D) -> Result<Vec<TargetItem>, D::Error> {
        struct ItemsVisitor;
        impl<'de> Visitor<'de> for ItemsVisitor {
            type Value = Vec<TargetItem>;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a list of addresses, CIDRs, ranges and host names")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut sequence: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some(Item(item)) = sequence.next_element()? {
                    items.push(item);
                }
                Ok(items)
            }
        }
        deserializer.deserialize_seq(ItemsVisitor)
    }
}

/// One item of `addresses:`.
struct Item(TargetItem);

impl<'de> Deserialize<'de> for Item {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Item, D::Error> {
        from_string(deserializer, "an address, CIDR, range or host name", |text| {
            parse_target_item(text, AddressFamily::Any).map(Item).map_err(|error| error.to_string())
        })
    }
}

/// `family:`: `any`, `ipv4` or `ipv6`.
pub(crate) struct Family;

impl<'de> DeserializeAs<'de, AddressFamily> for Family {
    fn deserialize_as<D: Deserializer<'de>>(deserializer: D) -> Result<AddressFamily, D::Error> {
        from_string(deserializer, "any, ipv4 or ipv6", |text| {
            AddressFamily::parse(text).ok_or_else(|| format!("family {text:?}: expected any, ipv4 or ipv6"))
        })
    }
}

impl SerializeAs<AddressFamily> for Family {
    fn serialize_as<S: Serializer>(source: &AddressFamily, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(source.name())
    }
}

/// The labels synwatch writes itself on per-target series, which a target's own labels may
/// not take, and the scrape's own (`job`, `instance`), which Prometheus would rename.
pub(crate) const RESERVED_LABELS: &[&str] =
    &["target", "ip", "port", "proto", "state", "hostname", "reason", "kind", "verdict", "le", "job", "instance"];

/// The most labels a target may carry.
pub(crate) const MAX_TARGET_LABELS: usize = 32;

/// What is wrong with a target label, if anything: a Prometheus label name
/// (`[a-zA-Z_][a-zA-Z0-9_]*`, at most 128 bytes, not `__`-prefixed, not one of
/// [`RESERVED_LABELS`]) and a value of at most 1,024 bytes.
pub(crate) fn label_problem(name: &str, value: &str) -> Option<String> {
    let mut bytes = name.bytes();
    let well_formed = bytes.next().is_some_and(|first| first.is_ascii_alphabetic() || first == b'_')
        && bytes.all(|byte| byte.is_ascii_alphanumeric() || byte == b'_');
    if !well_formed || name.len() > 128 {
        return Some(format!(
            "label name {:?}: expected 1 to 128 letters, digits and '_', not starting with a digit",
            name.chars().take(64).collect::<String>()
        ));
    }
    if name.starts_with("__") {
        return Some(format!("label name {name:?}: names starting with __ are reserved by Prometheus"));
    }
    if RESERVED_LABELS.contains(&name) {
        return Some(format!("label name {name:?} is one synwatch or the scrape sets itself"));
    }
    if value.len() > 1024 {
        return Some(format!("label {name:?}: the value is {} bytes long, more than the limit of 1024", value.len()));
    }
    None
}

/// A target's `labels:`, each checked by [`label_problem`], at most [`MAX_TARGET_LABELS`].
pub(crate) struct Labels;

impl<'de> DeserializeAs<'de, BTreeMap<String, String>> for Labels {
    fn deserialize_as<D: Deserializer<'de>>(deserializer: D) -> Result<BTreeMap<String, String>, D::Error> {
        let labels = BTreeMap::<String, String>::deserialize(deserializer)?;
        if labels.len() > MAX_TARGET_LABELS {
            return Err(de::Error::custom(format!(
                "{} labels, more than the limit of {MAX_TARGET_LABELS}",
                labels.len()
            )));
        }
        if let Some(problem) = labels.iter().find_map(|(name, value)| label_problem(name, value)) {
            return Err(de::Error::custom(problem));
        }
        Ok(labels)
    }
}

impl SerializeAs<BTreeMap<String, String>> for Labels {
    fn serialize_as<S: Serializer>(source: &BTreeMap<String, String>, serializer: S) -> Result<S::Ok, S::Error> {
        source.serialize(serializer)
    }
}

/// `"22,80,udp/53"` or `[22, 80, "8000-8100", "udp/53,161"]` (see [`serve_ports`]).
pub(crate) struct Ports;

/// Parses the ports of a target, an `expect:`, `/probe` or `/sd`: `22`, `tcp/22,80`,
/// `udp/53,161` (see [`PortSet::parse`]), with the specification in the error.
pub(crate) fn serve_ports(spec: &str) -> Result<PortSet, String> {
    PortSet::parse(spec).map_err(|error| format!("ports {spec:?}: {error}"))
}

impl<'de> DeserializeAs<'de, PortSet> for Ports {
    fn deserialize_as<D: Deserializer<'de>>(deserializer: D) -> Result<PortSet, D::Error> {
        struct PortsVisitor;
        impl<'de> Visitor<'de> for PortsVisitor {
            type Value = PortSet;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter
                    .write_str("a port specification such as \"22,80,8000-8100\", or a list of ports and such strings")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<PortSet, E> {
                serve_ports(value).map_err(E::custom)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut sequence: A) -> Result<PortSet, A::Error> {
                // Each item stands alone: a `udp/` prefix in one item does not reach the next.
                let mut ports = Vec::new();
                while let Some(PortItem(item)) = sequence.next_element()? {
                    ports.extend_from_slice(serve_ports(&item).map_err(de::Error::custom)?.ports());
                }
                if ports.is_empty() {
                    return Err(de::Error::custom("expected at least one port"));
                }
                Ok(PortSet::from_entries(ports))
            }
        }
        deserializer.deserialize_any(PortsVisitor)
    }
}

impl SerializeAs<PortSet> for Ports {
    fn serialize_as<S: Serializer>(source: &PortSet, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&source.to_string())
    }
}

/// One list item: a port number or a specification string, checked on its own.
struct PortItem(String);

impl<'de> Deserialize<'de> for PortItem {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<PortItem, D::Error> {
        struct ItemVisitor;
        impl Visitor<'_> for ItemVisitor {
            type Value = String;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a port from 1 to 65535 or a string such as \"8000-8100\"")
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<String, E> {
                if (1..=65535).contains(&value) {
                    Ok(value.to_string())
                } else {
                    Err(E::custom(format!("port {value}: expected 1 to 65535")))
                }
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<String, E> {
                Err(E::custom(format!("port {value}: expected 1 to 65535")))
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<String, E> {
                PortSet::parse(value).map_err(|error| E::custom(format!("ports {value:?}: {error}")))?;
                Ok(value.to_string())
            }
        }
        deserializer.deserialize_any(ItemVisitor).map(PortItem)
    }
}

/// A name server: `192.0.2.53`, `192.0.2.53:5353`, `2001:db8::53` or `[2001:db8::53]:5353`.
pub(crate) struct Nameserver;

impl<'de> DeserializeAs<'de, SocketAddr> for Nameserver {
    fn deserialize_as<D: Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
        from_string(deserializer, "a name server address, with an optional :port", |text| {
            if let Ok(address) = text.parse::<SocketAddr>() {
                return Ok(address);
            }
            text.parse::<IpAddr>().map(|address| SocketAddr::new(address, 53)).map_err(|_| {
                format!(
                    "{text:?} is not a name server address such as 192.0.2.53, 192.0.2.53:5353 or [2001:db8::53]:53"
                )
            })
        })
    }
}

serialize_as_itself!(Nameserver);

/// A process command name as /proc shows it (`comm`: at most 15 bytes).
pub(crate) struct ProcessName;

impl<'de> DeserializeAs<'de, String> for ProcessName {
    fn deserialize_as<D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
        from_string(deserializer, "a process command name", |text| {
            if text.is_empty() || text.len() > 15 || text.contains('/') {
                return Err(format!(
                    "process {text:?}: expected a command name of 1 to 15 bytes without '/', as in /proc/PID/comm"
                ));
            }
            Ok(text.to_string())
        })
    }
}

serialize_as_itself!(ProcessName);

/// One entry of `expect_listening` / `forbid_listening`: `22` (TCP), `"tcp/22"`, `"udp/53"`,
/// `"tcp/8000-8100"`.
impl<'de> Deserialize<'de> for ListenerPorts {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ListenerPorts, D::Error> {
        struct ItemVisitor;
        impl Visitor<'_> for ItemVisitor {
            type Value = ListenerPorts;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a port or a string such as \"tcp/22\", \"udp/53\" or \"tcp/8000-8100\"")
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<ListenerPorts, E> {
                match u16::try_from(value) {
                    Ok(port) if port > 0 => {
                        Ok(ListenerPorts { protocol: Protocol::Tcp, ports: PortSet::from_ports(vec![port]) })
                    }
                    _ => Err(E::custom(format!("port {value}: expected 1 to 65535"))),
                }
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<ListenerPorts, E> {
                Err(E::custom(format!("port {value}: expected 1 to 65535")))
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<ListenerPorts, E> {
                let (protocol, spec) = match value.split_once('/') {
                    Some(("tcp", spec)) => (Protocol::Tcp, spec),
                    Some(("udp", spec)) => (Protocol::Udp, spec),
                    Some((other, _)) => {
                        return Err(E::custom(format!("{value:?}: unknown protocol {other:?}; expected tcp or udp")));
                    }
                    None => (Protocol::Tcp, value),
                };
                match PortSet::parse(spec) {
                    // The protocol is the item's prefix: a second one inside is a mistake.
                    Ok(ports) if !ports.is_tcp_only() => {
                        Err(E::custom(format!("{value:?}: one protocol per item (write udp/... as its own item)")))
                    }
                    Ok(ports) => Ok(ListenerPorts { protocol, ports }),
                    Err(error) => Err(E::custom(format!("{value:?}: {error}"))),
                }
            }
        }
        deserializer.deserialize_any(ItemVisitor)
    }
}
