//! Targets by name: [`HostName`] (a DNS name with a family preference) and [`TargetItem`],
//! one item of a target list that is either an address range or a name.
//!
//! Nothing here resolves anything: the engine does no I/O. A name is validated by the rules of
//! RFC 1123 §2.1 and RFC 3696 §2 (labels of letters, digits and hyphens, and underscores as
//! internal names use them, not starting or ending
//! with a hyphen, at most 63 bytes each and 253 in all, a last label that is not all digits so
//! that a mistyped address such as `192.0.2.300` is not taken for a name) and kept lowercase
//! without its trailing dot, so that `DB.example.org.` and `db.example.org` are one name.
//!
//! A family preference is written as a prefix: `ipv4:db.example.org` takes only its A records,
//! `ipv6:db.example.org` only its AAAA records, a bare name both.

use std::fmt;

use crate::targets::{AddressRange, TargetError, parse_target};

/// The longest name accepted, in bytes without the trailing dot (RFC 1035 §2.3.4's 255 bytes
/// on the wire are 253 in text).
pub const MAX_NAME_LENGTH: usize = 253;

/// The longest label accepted (RFC 1035 §2.3.4).
pub const MAX_LABEL_LENGTH: usize = 63;

/// Which address records of a name are scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum AddressFamily {
    /// A and AAAA records (the default).
    #[default]
    Any,
    /// A records only.
    Ipv4,
    /// AAAA records only.
    Ipv6,
}

impl AddressFamily {
    /// The name used in configs and prefixes: `any`, `ipv4`, `ipv6`.
    pub fn name(self) -> &'static str {
        match self {
            AddressFamily::Any => "any",
            AddressFamily::Ipv4 => "ipv4",
            AddressFamily::Ipv6 => "ipv6",
        }
    }

    /// Parses `any`, `ipv4` or `ipv6`.
    pub fn parse(text: &str) -> Option<AddressFamily> {
        match text {
            "any" => Some(AddressFamily::Any),
            "ipv4" => Some(AddressFamily::Ipv4),
            "ipv6" => Some(AddressFamily::Ipv6),
            _ => None,
        }
    }

    /// Whether an address of this family is wanted.
    pub fn admits(self, address: std::net::IpAddr) -> bool {
        match self {
            AddressFamily::Any => true,
            AddressFamily::Ipv4 => address.is_ipv4(),
            AddressFamily::Ipv6 => address.is_ipv6(),
        }
    }
}

/// A validated DNS name and the records of it that are wanted.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostName {
    name: String,
    family: AddressFamily,
}

impl HostName {
    /// Validates `text` (see the module documentation), with an optional `ipv4:` or `ipv6:`
    /// prefix; `default_family` applies when there is none.
    pub fn parse(text: &str, default_family: AddressFamily) -> Result<HostName, String> {
        let (family, name) = match text.split_once(':') {
            Some(("ipv4", name)) => (AddressFamily::Ipv4, name),
            Some(("ipv6", name)) => (AddressFamily::Ipv6, name),
            Some((prefix, _)) => {
                return Err(format!("unknown family prefix {prefix:?}: write ipv4:NAME, ipv6:NAME or a bare name"));
            }
            None => (default_family, text),
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.is_empty() {
            return Err("the name is empty".into());
        }
        if name.len() > MAX_NAME_LENGTH {
            return Err(format!("the name is {} bytes long, more than the limit of {MAX_NAME_LENGTH}", name.len()));
        }
        let labels: Vec<&str> = name.split('.').collect();
        for label in &labels {
            if label.is_empty() {
                return Err("the name has an empty label (two dots in a row, or a leading dot)".into());
            }
            if label.len() > MAX_LABEL_LENGTH {
                return Err(format!(
                    "the label {:?}… is {} bytes long, more than the limit of {MAX_LABEL_LENGTH}",
                    label.chars().take(16).collect::<String>(),
                    label.len()
                ));
            }
            if let Some(bad) = label.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_')) {
                return Err(format!(
                    "the name holds {bad:?}; a label has letters, digits, hyphens and underscores only"
                ));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(format!("the label {label:?} starts or ends with a hyphen"));
            }
        }
        if labels.last().is_some_and(|last| last.bytes().all(|byte| byte.is_ascii_digit())) {
            return Err("the last label is all digits, so this is neither an address nor a name".into());
        }
        Ok(HostName { name: name.to_ascii_lowercase(), family })
    }

    /// The name, lowercase, without a trailing dot.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The records wanted.
    pub fn family(&self) -> AddressFamily {
        self.family
    }

    /// The same name wanting `family` instead.
    pub fn with_family(mut self, family: AddressFamily) -> HostName {
        self.family = family;
        self
    }
}

impl fmt::Display for HostName {
    /// The form it is parsed from: the name, with its family prefix unless it wants both.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.family {
            AddressFamily::Any => formatter.write_str(&self.name),
            family => write!(formatter, "{}:{}", family.name(), self.name),
        }
    }
}

/// One item of a target list: addresses, or a name resolved when the scan starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetItem {
    /// An address, a CIDR or a range.
    Addresses(AddressRange),
    /// A DNS name.
    Name(HostName),
}

