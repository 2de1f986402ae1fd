//! The host's packet filter as rules with their hooks and packet counters, read from
//! `iptables-save -c` (nft and legacy) and `nft list ruleset`.
//!
//! A netfilter drop only says "netfilter"; which rule dropped it is told by the counters
//! that moved during the window, and whether that matters by the hook the rule runs in
//! (a FORWARD drop loses traffic on its way through, an INPUT drop of a scan is the
//! host's own policy). So every rule keeps the base chains it is reachable from, its
//! text as the tool prints it, its comment and its counter. Parsing is pure and
//! table-tested; running the tools is left to [`super::host`].

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

/// Where in the stack a chain runs (its base chain's hook).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
    /// netdev ingress/egress and anything newer.
    Other,
}

impl Hook {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().as_str() {
            "prerouting" => Hook::Prerouting,
            "input" => Hook::Input,
            "forward" => Hook::Forward,
            "output" => Hook::Output,
            "postrouting" => Hook::Postrouting,
            "ingress" | "egress" => Hook::Other,
            _ => return None,
        })
    }

    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Hook::Prerouting => "PREROUTING",
            Hook::Input => "INPUT",
            Hook::Forward => "FORWARD",
            Hook::Output => "OUTPUT",
            Hook::Postrouting => "POSTROUTING",
            Hook::Other => "other",
        }
    }
}

/// One rule, or the policy of a base chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rule {
    /// `iptables-nft`, `iptables-legacy` or `nft`.
    pub tool: String,
    /// `filter`, `nat` for iptables; `inet dg` (family and name) for nft.
    pub table: String,
    pub chain: String,
    /// How many equal rules (same text) come before it in its chain, so that duplicates
    /// keep apart; unlike a position, it does not shift when other rules are inserted
    /// during the window (dockerd adding a container's rules), which would otherwise
    /// pair a rule with another rule's counter.
    pub occurrence: usize,
    /// The base chains' hooks this rule is reachable from.
    pub hooks: Vec<Hook>,
    /// As the tool prints it: `-A FORWARD ... -j DROP`, `-P FORWARD DROP`, or the nft
    /// statement without its counter values.
    pub text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// Packets the rule matched since it was made; `None` without a counter (nft rules
    /// without `counter`, nft chain policies).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packets: Option<u64>,
    pub policy: bool,
    /// Chains this rule jumps or goes to (for iptables also its built-in target,
    /// `DROP`, `ACCEPT`, ...).
    #[serde(skip)]
    pub jumps: Vec<String>,
}

impl Rule {
    /// Whether a packet this rule matches is dropped (DROP, REJECT, a drop policy).
    #[must_use]
    pub fn drops(&self) -> bool {
        if self.policy {
            // `policy drop;` (nft) or `-P FORWARD DROP` (iptables).
            return self.text.contains("policy drop") || self.text.ends_with(" DROP");
        }
        if self.tool == "nft" {
            let words: Vec<&str> = statement(&self.text).split_whitespace().collect();
            words.last() == Some(&"drop") || words.contains(&"reject")
        } else {
            // The target, not text inside a comment.
            self.jumps.iter().any(|t| t == "DROP" || t == "REJECT")
        }
    }

    /// Where it is: tool, table, chain and, when there is one, the comment.
    #[must_use]
    pub fn place(&self) -> String {
        let comment = self
            .comment
            .as_ref()
            .map_or(String::new(), |c| format!(", comment \"{c}\""));
        format!(
            "{} table {} chain {}{comment}",
            self.tool, self.table, self.chain
        )
    }

    /// The key that finds the same rule in another reading of the ruleset.
    fn identity(&self) -> (&str, &str, &str, usize, &str) {
        (
            &self.tool,
            &self.table,
            &self.chain,
            self.occurrence,
            &self.text,
        )
    }

