//! Whether each stored family's text gives back its protobuf encoding, checked in
//! batches of bounded size.
//!
//! A family is kept as text and its protobuf parsed back from that text when asked for
//! (see `stored`), unless the text does not give back the very same bytes. Parsing the
//! whole push's text at once to find out held the parse of the push, about ten times
//! the text, all at the same time: with many labels per series that set the peak
//! memory of the push. Here the text is parsed [`BATCH_BYTES`] at a time (several small
//! families in one parse, a large family over several), and each parsed metric is
//! compared, encoded as the family encodes it, with the next bytes of the family's
//! encoding.

use prost::Message as _;

use crate::codec::text;
use crate::model::MetricFamily;

use super::stored::{StoredFamily, METRIC_FIELD};

/// Text parsed at once: large enough that a push of many small families needs few
/// parses, small against what a large push takes anyway.
const BATCH_BYTES: usize = 64 * 1024;

/// For each of `candidates` (a family and its encoding), whether its text gives the
/// encoding back.
pub(crate) fn given_back(candidates: &[(StoredFamily, Vec<u8>)]) -> Vec<bool> {
    let mut check = Check {
        candidates,
        matched: vec![0; candidates.len()],
        ok: vec![true; candidates.len()],
        scratch: Vec::new(),
    };
    let mut batch = Batch::default();
    for (index, (stored, _)) in candidates.iter().enumerate() {
        let lines: Vec<&[u8]> = stored.pieces().map(|(_, lines)| lines).collect();
        if lines.is_empty() {
            // The text format has no family without samples.
            check.ok[index] = false;
            continue;
        }
        let mut start = 0;
        while start < lines.len() {
            let text_start = batch.text.len();
            stored.write_header(&mut batch.text);
            let mut end = start;
            while end < lines.len() && (end == start || batch.text.len() < BATCH_BYTES) {
                stored.group().expand_text(lines[end], &mut batch.text);
                end += 1;
            }
            batch.units.push(Unit {
                index,
                first: start == 0,
                count: end - start,
                last: end == lines.len(),
                text: text_start..batch.text.len(),
            });
            start = end;
            if batch.text.len() >= BATCH_BYTES {
                check.run(&batch);
                batch = Batch::default();
            }
        }
    }
    check.run(&batch);
    check.ok
}

/// Families' texts parsed together.
#[derive(Default)]
struct Batch {
    text: Vec<u8>,
    units: Vec<Unit>,
}

/// The part of one family in a batch: its header and some of its metrics' lines.
struct Unit {
    /// The family's index in the candidates.
    index: usize,
    /// Whether the unit starts with the family's first metric.
    first: bool,
    /// How many metrics it has.
    count: usize,
    /// Whether it ends with the family's last metric.
    last: bool,
    /// Where its text is in the batch's.
    text: std::ops::Range<usize>,
}

struct Check<'a> {
    candidates: &'a [(StoredFamily, Vec<u8>)],
    /// Bytes of each family's encoding matched so far.
    matched: Vec<usize>,
    /// Whether each family still matches.
    ok: Vec<bool>,
    scratch: Vec<u8>,
}

impl Check<'_> {
    fn run(&mut self, batch: &Batch) {
        if batch.units.is_empty() {
            return;
        }
        // Each unit starts with its own `# TYPE` line, so a joint parse that gives
        // back one family per unit, each matching, is each unit's parse; a line can
        // only land in another family by name, which would show as a difference.
        match text::parse(&batch.text) {
            Ok(parsed) if parsed.len() == batch.units.len() => {
                for (unit, family) in batch.units.iter().zip(parsed) {
                    self.unit(unit, family);
                }
            }
            _ => {
                for unit in &batch.units {
                    match text::parse(&batch.text[unit.text.clone()]) {
                        Ok(mut parsed) if parsed.len() == 1 => {
                            let family = parsed.pop().unwrap_or_default();
                            self.unit(unit, family);
                        }
                        _ => self.ok[unit.index] = false,
                    }
                }
            }
        }
    }

    /// Compares the parsed `family` of `unit` with the next bytes of its encoding.
    fn unit(&mut self, unit: &Unit, mut family: MetricFamily) {
        let index = unit.index;
        if !self.ok[index] {
            return;
        }
        let encoded = self.candidates[index].1.as_slice();
        let metrics = std::mem::take(&mut family.metric);
        // name, help and type come first in the encoding, then the metrics, then the
        // unit (which text cannot carry: a family with one keeps bytes unmatched).
        let head = family.encode_to_vec();
        if metrics.len() != unit.count || !encoded.starts_with(&head) {
            self.ok[index] = false;
            return;
        }
        if unit.first {
            self.matched[index] = head.len();
        }
        let mut at = self.matched[index];
        for metric in &metrics {
            self.scratch.clear();
            prost::encoding::message::encode(METRIC_FIELD, metric, &mut self.scratch);
            if encoded.get(at..at + self.scratch.len()) != Some(self.scratch.as_slice()) {
                self.ok[index] = false;
                return;
            }
            at += self.scratch.len();
        }
        self.matched[index] = at;
        if unit.last && at != encoded.len() {
            self.ok[index] = false;
        }
    }
}
