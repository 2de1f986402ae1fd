//! The status page at `<route-prefix>/`: the pushed groups, like the pushgateway's UI,
//! and whatever sections the process's [`MetricSource`] adds (in `dropgate run`: the
//! drop summary, the forwarding state and the current findings).
//!
//! Sources hand over structured data ([`StatusSection`]: a title, notes and a table of
//! plain strings), never markup, so every byte of text on the page is escaped here, in
//! one place. The page is one server-rendered HTML document with inline CSS: no
//! scripts, no external assets, readable with JavaScript off and in a text browser.
//!
//! [`MetricSource`]: crate::source::MetricSource

use std::time::{Duration, SystemTime};

use crate::api::rfc3339_nano;
use crate::model::{MetricFamily, MetricType};
use crate::store::{
    go_type_name, GroupSnapshot, StoredFamily, PUSH_FAILURE_TIME_NAME, PUSH_TIME_NAME,
};

/// How a row of a section stands out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Tone {
    /// Nothing special.
    #[default]
    Normal,
    /// Fine, and worth saying so (e.g. forwarding on where it is needed).
    Good,
    /// Something that would break traffic if it were needed.
    Warning,
    /// Something that is breaking traffic now.
    Critical,
}

impl Tone {
    fn class(self) -> &'static str {
        match self {
            Tone::Normal => "",
            Tone::Good => " class=\"good\"",
            Tone::Warning => " class=\"warning\"",
            Tone::Critical => " class=\"critical\"",
        }
    }
}

/// One column of a section's table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusColumn {
    /// The header.
    pub title: String,
    /// Numbers are right-aligned.
    pub numeric: bool,
}

impl StatusColumn {
    /// A column of text.
    #[must_use]
    pub fn text(title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            numeric: false,
        }
    }

    /// A column of numbers.
    #[must_use]
    pub fn number(title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            numeric: true,
        }
    }
}

/// One cell: one or more lines of plain text (shown one below the other).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatusCell {
    /// The lines; none for an empty cell.
    pub lines: Vec<String>,
}

impl From<&str> for StatusCell {
    fn from(line: &str) -> Self {
        Self {
            lines: vec![line.to_owned()],
        }
    }
}

impl From<String> for StatusCell {
    fn from(line: String) -> Self {
        Self { lines: vec![line] }
    }
}

impl From<Vec<String>> for StatusCell {
    fn from(lines: Vec<String>) -> Self {
        Self { lines }
    }
}

/// One row of a section's table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatusRow {
    /// How the row stands out.
    pub tone: Tone,
    /// One cell per column (missing cells are left empty, extra ones are dropped).
    pub cells: Vec<StatusCell>,
}

impl StatusRow {
    /// A row of `cells` with `tone`.
    #[must_use]
    pub fn new(tone: Tone, cells: Vec<StatusCell>) -> Self {
        Self { tone, cells }
    }
}

/// A section of the status page contributed by a [`MetricSource`]: plain strings only,
/// escaped by the page.
///
/// [`MetricSource`]: crate::source::MetricSource
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatusSection {
    /// The heading.
    pub title: String,
    /// Paragraphs under the heading (what the table shows, since when).
    pub notes: Vec<String>,
    /// The table's columns.
    pub columns: Vec<StatusColumn>,
    /// The table's rows, in the order given.
    pub rows: Vec<StatusRow>,
    /// Said instead of the table when there are no rows.
    pub empty: String,
}

/// Everything one rendering of the page shows.
pub struct StatusPage<'a> {
    /// The time the page is rendered at; ages are relative to it.
    pub now: SystemTime,
    /// When the server started.
    pub started: SystemTime,
    /// The normalized route prefix (`""` or `/something`), for links.
    pub route_prefix: &'a str,
    /// The pushed groups, in grouping-key order.
    pub groups: &'a [GroupSnapshot],
    /// The source's sections, shown above the groups.
    pub sections: &'a [StatusSection],
}

/// Groups up to this many are shown expanded; above it, collapsed to their headers.
const EXPANDED_GROUPS: usize = 50;