    /// Packets matched between `earlier` and this reading; `None` without counters.
    #[must_use]
    pub fn packets_since(&self, earlier: &[Rule]) -> Option<u64> {
        let now = self.packets?;
        // A table that the earlier reading did not see (it failed, or the table is new)
        // gives no baseline: its lifetime counts are not this window's.
        if !earlier
            .iter()
            .any(|r| r.tool == self.tool && r.table == self.table)
        {
            return None;
        }
        // A rule added during the window counts from zero.
        let was = earlier
            .iter()
            .find(|r| r.identity() == self.identity())
            .and_then(|r| r.packets)
            .unwrap_or(0);
        Some(now.saturating_sub(was))
    }

    /// `-j`/`-g`/`jump`/`goto` argument of `words`, when there is one.
    fn jump_targets(words: &[&str], keywords: &[&str]) -> Vec<String> {
        words
            .windows(2)
            .filter(|w| keywords.contains(&w[0]))
            .map(|w| w[1].trim_end_matches([',', ';', '}']).to_owned())
            .collect()
    }
}

/// An nft rule's statement without the comment.
fn statement(text: &str) -> &str {
    text.split(" comment \"").next().unwrap_or(text)
}

/// Numbers rules that are equal in text within one chain (see [`Rule::occurrence`]).
fn number_duplicates(rules: &mut [Rule]) {
    let mut seen: BTreeMap<(String, String, String, String), usize> = BTreeMap::new();
    for rule in rules {
        let key = (
            rule.tool.clone(),
            rule.table.clone(),
            rule.chain.clone(),
            rule.text.clone(),
        );
        let count = seen.entry(key).or_default();
        rule.occurrence = *count;
        *count += 1;
    }
}

/// Fills every rule's `hooks` from its chain's reachability from base chains within
/// its table (`base` maps (table, chain) to the chain's own hook).
fn resolve_hooks(rules: &mut [Rule], base: &BTreeMap<(String, String), Hook>) {
    let mut reach: BTreeMap<(String, String), BTreeSet<Hook>> = base
        .iter()
        .map(|(k, h)| (k.clone(), BTreeSet::from([*h])))
        .collect();
    // Jump graphs are small; propagate until nothing changes (bounded by the number
    // of chains, since each round adds at least one hook somewhere or stops).
    for _ in 0..=rules.len() {
        let mut changed = false;
        for rule in rules.iter() {
            let from = reach
                .get(&(rule.table.clone(), rule.chain.clone()))
                .cloned()
                .unwrap_or_default();
            for target in &rule.jumps {
                let entry = reach
                    .entry((rule.table.clone(), target.clone()))
                    .or_default();
                for hook in &from {
                    changed |= entry.insert(*hook);
                }
            }
        }
        if !changed {
            break;
        }
    }
    for rule in rules.iter_mut() {
        rule.hooks = reach
            .get(&(rule.table.clone(), rule.chain.clone()))
            .map(|h| h.iter().copied().collect())
            .unwrap_or_default();
    }
}

/// The argument of `--comment` (quoted or a single word) in an iptables rule.
fn iptables_comment(line: &str) -> Option<String> {
    let rest = line.split_once("--comment ")?.1;
    if let Some(quoted) = rest.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = quoted.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => out.extend(chars.next()),
                '"' => break,
                c => out.push(c),
            }
        }
        Some(out)
    } else {
        rest.split_whitespace().next().map(str::to_owned)
    }
}

/// `[packets:bytes]` at the start of a line of `iptables-save -c`, and the rest.
fn counters(text: &str) -> (Option<u64>, &str) {
    if let Some(rest) = text.strip_prefix('[') {
        if let Some((numbers, rule)) = rest.split_once(']') {
            let packets = numbers.split(':').next().and_then(|p| p.parse().ok());
            return (packets, rule.trim_start());
        }
    }
    (None, text)
}

