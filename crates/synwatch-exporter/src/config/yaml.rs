//! YAML for the config: strict deserialization with the position and key path of an error,
//! and the positions of nodes for errors found after deserialization (a duplicate name, a
//! target whose addresses are all excluded), taken from the parser rather than searched for
//! in the text.
//!
//! serde-saphyr (maintained, panic-free, with spans) parses; serde_path_to_error supplies the
//! key path that serde-saphyr's errors do not carry.

use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// A position in the text, 1-based: (line, column).
pub(crate) type Position = (usize, usize);

/// An error of [`from_yaml`]: where, and what (prefixed by the key path, `engine.max_rate: ...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct YamlError {
    pub(crate) position: Position,
    pub(crate) message: String,
}

fn options() -> serde_saphyr::Options {
    let mut options = serde_saphyr::Options::default();
    // YAML 1.2 booleans only: `yes` and `on` are strings, so `details: yes` is an error
    // rather than a guess.
    options.strict_booleans = true;
    options
}

fn position_of(location: serde_saphyr::Location) -> Position {
    (location.line().max(1) as usize, location.column().max(1) as usize)
}

/// Deserializes `text` strictly. A "missing field" error points at the start of the mapping
/// that lacks the field.
pub(crate) fn from_yaml<T: DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    let mut path = None;
    let result = serde_saphyr::with_deserializer_from_str_with_options(text, options(), |deserializer| {
        serde_path_to_error::deserialize(deserializer).map_err(|error| {
            path = Some(error.path().clone());
            error.into_inner()
        })
    });
    result.map_err(|error| {
        let message = error.without_snippet().to_string();
        // serde-saphyr ends some messages with the position; the `file:line:column` prefix
        // already says it.
        let message = match message.find(" at line ") {
            Some(cut) => message[..cut].to_string(),
            None => message,
        };
        let mut position = error.location().map_or((1, 1), position_of);
        let mut steps = path.as_ref().map(segments).unwrap_or_default();
        if message.starts_with("missing field")
            && let Some(start) = NodePositions::of(text).and_then(|nodes| nodes.value(&steps))
        {
            position = start;
        }
        // An unknown key is in the path already; the message names it.
        if message.starts_with("unknown field") {
            steps.pop();
        }
        let message = if steps.is_empty() { message } else { format!("{}: {message}", path_text(&steps)) };
        YamlError { position, message }
    })
}

/// One step of a path into the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// A mapping's key.
    Key(String),
    /// A sequence's item.
    Item(usize),
}

fn segments(path: &serde_path_to_error::Path) -> Vec<Step> {
    path.iter()
        .filter_map(|segment| match segment {
            serde_path_to_error::Segment::Map { key } => Some(Step::Key(key.clone())),
            serde_path_to_error::Segment::Seq { index } => Some(Step::Item(*index)),
            serde_path_to_error::Segment::Enum { .. } | serde_path_to_error::Segment::Unknown => None,
        })
        .collect()
}

/// `engine.max_rate`, `targets[0].name`.
fn path_text(steps: &[Step]) -> String {
    let mut text = String::new();
    for step in steps {
        match step {
            Step::Key(key) if text.is_empty() => text.push_str(key),
            Step::Key(key) => {
                text.push('.');
                text.push_str(key);
            }
            Step::Item(index) => text.push_str(&format!("[{index}]")),
        }
    }
    text
}

/// Where every node of a document is: a tree of positions.
#[derive(Debug)]
pub(crate) struct NodePositions {
    root: Spanned<Node>,
}

#[derive(Debug)]
enum Node {
    Mapping(Vec<(Spanned<KeyText>, Spanned<Node>)>),
    Sequence(Vec<Spanned<Node>>),
    Scalar,
}

impl NodePositions {
    /// The positions of `text`'s nodes, `None` when it does not parse.
    pub(crate) fn of(text: &str) -> Option<NodePositions> {
        serde_saphyr::from_str_with_options(text, options()).ok().map(|root| NodePositions { root })
    }

    fn find(&self, path: &[Step]) -> Option<(Option<&Spanned<KeyText>>, &Spanned<Node>)> {
        let mut key = None;
        let mut node = &self.root;
        for step in path {
            (key, node) = match (step, &node.value) {
                (Step::Key(wanted), Node::Mapping(entries)) => {
                    let (key, value) = entries.iter().find(|(key, _)| key.value.0 == *wanted)?;
                    (Some(key), value)
                }
                (Step::Item(index), Node::Sequence(items)) => (None, items.get(*index)?),
                _ => return None,
            };
        }
        Some((key, node))
    }