const STYLE: &str = "\
:root{color-scheme:light;--fg:#1d2430;--muted:#5d6878;--line:#d8dde5;--bg:#f5f7fa;\
--crit:#b42318;--crit-bg:#fdecea;--warn:#9a6700;--warn-bg:#fff6dd;--good:#1a7f37;--good-bg:#e9f7ee}\
*{box-sizing:border-box}\
body{margin:0;font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;color:var(--fg);background:var(--bg)}\
header{background:#1d2430;color:#fff;padding:14px 24px;display:flex;flex-wrap:wrap;gap:6px 24px;align-items:baseline}\
header h1{margin:0;font-size:20px;letter-spacing:.02em}\
header span{color:#c5ccd8}\
header a{color:#9cc3ff}\
nav{padding:8px 24px;background:#e8ecf2;border-bottom:1px solid var(--line)}\
nav a{margin-right:18px;color:#1f5fbf;text-decoration:none}\
main{padding:8px 24px 40px;max-width:1400px}\
h2{font-size:17px;margin:26px 0 6px;padding-bottom:4px;border-bottom:2px solid var(--line)}\
h2 small{font-weight:normal;color:var(--muted)}\
p.note{margin:4px 0;color:var(--muted)}\
p.empty{margin:8px 0;padding:10px 12px;background:#fff;border:1px solid var(--line);border-radius:6px}\
table{border-collapse:collapse;background:#fff;margin:8px 0;width:100%;border:1px solid var(--line)}\
th,td{text-align:left;vertical-align:top;padding:5px 10px;border-bottom:1px solid var(--line)}\
th{background:#eef1f5;font-weight:600;white-space:nowrap}\
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}\
td div+div{margin-top:3px}\
tr.critical td{background:var(--crit-bg)}tr.critical td:first-child{border-left:4px solid var(--crit);color:var(--crit);font-weight:600}\
tr.warning td{background:var(--warn-bg)}tr.warning td:first-child{border-left:4px solid var(--warn);color:var(--warn);font-weight:600}\
tr.good td:first-child{border-left:4px solid var(--good)}\
code,.mono{font-family:ui-monospace,'DejaVu Sans Mono',Menlo,monospace;font-size:13px}\
details.group{background:#fff;border:1px solid var(--line);border-radius:6px;margin:10px 0;padding:0 12px}\
details.group>summary{cursor:pointer;padding:9px 0}\
details.group table{border-left:0;border-right:0;table-layout:fixed}\
table.families th:nth-child(1){width:34%}table.families th:nth-child(2){width:13%}table.families th:nth-child(3){width:8%}\
td.mono{overflow-wrap:anywhere}\
.labels span{display:inline-block;margin:1px 6px 1px 0;padding:1px 7px;border-radius:10px;background:#e4ebf7;font-family:ui-monospace,'DejaVu Sans Mono',monospace;font-size:12.5px}\
.meta{color:var(--muted);margin-left:4px}\
.ok{color:var(--good);font-weight:600}.failed{color:var(--crit);font-weight:600}\
";