/// Every rule and base-chain policy of `iptables-save -c` output, with the tables seen.
#[must_use]
pub fn parse_iptables_save(tool: &str, text: &str) -> (Vec<Rule>, Vec<String>) {
    let mut rules = Vec::new();
    let mut tables = Vec::new();
    let mut base = BTreeMap::new();
    let mut table = String::new();
    // Policies are listed before the rules but apply after them: kept apart and put
    // at the end of their table.
    let mut policies: Vec<Rule> = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('*') {
            rules.append(&mut policies);
            name.clone_into(&mut table);
            tables.push(table.clone());
        } else if let Some(decl) = line.strip_prefix(':') {
            // `:FORWARD DROP [12:720]`; user chains have the policy `-`.
            let mut words = decl.split_whitespace();
            let (Some(chain), Some(policy)) = (words.next(), words.next()) else {
                continue;
            };
            if policy == "-" {
                continue;
            }
            if let Some(hook) = Hook::from_name(chain) {
                base.insert((table.clone(), chain.to_owned()), hook);
            }
            let packets = words.next().and_then(|c| counters(c).0);
            policies.push(Rule {
                tool: tool.into(),
                table: table.clone(),
                chain: chain.into(),
                occurrence: 0,
                hooks: Vec::new(),
                text: format!("-P {chain} {policy}"),
                comment: None,
                packets,
                policy: true,
                jumps: Vec::new(),
            });
        } else if line.starts_with('[') || line.starts_with("-A ") {
            let (packets, rule) = counters(line);
            let words: Vec<&str> = rule.split_whitespace().collect();
            let Some(chain) = words.get(1) else { continue };
            rules.push(Rule {
                tool: tool.into(),
                table: table.clone(),
                chain: (*chain).to_owned(),
                occurrence: 0,
                hooks: Vec::new(),
                text: rule.to_owned(),
                comment: iptables_comment(rule),
                packets,
                policy: false,
                jumps: Rule::jump_targets(&words, &["-j", "-g"]),
            });
        }
    }
    rules.append(&mut policies);
    number_duplicates(&mut rules);
    resolve_hooks(&mut rules, &base);
    (rules, tables)
}

/// `counter packets N bytes M` in an nft rule: N, and the text with `counter` alone.
fn nft_counter(line: &str) -> (Option<u64>, String) {
    let words: Vec<&str> = line.split_whitespace().collect();
    let Some(at) = words
        .windows(2)
        .position(|w| w[0] == "counter" && w[1] == "packets")
    else {
        return (None, words.join(" "));
    };
    let packets = words.get(at + 2).and_then(|p| p.parse().ok());
    let mut kept: Vec<&str> = words[..=at].to_vec();
    kept.extend(words.iter().skip(at + 5));
    (packets, kept.join(" "))
}

/// The comment of an nft rule: `comment "..."` at its end.
fn nft_comment(line: &str) -> Option<String> {
    let rest = line.rsplit_once(" comment \"")?.1;
    Some(rest.strip_suffix('"').unwrap_or(rest).to_owned())
}

/// Braces that open and close on `line`, outside quoted strings.
fn brace_balance(line: &str) -> i32 {
    let mut quoted = false;
    let mut balance = 0;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            '{' if !quoted => balance += 1,
            '}' if !quoted => balance -= 1,
            _ => {}
        }
    }
    balance
}