impl fmt::Display for TargetItem {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetItem::Addresses(range) => range.fmt(formatter),
            TargetItem::Name(name) => name.fmt(formatter),
        }
    }
}

/// Parses one item: an address, CIDR or range as [`parse_target`] reads them, else a name
/// (wanting `default_family` unless prefixed). The error of an item that is neither says both.
pub fn parse_target_item(item: &str, default_family: AddressFamily) -> Result<TargetItem, TargetError> {
    let item = item.trim();
    let address_error = match parse_target(item) {
        Ok(range) => return Ok(TargetItem::Addresses(range)),
        Err(error) => error,
    };
    // An item with a slash or a colon (no name holds either), or made only of digits, dots
    // and hyphens, was meant as an address: its address error is the one to show.
    // A word with a letter past `f` before the colon is a (perhaps mistyped) family prefix.
    let prefixed = item
        .split_once(':')
        .is_some_and(|(prefix, _)| prefix.bytes().any(|byte| byte.is_ascii_alphabetic() && !byte.is_ascii_hexdigit()));
    let meant_as_address = item.contains('/')
        || (item.contains(':') && !prefixed)
        || item.bytes().all(|byte| byte.is_ascii_digit() || byte == b'.' || byte == b'-');
    if meant_as_address {
        return Err(address_error);
    }
    HostName::parse(item, default_family).map(TargetItem::Name).map_err(|reason| TargetError::Invalid {
        input: item.chars().take(80).collect(),
        reason: format!("not an address, CIDR or range, nor a host name: {reason}"),
    })
}

/// Parses a target list in the `@file` format (one item per line or separated by commas or
/// spaces, `#` starts a comment), names allowed. Errors name the 1-based line.
pub fn parse_target_item_list(text: &str) -> Result<Vec<TargetItem>, (usize, TargetError)> {
    let mut items = Vec::new();
    for (line_index, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("");
        for item in line.split(|c: char| c == ',' || c.is_whitespace()).filter(|item| !item.is_empty()) {
            items.push(parse_target_item(item, AddressFamily::Any).map_err(|error| (line_index + 1, error))?);
        }
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> HostName {
        match parse_target_item(text, AddressFamily::Any) {
            Ok(TargetItem::Name(name)) => name,
            other => panic!("{text:?} parsed as {other:?}"),
        }
    }

    #[test]
    fn names_are_told_from_addresses() {
        assert!(matches!(parse_target_item("192.0.2.1", AddressFamily::Any), Ok(TargetItem::Addresses(_))));
        assert!(matches!(parse_target_item("2001:db8::/64", AddressFamily::Any), Ok(TargetItem::Addresses(_))));
        assert!(matches!(parse_target_item("192.0.2.1-192.0.2.9", AddressFamily::Any), Ok(TargetItem::Addresses(_))));
        assert_eq!(name("localhost").name(), "localhost");
        assert_eq!(name("DB-1.Internal.").name(), "db-1.internal");
        assert_eq!(name("db-1.internal").family(), AddressFamily::Any);
        assert_eq!(name("ipv6:db.example.org").family(), AddressFamily::Ipv6);
        assert_eq!(name("ipv4:db.example.org").to_string(), "ipv4:db.example.org");
        // Mistyped addresses stay address errors.
        for text in ["192.0.2.300", "192.0.2.0/33", "2001:db8::g", "192.0.2.9-192.0.2.1", "10.1"] {
            let error = parse_target_item(text, AddressFamily::Any).unwrap_err().to_string();
            assert!(!error.contains("host name"), "{text}: {error}");
        }
    }

    #[test]
    fn bad_names_are_refused_with_the_reason() {
        let long_label = format!("{}.example.org", "a".repeat(64));
        let long_name = format!("{}.org", ["abcdefghij"; 25].join("."));
        for (text, expected) in [
            ("db..example.org", "empty label"),
            ("-db.example.org", "hyphen"),
            ("db.exa mple.org", "holds"),
            ("db\"x.org", "holds"),
            ("ipv5:db.example.org", "unknown family prefix"),
            (long_label.as_str(), "limit of 63"),
            (long_name.as_str(), "limit of 253"),
        ] {
            let error = parse_target_item(text, AddressFamily::Any).unwrap_err().to_string();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }

    #[test]
    fn a_default_family_applies_to_bare_names_only() {
        let TargetItem::Name(bare) = parse_target_item("db.example.org", AddressFamily::Ipv4).unwrap() else {
            panic!()
        };
        assert_eq!(bare.family(), AddressFamily::Ipv4);
        let TargetItem::Name(prefixed) = parse_target_item("ipv6:db.example.org", AddressFamily::Ipv4).unwrap() else {
            panic!()
        };
        assert_eq!(prefixed.family(), AddressFamily::Ipv6);
        assert!(AddressFamily::Ipv6.admits("2001:db8::1".parse().unwrap()));
        assert!(!AddressFamily::Ipv6.admits("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn lists_mix_names_and_addresses() {
        let items = parse_target_item_list("# inventory\nlocalhost, 192.0.2.0/30\n db.example.org\n").unwrap();
        assert_eq!(items.len(), 3);
        assert_eq!(items[0].to_string(), "localhost");
        let (line, _) = parse_target_item_list("localhost\n\n192.0.2.300\n").unwrap_err();
        assert_eq!(line, 3);
    }
}
