//! The parser cases of the spec (38 bodies with the real pushgateway's verdicts) and the
//! extra answers recorded from the real binary, shared by the parser and API tests.

use std::collections::HashMap;

pub const CASES: &str = include_str!("../data/parser-cases.json");
pub const VERDICTS: &str = include_str!("../data/parser-verdicts.tsv");
pub const EXTRA: &str = include_str!("../data/parser-extra-cases.json");

pub fn cases() -> Vec<(String, String)> {
    serde_json::from_str(CASES).expect("parser-cases.json is an array of [name, body]")
}

pub fn verdicts() -> HashMap<String, (u16, String)> {
    VERDICTS
        .lines()
        .filter(|line| !line.is_empty())
        .map(|line| {
            let mut fields = line.splitn(3, '\t');
            let name = fields.next().expect("a name column").to_owned();
            let status = fields
                .next()
                .expect("a status column")
                .parse()
                .expect("status is a number");
            let text = fields.next().unwrap_or_default().to_owned();
            (name, (status, text))
        })
        .collect()
}
