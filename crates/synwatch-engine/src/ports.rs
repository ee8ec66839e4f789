//! Ports of both protocols and their specifications: `22,80,8000-8100`, `tcp/22,udp/53,161`.

use std::fmt;

/// Why a port specification was rejected. `position` is the byte offset of the bad item.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad port specification at character {position}: {reason}")]
pub struct PortError {
    /// Byte offset in the specification where the bad item starts.
    pub position: usize,
    /// What is wrong.
    pub reason: String,
}

/// The transport protocol of a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Protocol {
    /// TCP: a SYN probe (or a connect()).
    #[default]
    Tcp,
    /// UDP: a datagram, with a payload that makes the port's usual service answer.
    Udp,
}

impl Protocol {
    /// `tcp` or `udp`, as in `udp/53`, the `proto` label and the JSON field.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }

    /// The protocol called `name` (`tcp` or `udp`, any case).
    pub fn from_name(name: &str) -> Option<Protocol> {
        if name.eq_ignore_ascii_case("tcp") {
            Some(Protocol::Tcp)
        } else if name.eq_ignore_ascii_case("udp") {
            Some(Protocol::Udp)
        } else {
            None
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

/// A port of one protocol: what a probe goes to. Ordered TCP before UDP, then by number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Port {
    /// The protocol.
    pub protocol: Protocol,
    /// The port number (1 to 65535).
    pub number: u16,
}

impl Port {
    /// A TCP port.
    pub const fn tcp(number: u16) -> Port {
        Port { protocol: Protocol::Tcp, number }
    }

    /// A UDP port.
    pub const fn udp(number: u16) -> Port {
        Port { protocol: Protocol::Udp, number }
    }

    /// Whether it is a TCP port.
    pub fn is_tcp(self) -> bool {
        self.protocol == Protocol::Tcp
    }

    /// Whether it is a UDP port.
    pub fn is_udp(self) -> bool {
        self.protocol == Protocol::Udp
    }
}

impl fmt::Display for Port {
    /// `22` for a TCP port (as before UDP existed), `udp/53` for a UDP port.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.protocol {
            Protocol::Tcp => write!(formatter, "{}", self.number),
            Protocol::Udp => write!(formatter, "udp/{}", self.number),
        }
    }
}

/// A sorted set of distinct ports: TCP ports first, then UDP ports, each ascending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSet {
    ports: Vec<Port>,
}

impl PortSet {
    /// Parses `22,80,8000-8100`, `tcp/22,80,udp/53,161` or `udp/1-1024`.
    ///
    /// A `tcp/` or `udp/` prefix applies to its item and to every later item up to the next
    /// prefix (so `tcp/22,80,udp/53,161` is TCP 22 and 80, UDP 53 and 161, as nmap's `T:`
    /// and `U:` read); items before any prefix are TCP, as they always were. Spaces around
    /// items are allowed; port 0, numbers above 65535, reversed ranges, empty items and other
    /// prefixes are errors.
    pub fn parse(spec: &str) -> Result<PortSet, PortError> {
        let mut ports = Vec::new();
        let mut position = 0;
        let mut protocol = Protocol::Tcp;
        for item in spec.split(',') {
            let mut item_position = position + (item.len() - item.trim_start().len());
            position += item.len() + 1;
            let mut item = item.trim();
            if let Some((prefix, rest)) = item.split_once('/') {
                protocol = Protocol::from_name(prefix.trim()).ok_or_else(|| PortError {
                    position: item_position,
                    reason: format!("{prefix:?} is not a protocol (tcp/ or udp/)"),
                })?;
                item_position += prefix.len() + 1 + (rest.len() - rest.trim_start().len());
                item = rest.trim();
            }
            if item.is_empty() {
                return Err(PortError { position: item_position, reason: "empty item".into() });
            }
            let (low, high) = match item.split_once('-') {
                Some((low, high)) => (parse_port(low, item_position)?, parse_port(high, item_position)?),
                None => {
                    let port = parse_port(item, item_position)?;
                    (port, port)
                }
            };
            if low > high {
                return Err(PortError { position: item_position, reason: format!("range {low}-{high} is reversed") });
            }
            ports.extend((low..=high).map(|number| Port { protocol, number }));
        }
        Ok(PortSet::from_entries(ports))
    }

    /// Builds a set of TCP ports from numbers in any order; duplicates are merged. Port 0 is
    /// dropped.
    pub fn from_ports(ports: Vec<u16>) -> PortSet {
        PortSet::from_entries(ports.into_iter().map(Port::tcp).collect())
    }

    /// Builds a set from ports of either protocol in any order; duplicates are merged. Port 0
    /// is dropped.
    pub fn from_entries(mut ports: Vec<Port>) -> PortSet {
        ports.retain(|port| port.number != 0);
        ports.sort_unstable();
        ports.dedup();
        PortSet { ports }
    }

    /// Number of ports.
    pub fn len(&self) -> usize {
        self.ports.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }

    /// The port at `index` (TCP first, then UDP, each ascending).
    pub fn port_at(&self, index: usize) -> Option<Port> {
        self.ports.get(index).copied()
    }