    /// Where the value at `path` starts.
    pub(crate) fn value(&self, path: &[Step]) -> Option<Position> {
        self.find(path).map(|(_, node)| position_of(node.referenced))
    }

    /// Where the key of the value at `path` is (for a path ending in a key).
    pub(crate) fn key(&self, path: &[Step]) -> Option<Position> {
        self.find(path).and_then(|(key, _)| key.map(|key| position_of(key.referenced)))
    }
}

/// A mapping key as text, whatever scalar it is written as.
#[derive(Debug)]
struct KeyText(String);

impl<'de> Deserialize<'de> for KeyText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<KeyText, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = KeyText;
            fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter.write_str("a scalar key")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<KeyText, E> {
                Ok(KeyText(value.to_string()))
            }
            fn visit_bool<E: de::Error>(self, value: bool) -> Result<KeyText, E> {
                Ok(KeyText(value.to_string()))
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<KeyText, E> {
                Ok(KeyText(value.to_string()))
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<KeyText, E> {
                Ok(KeyText(value.to_string()))
            }
            fn visit_f64<E: de::Error>(self, value: f64) -> Result<KeyText, E> {
                Ok(KeyText(value.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<KeyText, E> {
                Ok(KeyText(String::new()))
            }
        }
        deserializer.deserialize_any(KeyVisitor)
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Node, D::Error> {
        struct NodeVisitor;
        impl<'de> Visitor<'de> for NodeVisitor {
            type Value = Node;
            fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter.write_str("any YAML node")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<Spanned<KeyText>>()? {
                    entries.push((key, map.next_value::<Spanned<Node>>()?));
                }
                Ok(Node::Mapping(entries))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut sequence: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = sequence.next_element::<Spanned<Node>>()? {
                    items.push(item);
                }
                Ok(Node::Sequence(items))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_none<E: de::Error>(self) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
        }
        deserializer.deserialize_any(NodeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_of_keys_values_and_items_come_from_the_parser() {
        let text = "listen: 127.0.0.1:1\ntargets:\n  - name: a\n    ports: \"22\"\n  - {name: b, ports: \"80\"}\n";
        let nodes = NodePositions::of(text).unwrap();
        let key = |name: &str| Step::Key(name.to_string());
        assert_eq!(nodes.key(&[key("targets")]), Some((2, 1)));
        assert_eq!(nodes.value(&[key("targets"), Step::Item(0)]), Some((3, 5)));
        assert_eq!(nodes.value(&[key("targets"), Step::Item(0), key("name")]), Some((3, 11)));
        assert_eq!(nodes.value(&[key("targets"), Step::Item(1), key("name")]), Some((5, 12)));
        assert_eq!(nodes.value(&[key("targets"), Step::Item(2)]), None);
        assert_eq!(nodes.value(&[key("listen"), key("deeper")]), None);
    }

    #[test]
    fn errors_carry_their_position_and_key_path() {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Inner {
            count: u8,
            name: String,
        }
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Outer {
            items: Vec<Inner>,
        }
        let error = from_yaml::<Outer>("items:\n  - count: 300\n    name: a\n").unwrap_err();
        assert_eq!(error.position, (2, 12));
        assert!(error.message.starts_with("items[0].count: "), "{error:?}");
        let error = from_yaml::<Outer>("items:\n  - {count: 3, name: a}\n  - count: 4\n    colour: red\n").unwrap_err();
        assert_eq!(error.position, (4, 5));
        assert!(error.message.starts_with("items[1]: unknown field `colour`"), "{error:?}");
        // A missing field points at the mapping that lacks it.
        let error = from_yaml::<Outer>("items:\n  - {count: 1, name: a}\n  - count: 4\n").unwrap_err();
        assert_eq!(error.position, (3, 5), "{error:?}");
        assert!(error.message.contains("items[1]: missing field `name`"), "{error:?}");
        let error = from_yaml::<Outer>("items: [{count: 1, name: yes, extra").unwrap_err();
        assert_eq!(error.position.0, 1, "{error:?}");
    }
}
