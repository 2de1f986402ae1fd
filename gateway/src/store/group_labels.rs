//! A group's grouping labels, kept once for the group instead of in every series.
//!
//! Every series of a group carries the group's labels (and `instance=""` when the key
//! has no `instance`), so a long grouping value copied into each series' text and sort
//! key multiplied the store's memory by the number of series. A stored series writes a
//! three-byte reference in their place: [`REFERENCE`] and the label's index in the group
//! (u16, little-endian). The references are expanded whenever the text is read, into
//! exactly the bytes the label itself would have written, so the exposition stays
//! byte for byte what it was.
//!
//! [`REFERENCE`] can stand for nothing else: it is not a byte of any UTF-8 text, and
//! every other byte of a sample line or a sort key comes from UTF-8 names and values or
//! ASCII numbers (the sort key's count prefix is skipped, see
//! [`GroupLabels::expand_key`]).

use crate::exposition::write_label_value;
use crate::grouping::GroupingKey;
use crate::model::LabelPair;

/// The byte that starts a reference to a group label.
const REFERENCE: u8 = 0xFF;
/// A reference's length: the byte and a u16 index.
const REFERENCE_LEN: usize = 3;

/// The labels a group gives each of its series, rendered once.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GroupLabels {
    /// Name and value of each, sorted by name.
    labels: Vec<(Box<str>, Box<str>)>,
    /// Each as a sample line writes it: `name="escaped value"`.
    text: Vec<Box<[u8]>>,
    /// Each value as a sort key writes it (escaped, without its terminator).
    key: Vec<Box<[u8]>>,
}

impl GroupLabels {
    /// The labels of the group with `key`: the key's labels, and `instance=""` when the
    /// key has none (as `apply_grouping_labels` gives every series).
    pub(crate) fn of(key: &GroupingKey) -> Self {
        let mut labels: Vec<(Box<str>, Box<str>)> = key
            .labels()
            .map(|(name, value)| (name.into(), value.into()))
            .collect();
        if key.label("instance").is_none() {
            labels.push(("instance".into(), "".into()));
        }
        labels.sort();
        let text = labels
            .iter()
            .map(|(name, value)| {
                let mut out = Vec::with_capacity(name.len() + value.len() + 3);
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(b"=\"");
                write_label_value(&mut out, value);
                out.push(b'"');
                out.into_boxed_slice()
            })
            .collect();
        let key = labels
            .iter()
            .map(|(_, value)| {
                let mut out = Vec::with_capacity(value.len());
                super::stored::write_key_value(value, &mut out);
                out.into_boxed_slice()
            })
            .collect();
        Self { labels, text, key }
    }

    /// The index of `pair` among the group's labels, when it is one of them (same name
    /// and value) and a reference can name it.
    fn index_of(&self, pair: &LabelPair) -> Option<[u8; 2]> {
        let name = pair.name.as_deref().unwrap_or_default();
        let at = self
            .labels
            .binary_search_by(|(own, _)| (**own).cmp(name))
            .ok()?;
        if *self.labels[at].1 != *pair.value.as_deref().unwrap_or_default() {
            return None;
        }
        u16::try_from(at).ok().map(u16::to_le_bytes)
    }

    /// Writes a reference for `pair` if it is one of the group's labels; returns
    /// whether it did (the caller writes the label itself otherwise).
    pub(crate) fn write_reference(&self, pair: &LabelPair, out: &mut Vec<u8>) -> bool {
        let Some(index) = self.index_of(pair) else {
            return false;
        };
        out.push(REFERENCE);
        out.extend_from_slice(&index);
        true
    }

    /// Appends sample lines written with references, each replaced by its label.
    pub(crate) fn expand_text(&self, lines: &[u8], out: &mut Vec<u8>) {
        expand(lines, &self.text, out);
    }

    /// Appends a sort key written with references, each replaced by its value.
    pub(crate) fn expand_key(&self, key: &[u8], out: &mut Vec<u8>) {
        // The count prefix is binary: one byte below 255, else 255 and four more.
        let prefix = match key.first() {
            None => 0,
            Some(&count) if count < u8::MAX => 1,
            Some(_) => 5.min(key.len()),
        };
        out.extend_from_slice(&key[..prefix]);
        expand(&key[prefix..], &self.key, out);
    }
}

fn expand(mut template: &[u8], parts: &[Box<[u8]>], out: &mut Vec<u8>) {
    while let Some(at) = template.iter().position(|&byte| byte == REFERENCE) {
        out.extend_from_slice(&template[..at]);
        let Some(index) = template.get(at + 1..at + REFERENCE_LEN) else {
            // Written only by `write_reference`; a cut reference cannot happen.
            return;
        };
        let index = usize::from(u16::from_le_bytes([index[0], index[1]]));
        if let Some(part) = parts.get(index) {
            out.extend_from_slice(part);
        }
        template = &template[at + REFERENCE_LEN..];
    }
    out.extend_from_slice(template);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str, value: &str) -> LabelPair {
        LabelPair::new(name, value)
    }

    #[test]
    fn references_expand_to_the_labels_they_replace() {
        let key = GroupingKey::from_path("job/a\"b/zone/x%0Ay").expect("valid key");
        let group = GroupLabels::of(&key);
        let cases = [
            ("the job", pair("job", "a\"b"), Some(&b"job=\"a\\\"b\""[..])),
            (
                "a newline escaped",
                pair("zone", "x\ny"),
                Some(b"zone=\"x\\ny\""),
            ),
            (
                "the added empty instance",
                pair("instance", ""),
                Some(b"instance=\"\""),
            ),
            ("another value", pair("zone", "other"), None),
            ("not a group label", pair("path", "x\ny"), None),
        ];
        for (case, label, expected) in cases {
            let mut template = b"m{".to_vec();
            let replaced = group.write_reference(&label, &mut template);
            template.extend_from_slice(b"} 1\n");
            assert_eq!(replaced, expected.is_some(), "case {case}");
            let mut text = Vec::new();
            group.expand_text(&template, &mut text);
            if let Some(expected) = expected {
                let mut want = b"m{".to_vec();
                want.extend_from_slice(expected);
                want.extend_from_slice(b"} 1\n");
                assert_eq!(text, want, "case {case}");
            } else {
                assert_eq!(text, b"m{} 1\n", "case {case}");
            }
        }
    }

    #[test]
    fn key_prefix_is_never_taken_for_a_reference() {
        let group = GroupLabels::of(&GroupingKey::from_path("job/j").expect("valid key"));
        // A count of 255 and more starts with the byte references start with.
        let mut key = vec![u8::MAX, 0, 0, 1, 0];
        group.write_reference(&pair("job", "j"), &mut key);
        key.push(0);
        let mut expanded = Vec::new();
        group.expand_key(&key, &mut expanded);
        assert_eq!(expanded, [u8::MAX, 0, 0, 1, 0, b'j', 0]);
    }
}