/// Every rule and base-chain policy of `nft list ruleset`, except the tables in `skip`
/// (`ip filter`: read with the iptables tool that made them, which prints its own
/// syntax, comments and policy counters).
#[must_use]
pub fn parse_nft_ruleset(text: &str, skip: &[String]) -> Vec<Rule> {
    let mut rules = Vec::new();
    let mut base = BTreeMap::new();
    let mut table = String::new();
    let mut chain: Option<String> = None;
    let mut depth = 0;
    let mut policy: Option<Rule> = None;
    for line in text.lines().map(str::trim) {
        let balance = brace_balance(line);
        match depth {
            0 => {
                if let Some(name) = line.strip_prefix("table ") {
                    name.trim_end_matches('{').trim().clone_into(&mut table);
                }
            }
            1 => {
                chain = line
                    .strip_prefix("chain ")
                    .map(|c| c.trim_end_matches('{').trim().to_owned());
            }
            2 if chain.is_some() && !skip.contains(&table) => {
                let name = chain.clone().unwrap_or_default();
                if line.starts_with("type ") && line.contains(" hook ") {
                    let words: Vec<&str> = line.split_whitespace().collect();
                    let hook = words
                        .windows(2)
                        .find(|w| w[0] == "hook")
                        .and_then(|w| Hook::from_name(w[1]));
                    if let Some(hook) = hook {
                        base.insert((table.clone(), name.clone()), hook);
                    }
                    if line.contains("policy ") {
                        policy = Some(Rule {
                            tool: "nft".into(),
                            table: table.clone(),
                            chain: name,
                            occurrence: 0,
                            hooks: Vec::new(),
                            text: line.to_owned(),
                            comment: None,
                            packets: None,
                            policy: true,
                            jumps: Vec::new(),
                        });
                    }
                } else if balance == 0 && !line.is_empty() && line != "}" {
                    let (packets, text) = nft_counter(line);
                    let words: Vec<&str> = statement(&text).split_whitespace().collect();
                    rules.push(Rule {
                        tool: "nft".into(),
                        table: table.clone(),
                        chain: name,
                        occurrence: 0,
                        hooks: Vec::new(),
                        jumps: Rule::jump_targets(&words, &["jump", "goto"]),
                        comment: nft_comment(&text),
                        text,
                        packets,
                        policy: false,
                    });
                }
            }
            _ => {}
        }
        depth += balance;
        if depth < 2 {
            rules.extend(policy.take());
            if depth < 1 {
                chain = None;
            }
        }
    }
    number_duplicates(&mut rules);
    resolve_hooks(&mut rules, &base);
    rules
}