/// Renders the whole page.
#[must_use]
pub fn render(page: &StatusPage<'_>) -> String {
    let mut html = Html::default();
    html.raw("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    html.raw("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    html.raw("<title>dropgate</title>\n<style>");
    html.raw(STYLE);
    html.raw("</style>\n</head>\n<body>\n<header><h1>dropgate</h1><span>version ");
    html.text(env!("CARGO_PKG_VERSION"));
    html.raw("</span><span>up ");
    html.text(&age(since(page.started, page.now)));
    html.raw(" (since ");
    html.time(page.started);
    html.raw(")</span><span>page rendered ");
    html.time(page.now);
    html.raw("</span></header>\n<nav>");
    for (index, section) in page.sections.iter().enumerate() {
        html.raw("<a href=\"#section-");
        html.text(&index.to_string());
        html.raw("\">");
        html.text(&section.title);
        html.raw("</a>");
    }
    html.raw("<a href=\"#groups\">Pushed groups</a><a href=\"");
    html.text(page.route_prefix);
    html.raw("/metrics\">/metrics</a><a href=\"");
    html.text(page.route_prefix);
    html.raw("/api/v1/metrics\">/api/v1/metrics</a></nav>\n<main>\n");
    for (index, section) in page.sections.iter().enumerate() {
        render_section(&mut html, index, section);
    }
    render_groups(&mut html, page);
    html.raw("</main>\n</body>\n</html>\n");
    html.0
}

fn render_section(html: &mut Html, index: usize, section: &StatusSection) {
    html.raw("<section id=\"section-");
    html.text(&index.to_string());
    html.raw("\">\n<h2>");
    html.text(&section.title);
    html.raw("</h2>\n");
    for note in &section.notes {
        html.raw("<p class=\"note\">");
        html.text(note);
        html.raw("</p>\n");
    }
    if section.rows.is_empty() {
        html.raw("<p class=\"empty\">");
        html.text(&section.empty);
        html.raw("</p>\n");
    } else {
        html.raw("<table>\n<thead><tr>");
        for column in &section.columns {
            html.raw(if column.numeric {
                "<th class=\"num\">"
            } else {
                "<th>"
            });
            html.text(&column.title);
            html.raw("</th>");
        }
        html.raw("</tr></thead>\n<tbody>\n");
        for row in &section.rows {
            html.raw("<tr");
            html.raw(row.tone.class());
            html.raw(">");
            for (index, column) in section.columns.iter().enumerate() {
                html.raw(if column.numeric {
                    "<td class=\"num\">"
                } else {
                    "<td>"
                });
                if let Some(cell) = row.cells.get(index) {
                    render_lines(html, &cell.lines);
                }
                html.raw("</td>");
            }
            html.raw("</tr>\n");
        }
        html.raw("</tbody>\n</table>\n");
    }
    html.raw("</section>\n");
}

fn render_lines(html: &mut Html, lines: &[String]) {
    match lines {
        [] => {}
        [line] => html.text(line),
        lines => {
            for line in lines {
                html.raw("<div>");
                html.text(line);
                html.raw("</div>");
            }
        }
    }
}

fn render_groups(html: &mut Html, page: &StatusPage<'_>) {
    html.raw("<section id=\"groups\">\n<h2>Pushed groups <small>");
    let count = page.groups.len();
    html.text(&format!(
        "{count} group{}",
        if count == 1 { "" } else { "s" }
    ));
    html.raw("</small></h2>\n");
    if page.groups.is_empty() {
        html.raw("<p class=\"empty\">No group has been pushed yet. Push with e.g. <code>curl --data-binary @metrics.txt http://HOST:PORT");
        html.text(page.route_prefix);
        html.raw("/metrics/job/JOB</code>.</p>\n");
    }
    let open = count <= EXPANDED_GROUPS;
    for group in page.groups {
        render_group(html, group, page.now, open);
    }
    html.raw("</section>\n");
}

fn render_group(html: &mut Html, group: &GroupSnapshot, now: SystemTime, open: bool) {
    let families: Vec<MetricFamily> = group
        .families
        .iter()
        .filter(|family| !matches!(family.name(), PUSH_TIME_NAME | PUSH_FAILURE_TIME_NAME))
        .map(StoredFamily::family)
        .collect();
    html.raw(if open {
        "<details class=\"group\" open>\n<summary><span class=\"labels\">"
    } else {
        "<details class=\"group\">\n<summary><span class=\"labels\">"
    });
    for (name, value) in group.key.labels() {
        html.raw("<span>");
        html.text(name);
        html.raw("=\"");
        html.text(value);
        html.raw("\"</span>");
    }
    html.raw("</span><span class=\"meta\">last push ");
    match push_gauge(group, PUSH_TIME_NAME).filter(|at| *at > SystemTime::UNIX_EPOCH) {
        Some(at) => {
            html.time(at);
            html.raw(" (");
            html.text(&age(since(at, now)));
            html.raw(" ago)");
        }
        None => html.raw("never succeeded"),
    }
    html.raw(" · ");
    if group.last_push_successful() {
        html.raw("<span class=\"ok\">succeeded</span>");
    } else {
        html.raw("<span class=\"failed\">failed</span>");
        if let Some(at) = push_gauge(group, PUSH_FAILURE_TIME_NAME) {
            html.raw(" at ");
            html.time(at);
            html.raw(" (");
            html.text(&age(since(at, now)));
            html.raw(" ago)");
        }
    }
    html.raw(" · ");
    let count = families.len();
    html.text(&format!(
        "{count} metric famil{}",
        if count == 1 { "y" } else { "ies" }
    ));
    html.raw("</span></summary>\n");
    if !families.is_empty() {
        html.raw("<table class=\"families\">\n<thead><tr><th>metric family</th><th>type</th><th class=\"num\">series</th><th>help</th></tr></thead>\n<tbody>\n");
        for family in &families {
            html.raw("<tr><td class=\"mono\">");
            html.text(family.name.as_deref().unwrap_or_default());
            html.raw("</td><td>");
            let kind = family
                .r#type
                .and_then(|kind| MetricType::try_from(kind).ok())
                .unwrap_or(MetricType::Untyped);
            html.text(go_type_name(kind));
            html.raw("</td><td class=\"num\">");
            html.text(&family.metric.len().to_string());
            html.raw("</td><td>");
            html.text(family.help.as_deref().unwrap_or_default());
            html.raw("</td></tr>\n");
        }
        html.raw("</tbody>\n</table>\n");
    }
    html.raw("</details>\n");
}

/// The time held by one of the group's push gauges (Unix seconds as a float).
fn push_gauge(group: &GroupSnapshot, name: &str) -> Option<SystemTime> {
    let family = group.families.iter().find(|family| family.name() == name)?;
    let seconds = family.family().metric.first()?.gauge.as_ref()?.value?;
    let since = Duration::try_from_secs_f64(seconds).ok()?;
    // A `Duration` holds more seconds than a `SystemTime` can add: a time no clock
    // gives (only a file or a source could hold one) reads as no time.
    SystemTime::UNIX_EPOCH.checked_add(since)
}

fn since(then: SystemTime, now: SystemTime) -> Duration {
    now.duration_since(then).unwrap_or_default()
}

/// A duration as people read an age: its two largest units (`4m 10s`, `2h 5m`, `3d 4h`).
#[must_use]
pub fn age(duration: Duration) -> String {
    let secs = duration.as_secs();
    let (days, hours, minutes, seconds) =
        (secs / 86_400, secs / 3_600 % 24, secs / 60 % 60, secs % 60);
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{seconds}s"),
        (0, 0, _) => format!("{minutes}m {seconds}s"),
        (0, _, _) => format!("{hours}h {minutes}m"),
        _ => format!("{days}d {hours}h"),
    }
}