    /// The index of `port`, in O(log n).
    pub fn index_of(&self, port: Port) -> Option<usize> {
        self.ports.binary_search(&port).ok()
    }

    /// Whether the set holds `port`.
    pub fn contains(&self, port: Port) -> bool {
        self.index_of(port).is_some()
    }

    /// The ports in order (TCP first, then UDP).
    pub fn ports(&self) -> &[Port] {
        &self.ports
    }

    /// The numbers of the TCP ports, ascending.
    pub fn tcp_numbers(&self) -> impl Iterator<Item = u16> + '_ {
        self.ports.iter().filter(|port| port.is_tcp()).map(|port| port.number)
    }

    /// How many ports are of `protocol`.
    pub fn count_of(&self, protocol: Protocol) -> usize {
        self.ports.iter().filter(|port| port.protocol == protocol).count()
    }

    /// Whether every port is TCP.
    pub fn is_tcp_only(&self) -> bool {
        self.ports.iter().all(|port| port.is_tcp())
    }
}

fn parse_port(text: &str, position: usize) -> Result<u16, PortError> {
    let text = text.trim();
    let value: u32 =
        text.parse().map_err(|_| PortError { position, reason: format!("{text:?} is not a port number") })?;
    if value == 0 || value > 65535 {
        return Err(PortError { position, reason: format!("port {value} is outside 1-65535") });
    }
    Ok(value as u16)
}

impl fmt::Display for PortSet {
    /// Formats the set compactly, merging runs into ranges: TCP ports bare, as before UDP
    /// existed, then the UDP ones after one `udp/` (`22,80,8000-8100,udp/53,161`). The text
    /// parses back to the same set.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut index = 0;
        let mut first = true;
        while index < self.ports.len() {
            let start_index = index;
            let start = self.ports[index];
            let mut end = start.number;
            while index + 1 < self.ports.len()
                && self.ports[index + 1].protocol == start.protocol
                && self.ports[index + 1].number == end + 1
            {
                index += 1;
                end += 1;
            }
            if !first {
                formatter.write_str(",")?;
            }
            if start.is_udp() && (start_index == 0 || self.ports[start_index - 1].is_tcp()) {
                formatter.write_str("udp/")?;
            }
            first = false;
            if start.number == end {
                write!(formatter, "{}", start.number)?;
            } else {
                write!(formatter, "{}-{end}", start.number)?;
            }
            index += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_and_ranges() {
        let set = PortSet::parse("443, 22,80,8000-8003,80").unwrap();
        assert_eq!(set.tcp_numbers().collect::<Vec<_>>(), [22, 80, 443, 8000, 8001, 8002, 8003]);
        assert!(set.is_tcp_only());
        assert_eq!(set.to_string(), "22,80,443,8000-8003");
        assert_eq!(set.index_of(Port::tcp(443)), Some(2));
        assert_eq!(set.index_of(Port::tcp(444)), None);
        assert_eq!(set.index_of(Port::udp(443)), None);
        assert_eq!(PortSet::parse("1-65535").unwrap().len(), 65535);
    }

    #[test]
    fn rejects_bad_items_with_their_position() {
        assert_eq!(PortSet::parse("22,70000").unwrap_err().position, 3);
        assert_eq!(PortSet::parse("0").unwrap_err().position, 0);
        assert_eq!(PortSet::parse("22,,80").unwrap_err().position, 3);
        assert!(PortSet::parse("90-80").unwrap_err().reason.contains("reversed"));
        assert!(PortSet::parse("http").is_err());
        assert!(PortSet::parse("").is_err());
        assert!(PortSet::parse("1-2-3").is_err());
        let error = PortSet::parse("22,sctp/9").unwrap_err();
        assert_eq!(error.position, 3);
        assert!(error.reason.contains("not a protocol"));
        assert_eq!(PortSet::parse("22,udp/").unwrap_err().position, 7);
        assert_eq!(PortSet::parse("udp/ 70000").unwrap_err().position, 5);
    }

    #[test]
    fn protocol_prefixes_apply_up_to_the_next_prefix() {
        let set = PortSet::parse("tcp/22,80,udp/53,161-162, TCP/443,udp/53").unwrap();
        let expected = [Port::tcp(22), Port::tcp(80), Port::tcp(443), Port::udp(53), Port::udp(161), Port::udp(162)];
        assert_eq!(set.ports(), &expected);
        assert_eq!(set.to_string(), "22,80,443,udp/53,161-162");
        assert_eq!(PortSet::parse(&set.to_string()).unwrap(), set);
        assert_eq!(set.count_of(Protocol::Udp), 3);
        assert!(!set.is_tcp_only());
        assert_eq!(PortSet::parse("udp/53").unwrap().to_string(), "udp/53");
        assert_eq!(PortSet::parse("53,udp/53").unwrap().len(), 2);
        assert_eq!(Port::udp(53).to_string(), "udp/53");
        assert_eq!(Port::tcp(22).to_string(), "22");
    }
}