/// Firewall managers whose chains or tables are in `rules`: `ufw` (its `ufw-*` and
/// `ufw6-*` chains) and `firewalld` (its `firewalld` nft tables), so that a drop in
/// their chains, or the FORWARD policy they set, is named after them.
#[must_use]
pub fn managers(rules: &[Rule]) -> Vec<String> {
    let ufw = |name: &str| name.starts_with("ufw-") || name.starts_with("ufw6-");
    let mut out = Vec::new();
    if rules
        .iter()
        .any(|r| ufw(&r.chain) || r.jumps.iter().any(|j| ufw(j)))
    {
        out.push("ufw".to_owned());
    }
    if rules
        .iter()
        .any(|r| r.tool == "nft" && r.table.ends_with(" firewalld"))
    {
        out.push("firewalld".to_owned());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// chain, text, hooks, counter, comment
    type DropRow<'a> = (&'a str, &'a str, Vec<Hook>, Option<u64>, Option<&'a str>);

    const SAVE: &str = "# Generated by iptables-save v1.8.9 (nf_tables)\n\
*filter\n\
:INPUT ACCEPT [120:9000]\n\
:FORWARD DROP [7:420]\n\
:OUTPUT ACCEPT [0:0]\n\
:DOCKER-USER - [0:0]\n\
:DOCKER-ISOLATION-STAGE-1 - [0:0]\n\
[3:180] -A INPUT -p tcp -m tcp --dport 22 -m comment --comment \"drop ssh scans\" -j DROP\n\
[9:540] -A INPUT -m comment --comment \"not -j DROP: a comment\" -j ACCEPT\n\
[50:3000] -A FORWARD -j DOCKER-USER\n\
[50:3000] -A FORWARD -j DOCKER-ISOLATION-STAGE-1\n\
[40:2400] -A FORWARD -o br0 -j ACCEPT\n\
[0:0] -A DOCKER-USER -s 10.9.9.9/32 -m comment --comment blocked -j DROP\n\
[50:3000] -A DOCKER-USER -j RETURN\n\
[0:0] -A DOCKER-ISOLATION-STAGE-1 -i br0 ! -o br0 -j REJECT --reject-with icmp-port-unreachable\n\
COMMIT\n\
*nat\n\
:PREROUTING ACCEPT [0:0]\n\
:OUTPUT ACCEPT [0:0]\n\
:DOCKER - [0:0]\n\
[5:300] -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER\n\
[1:60] -A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER\n\
[5:300] -A DOCKER ! -i br0 -p tcp -m tcp --dport 9091 -j DNAT --to-destination 172.31.231.2:80\n\
COMMIT\n";

    /// The dropping rules of `rules` as comparable rows.
    fn drop_rows(rules: &[Rule]) -> Vec<DropRow<'_>> {
        rules
            .iter()
            .filter(|r| r.drops())
            .map(|r| {
                (
                    r.chain.as_str(),
                    r.text.as_str(),
                    r.hooks.clone(),
                    r.packets,
                    r.comment.as_deref(),
                )
            })
            .collect()
    }

    #[test]
    fn iptables_save_rules_hooks_counters_comments() {
        let (rules, tables) = parse_iptables_save("iptables-nft", SAVE);
        assert_eq!(tables, vec!["filter", "nat"]);
        let drops = drop_rows(&rules);
        assert_eq!(
            drops,
            vec![
                (
                    "INPUT",
                    "-A INPUT -p tcp -m tcp --dport 22 -m comment --comment \"drop ssh scans\" -j DROP",
                    vec![Hook::Input],
                    Some(3),
                    Some("drop ssh scans")
                ),
                (
                    "DOCKER-USER",
                    "-A DOCKER-USER -s 10.9.9.9/32 -m comment --comment blocked -j DROP",
                    vec![Hook::Forward],
                    Some(0),
                    Some("blocked")
                ),
                (
                    "DOCKER-ISOLATION-STAGE-1",
                    "-A DOCKER-ISOLATION-STAGE-1 -i br0 ! -o br0 -j REJECT --reject-with icmp-port-unreachable",
                    vec![Hook::Forward],
                    Some(0),
                    None
                ),
                ("FORWARD", "-P FORWARD DROP", vec![Hook::Forward], Some(7), None),
            ]
        );
        let dnat = rules
            .iter()
            .find(|r| r.text.contains("DNAT"))
            .expect("the DNAT rule");
        assert_eq!(
            dnat.hooks,
            vec![Hook::Prerouting, Hook::Output],
            "DOCKER is jumped to from both"
        );
        assert!(!rules
            .iter()
            .any(|r| r.text == "-P INPUT ACCEPT" && r.drops()));
    }

    const NFT: &str = "table ip filter {\n\tchain FORWARD {\n\t\ttype filter hook forward priority filter; policy drop;\n\t\tcounter packets 9 bytes 540 jump DOCKER-USER\n\t}\n}\n\
table inet dg {\n\
\tset blocked {\n\t\ttype ipv4_addr\n\t\telements = { 10.0.0.1,\n\t\t\t     10.0.0.2 }\n\t}\n\
\tchain forward {\n\t\ttype filter hook forward priority filter; policy drop;\n\t\tct state established,related accept\n\t\tjump checks\n\t\tiifname \"br0\" accept\n\t}\n\
\tchain checks {\n\t\ttcp dport { 22, 23 } counter packets 4 bytes 240 drop comment \"no {telnet}\"\n\t\tip saddr @blocked drop\n\t}\n\
\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n\t\tudp dport 9 reject with icmp port-unreachable\n\t}\n\
}\n";

    #[test]
    fn nft_ruleset_rules_hooks_counters_comments() {
        let rules = parse_nft_ruleset(NFT, &["ip filter".to_owned()]);
        let drops = drop_rows(&rules);
        assert_eq!(
            drops,
            vec![
                (
                    "forward",
                    "type filter hook forward priority filter; policy drop;",
                    vec![Hook::Forward],
                    None,
                    None
                ),
                (
                    "checks",
                    "tcp dport { 22, 23 } counter drop comment \"no {telnet}\"",
                    vec![Hook::Forward],
                    Some(4),
                    Some("no {telnet}")
                ),
                (
                    "checks",
                    "ip saddr @blocked drop",
                    vec![Hook::Forward],
                    None,
                    None
                ),
                (
                    "input",
                    "udp dport 9 reject with icmp port-unreachable",
                    vec![Hook::Input],
                    None,
                    None
                ),
            ],
            "the skipped iptables-nft table and the set's elements are no rules"
        );
        assert!(rules.iter().all(|r| r.table == "inet dg"));
    }

    #[test]
    fn counters_since_an_earlier_reading() {
        let (before, _) = parse_iptables_save("iptables-nft", SAVE);
        let (after, _) = parse_iptables_save(
            "iptables-nft",
            &SAVE.replace(":FORWARD DROP [7:420]", ":FORWARD DROP [10:600]"),
        );
        let policy = after
            .iter()
            .find(|r| r.text == "-P FORWARD DROP")
            .expect("policy");
        assert_eq!(policy.packets_since(&before), Some(3));
        let ssh = after
            .iter()
            .find(|r| r.chain == "INPUT" && !r.policy)
            .expect("rule");
        assert_eq!(ssh.packets_since(&before), Some(0));
        // dockerd inserts a rule at the top of DOCKER-USER during the window: the rules
        // below keep their own counters.
        let (inserted, _) = parse_iptables_save(
            "iptables-nft",
            &SAVE.replace(
                "[0:0] -A DOCKER-USER -s 10.9.9.9/32",
                "[0:0] -A DOCKER-USER -s 10.1.1.1/32 -j ACCEPT\n[0:0] -A DOCKER-USER -s 10.9.9.9/32",
            ),
        );
        let blocked = inserted
            .iter()
            .find(|r| r.comment.as_deref() == Some("blocked"))
            .expect("rule");
        assert_eq!(blocked.packets_since(&before), Some(0));
        // Two equal rules keep apart.
        let twice = "*filter\n:FORWARD ACCEPT [0:0]\n[1:60] -A FORWARD -j DROP\n[5:300] -A FORWARD -j DROP\nCOMMIT\n";
        let (earlier, _) = parse_iptables_save("iptables-nft", twice);
        let (later, _) = parse_iptables_save("iptables-nft", &twice.replace("[5:300]", "[8:480]"));
        let deltas: Vec<Option<u64>> = later.iter().map(|r| r.packets_since(&earlier)).collect();
        assert_eq!(deltas, vec![Some(0), Some(3), Some(0)]);
        // No earlier reading of the table: no baseline, no count.
        assert_eq!(later[1].packets_since(&[]), None);
    }

    #[test]
    fn firewall_managers_by_their_chains_and_tables() {
        let ufw = "*filter\n:FORWARD DROP [0:0]\n:ufw-before-forward - [0:0]\n\
                   [0:0] -A FORWARD -j ufw-before-forward\nCOMMIT\n";
        let firewalld = "table inet firewalld {\n\tchain filter_FORWARD {\n\t\ttype filter hook forward priority filter + 10; policy accept;\n\t\tjump filter_FWD_public\n\t}\n}\n";
        let cases = [
            (
                "ufw",
                parse_iptables_save("iptables-nft", ufw).0,
                vec!["ufw"],
            ),
            (
                "firewalld",
                parse_nft_ruleset(firewalld, &[]),
                vec!["firewalld"],
            ),
            (
                "Docker alone",
                parse_iptables_save("iptables-nft", SAVE).0,
                vec![],
            ),
        ];
        for (name, rules, want) in cases {
            assert_eq!(managers(&rules), want, "case {name}");
        }
    }
}