/// Text with HTML special characters replaced by entities, for text and attribute values.
#[must_use]
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    escape_into(text, &mut out);
    out
}

fn escape_into(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

/// The page being written. Markup can only come from `&'static str` (so from this
/// file); everything else goes through [`Html::text`], which escapes it.
#[derive(Default)]
struct Html(String);

impl Html {
    fn raw(&mut self, markup: &'static str) {
        self.0.push_str(markup);
    }

    fn text(&mut self, text: &str) {
        escape_into(text, &mut self.0);
    }

    /// A `<time>` element with the RFC 3339 time as both attribute and text.
    fn time(&mut self, at: SystemTime) {
        let stamp = rfc3339_seconds(at);
        self.raw("<time datetime=\"");
        self.text(&stamp);
        self.raw("\">");
        self.text(&stamp);
        self.raw("</time>");
    }
}

/// RFC 3339 in UTC to the second: the page is for people.
fn rfc3339_seconds(at: SystemTime) -> String {
    let whole = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(SystemTime::UNIX_EPOCH, |since| {
            SystemTime::UNIX_EPOCH + Duration::from_secs(since.as_secs())
        });
    rfc3339_nano(whole)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_in_two_units() {
        let cases = [
            ("zero", 0, "0s"),
            ("seconds", 59, "59s"),
            ("a minute", 60, "1m 0s"),
            ("minutes", 250, "4m 10s"),
            ("hours", 7_500, "2h 5m"),
            ("days", 273_600, "3d 4h"),
        ];
        for (name, secs, want) in cases {
            assert_eq!(age(Duration::from_secs(secs)), want, "case {name}");
        }
    }

    #[test]
    fn escapes_every_special_character() {
        let cases = [
            ("plain", "job-1", "job-1"),
            (
                "script",
                "<script>x</script>",
                "&lt;script&gt;x&lt;/script&gt;",
            ),
            ("quotes", "a\"b'c", "a&quot;b&#39;c"),
            ("ampersand first", "&lt;", "&amp;lt;"),
            ("unicode kept", "ü/✓", "ü/✓"),
        ];
        for (name, text, want) in cases {
            assert_eq!(escape(text), want, "case {name}");
        }
    }

    #[test]
    fn sections_escape_titles_notes_and_cells() {
        let section = StatusSection {
            title: "T<1>".into(),
            notes: vec!["n&m".into()],
            columns: vec![StatusColumn::text("c\"1"), StatusColumn::number("n")],
            rows: vec![StatusRow::new(
                Tone::Critical,
                vec![
                    vec!["<b>".to_owned(), "second".to_owned()].into(),
                    "5".into(),
                ],
            )],
            empty: String::new(),
        };
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let html = render(&StatusPage {
            now,
            started: now,
            route_prefix: "",
            groups: &[],
            sections: std::slice::from_ref(&section),
        });
        for want in [
            "<h2>T&lt;1&gt;</h2>",
            "<p class=\"note\">n&amp;m</p>",
            "<th>c&quot;1</th><th class=\"num\">n</th>",
            "<tr class=\"critical\"><td><div>&lt;b&gt;</div><div>second</div></td><td class=\"num\">5</td></tr>",
        ] {
            assert!(html.contains(want), "missing {want:?} in {html}");
        }
        assert!(!html.contains("<b>"), "raw markup from a section: {html}");
    }

    #[test]
    fn an_empty_section_says_so() {
        let section = StatusSection {
            title: "Findings".into(),
            empty: "No problem <found>".into(),
            ..StatusSection::default()
        };
        let now = SystemTime::UNIX_EPOCH;
        let html = render(&StatusPage {
            now,
            started: now,
            route_prefix: "/pg",
            groups: &[],
            sections: std::slice::from_ref(&section),
        });
        assert!(html.contains("<p class=\"empty\">No problem &lt;found&gt;</p>"));
        assert!(!html.contains("<table>"), "no table without rows");
        assert!(
            html.contains("href=\"/pg/metrics\""),
            "links carry the prefix"
        );
    }
}
