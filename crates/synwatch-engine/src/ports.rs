//! Port specifications such as `22,80,8000-8100`.

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

/// A sorted set of distinct TCP ports (1 to 65535).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSet {
    ports: Vec<u16>,
}

impl PortSet {
    /// Parses `22,80,8000-8100`. Spaces around items are allowed; port 0, numbers above 65535,
    /// reversed ranges and empty items are errors.
    pub fn parse(spec: &str) -> Result<PortSet, PortError> {
        let mut ports = Vec::new();
        let mut position = 0;
        for item in spec.split(',') {
            let item_position = position + (item.len() - item.trim_start().len());
            position += item.len() + 1;
            let item = item.trim();
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
            ports.extend(low..=high);
        }
        Ok(PortSet::from_ports(ports))
    }

    /// Builds a set from ports in any order; duplicates are merged. Port 0 is dropped.
    pub fn from_ports(mut ports: Vec<u16>) -> PortSet {
        ports.retain(|&port| port != 0);
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

    /// The port at `index` (in ascending order).
    pub fn port_at(&self, index: usize) -> Option<u16> {
        self.ports.get(index).copied()
    }

    /// The index of `port`, in O(log n).
    pub fn index_of(&self, port: u16) -> Option<usize> {
        self.ports.binary_search(&port).ok()
    }

    /// The ports in ascending order.
    pub fn as_slice(&self) -> &[u16] {
        &self.ports
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
    /// Formats the set compactly, merging runs into ranges (`22,80,8000-8100`).
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut index = 0;
        let mut first = true;
        while index < self.ports.len() {
            let start = self.ports[index];
            let mut end = start;
            while index + 1 < self.ports.len() && self.ports[index + 1] == end + 1 {
                index += 1;
                end += 1;
            }
            if !first {
                formatter.write_str(",")?;
            }
            first = false;
            if start == end {
                write!(formatter, "{start}")?;
            } else {
                write!(formatter, "{start}-{end}")?;
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
        assert_eq!(set.as_slice(), &[22, 80, 443, 8000, 8001, 8002, 8003]);
        assert_eq!(set.to_string(), "22,80,443,8000-8003");
        assert_eq!(set.index_of(443), Some(2));
        assert_eq!(set.index_of(444), None);
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
    }
}
