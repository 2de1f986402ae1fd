//! Store semantics: a rejected push changes nothing but the failure gauge, and the
//! index follows every write (what a group gives up, another may take).

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use super::*;
use crate::codec::text::parse;
use crate::exposition::{Escaping, Format};
use crate::source::NoSource;

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

fn key(path: &str) -> GroupingKey {
    GroupingKey::from_path(path).expect("valid test path")
}

fn put(store: &MetricStore, path: &str, body: &str) -> Result<(), StoreError> {
    let families = parse(body.as_bytes()).expect("valid test body");
    store.apply(
        WriteCommand::Put {
            key: key(path),
            families,
            ttl: Ttl::Default,
        },
        at(1_000),
    )
}

fn post(store: &MetricStore, path: &str, body: &str) -> Result<(), StoreError> {
    let families = parse(body.as_bytes()).expect("valid test body");
    store.apply(
        WriteCommand::Post {
            key: key(path),
            families,
            ttl: Ttl::Default,
        },
        at(1_000),
    )
}

fn delete(store: &MetricStore, path: &str) {
    store
        .apply(WriteCommand::Delete { key: key(path) }, at(1_000))
        .expect("delete never fails");
}

fn store() -> MetricStore {
    MetricStore::new(ReservedNames::default())
}

#[test]
fn a_rejected_push_changes_only_the_failure_gauge() {
    let store = store();
    put(&store, "job/a", "# TYPE m gauge\nm 1\nother 2\n").expect("first push");
    put(&store, "job/b", "# TYPE m gauge\nm 2\n").expect("second push");
    let before = store.snapshot();
    let version = store.version();

    let rejected = post(&store, "job/b", "# TYPE m counter\nm 3\nnew 1\n");
    assert!(matches!(
        rejected,
        Err(StoreError::Inconsistent(Inconsistency::TypeClash { .. }))
    ));
    let after = store.snapshot();
    assert_eq!(after.len(), before.len());
    for (old, new) in before.iter().zip(&after) {
        assert_eq!(old.key, new.key);
        for (old_family, new_family) in old.families.iter().zip(&new.families) {
            let is_failure_of_b =
                new.key.job() == "b" && new_family.name() == PUSH_FAILURE_TIME_NAME;
            if is_failure_of_b {
                assert!(!old_family.same_as(new_family), "the failure time moved");
            } else {
                assert!(
                    old_family.same_as(new_family),
                    "{} untouched",
                    new_family.name()
                );
            }
        }
    }
    assert_eq!(
        store.version(),
        version + 1,
        "the failure gauge is a change"
    );
}

#[test]
fn the_index_forgets_what_a_group_gives_up() {
    let store = store();
    put(&store, "job/a", "# TYPE m gauge\nm 1\n").expect("gauge m");
    assert!(
        put(&store, "job/b", "# TYPE m counter\nm 1\n").is_err(),
        "type held by a"
    );
    put(&store, "job/a", "# TYPE m counter\nm 1\n").expect("a may change its own type");
    put(&store, "job/b", "# TYPE m counter\nm 1\n").expect("now the types agree");
    delete(&store, "job/a");
    assert!(
        put(&store, "job/c", "# TYPE m gauge\nm 1\n").is_err(),
        "b still holds counter"
    );
    delete(&store, "job/b");
    put(&store, "job/c", "# TYPE m gauge\nm 1\n").expect("nobody holds m any more");
}

#[test]
fn series_are_checked_across_groups_and_freed_on_replace() {
    let store = store();
    put(&store, "job/a", "m{instance=\"i\"} 1\n").expect("a has m{instance=i,job=a}");
    let clash = put(&store, "job/a/instance/i", "m 2\n");
    assert!(
        matches!(&clash, Err(StoreError::Inconsistent(Inconsistency::DuplicateSeries { other_group: Some(g), .. })) if g == "{job=\"a\"}"),
        "{clash:?}"
    );
    put(&store, "job/a", "n 1\n").expect("a gives m up");
    put(&store, "job/a/instance/i", "m 2\n").expect("the series is free now");
}

#[test]
fn put_frees_names_for_suffix_checks_but_post_does_not() {
    let store = store();
    put(&store, "job/a", "# TYPE s summary\ns_sum 1\ns_count 1\n").expect("summary s");
    assert!(
        post(&store, "job/a", "s_count 1\n").is_err(),
        "s stays on POST"
    );
    put(&store, "job/a", "s_count 1\n").expect("PUT removes s first");
}

#[test]
fn a_group_with_the_same_identity_is_never_created() {
    let store = store();
    put(&store, "job/a", "m 1\n").expect("group a");
    let version = store.version();
    let clash = put(&store, "job/a/instance/", "m 1\n");
    assert!(matches!(
        clash,
        Err(StoreError::Inconsistent(
            Inconsistency::GroupIdentityClash { .. }
        ))
    ));
    assert_eq!(
        store.group_count(),
        1,
        "no twin group, not even for the failure gauge"
    );
    assert_eq!(store.version(), version, "nothing changed");
}

#[test]
fn pushed_push_gauges_are_replaced_by_the_gateways() {
    let store = store();
    put(&store, "job/a", "push_time_seconds 5\n# TYPE push_failure_time_seconds counter\npush_failure_time_seconds 9\n")
        .expect("accepted, gauges ignored");
    let text = String::from_utf8(exposition(
        &store,
        &NoSource,
        Format::Text,
        Escaping::Values,
    ))
    .expect("UTF-8");
    assert!(
        text.contains("push_time_seconds{instance=\"\",job=\"a\"} 1000\n"),
        "{text}"
    );
    assert!(
        text.contains("push_failure_time_seconds{instance=\"\",job=\"a\"} 0\n"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE push_failure_time_seconds gauge\n"),
        "{text}"
    );
}

#[test]
fn deletes_of_absent_groups_and_empty_wipes_are_no_changes() {
    let store = store();
    let version = store.version();
    delete(&store, "job/none");
    store
        .apply(WriteCommand::Wipe, at(1))
        .expect("wipe never fails");
    assert_eq!(store.version(), version);
    put(&store, "job/a", "m 1\n").expect("push");
    store
        .apply(WriteCommand::Wipe, at(1))
        .expect("wipe never fails");
    assert_eq!(store.group_count(), 0);
    assert!(exposition(&store, &NoSource, Format::Text, Escaping::Values).is_empty());
}

#[test]
fn restore_checks_each_group_and_skips_the_bad_ones() {
    let store = MetricStore::new(ReservedNames::new(["taken".to_owned()]));
    let family = |text: &str| parse(text.as_bytes()).expect("valid body");
    let restored = vec![
        RestoredGroup {
            key: key("job/a"),
            families: family("# TYPE m gauge\nm 1\n")
                .into_iter()
                .map(|f| (f, at(5)))
                .collect(),
            expiry: Expiry::Default,
        },
        RestoredGroup {
            key: key("job/b"),
            families: family("# TYPE m counter\nm 1\n")
                .into_iter()
                .map(|f| (f, at(6)))
                .collect(),
            expiry: Expiry::Default,
        },
        RestoredGroup {
            key: key("job/c"),
            families: family("taken 1\n")
                .into_iter()
                .map(|f| (f, at(7)))
                .collect(),
            expiry: Expiry::Default,
        },
    ];
    let skipped = store.restore(restored);
    let skipped: Vec<String> = skipped
        .iter()
        .map(|(key, _)| key.job().to_owned())
        .collect();
    assert_eq!(skipped, ["b", "c"]);
    let snapshot = store.snapshot();
    assert_eq!(snapshot.len(), 1);
    let m = snapshot[0]
        .families
        .iter()
        .find(|family| family.name() == "m")
        .expect("m restored");
    assert_eq!(m.pushed_at(), at(5), "push times are kept");
}

/// Issue 19: a long grouping value is kept once for its group, not in every series'
/// text and sort key, and the exposition still writes it on every line, sorted among
/// the series' own labels as before (`b` < `big` < `i`, and a second group's series).
#[test]
fn grouping_labels_are_stored_once_per_group_and_exposed_on_every_line() {
    let store = store();
    let long = "v".repeat(4_000);
    let mut series = String::new();
    for i in 0..1_000 {
        writeln!(series, "m{{b=\"{i}\",i=\"{i}\"}} 1").expect("into a String");
    }
    put(&store, &format!("job/x/big/{long}"), &series).expect("push under a long value");
    put(&store, "job/x/big/a", "m{b=\"0\",i=\"late\"} 2\n").expect("second group");
    let stored: usize = store
        .snapshot()
        .iter()
        .flat_map(|group| &group.families)
        .map(StoredFamily::stored_len)
        .sum();
    assert!(
        stored < 100_000,
        "the store keeps {stored} bytes for 1,000 short series: the 4 KB value is repeated"
    );
    let text = String::from_utf8(exposition(
        &store,
        &NoSource,
        Format::Text,
        Escaping::Values,
    ))
    .expect("UTF-8 text");
    let lines: Vec<&str> = text.lines().filter(|line| line.starts_with("m{")).collect();
    assert_eq!(lines.len(), 1_001);
    // Sorted by the expanded values: b="0" first, and there big="a" < "vvv...".
    assert_eq!(
        lines[0],
        "m{b=\"0\",big=\"a\",i=\"late\",instance=\"\",job=\"x\"} 2"
    );
    assert!(
        lines[1] == format!("m{{b=\"0\",big=\"{long}\",i=\"0\",instance=\"\",job=\"x\"}} 1"),
        "the long group's first series: {:.80}",
        lines[1]
    );
    assert!(lines[2].starts_with("m{b=\"1\",big=\"vvvv"));
}

fn push_at(store: &MetricStore, path: &str, ttl: Ttl, secs: u64) {
    let families = parse(b"# TYPE m gauge\nm 1\n").expect("valid test body");
    store
        .apply(
            WriteCommand::Put {
                key: key(path),
                families,
                ttl,
            },
            at(secs),
        )
        .expect("valid push");
}

fn groups(store: &MetricStore) -> Vec<String> {
    store
        .snapshot()
        .iter()
        .map(|group| group.key.to_string())
        .collect()
}

fn nanos_after(secs: u64, nanos: u32) -> SystemTime {
    at(secs) + Duration::new(0, nanos)
}

/// Issue 14: a group goes at its push time plus `--push.ttl`, to the nanosecond, from
/// the store, the exposition and the index; a group pushed again in the meantime stays.
#[test]
fn groups_expire_at_their_ttl_and_a_repush_moves_the_deadline() {
    let expired = Arc::new(GroupsExpired::default());
    let store = store().with_expiry(Duration::from_secs(10), Arc::clone(&expired));
    push_at(&store, "job/a", Ttl::Default, 1_000);
    push_at(&store, "job/b", Ttl::Default, 1_005);
    assert_eq!(store.next_deadline(), Some(at(1_010)));
    assert_eq!(store.expire(nanos_after(1_009, 999_999_999)), 0);
    assert_eq!(groups(&store).len(), 2);
    assert_eq!(store.expire(at(1_010)), 1);
    assert_eq!(groups(&store), [key("job/b").to_string()]);
    // Pushed again before its deadline: the old deadline passes without it.
    push_at(&store, "job/b", Ttl::Default, 1_014);
    assert_eq!(store.expire(at(1_015)), 0);
    assert_eq!(store.expire(nanos_after(1_023, 999_999_999)), 0);
    assert_eq!(store.expire(at(1_024)), 1);
    assert!(groups(&store).is_empty());
    assert_eq!(expired.get(), 2);
    assert_eq!(store.next_deadline(), None);
    // The index forgot them: a new group may push `m` as another type.
    put(&store, "job/c", "# TYPE m counter\nm 1\n").expect("m is free again");
    let text = String::from_utf8(exposition(
        &store,
        &NoSource,
        Format::Text,
        Escaping::Values,
    ))
    .expect("UTF-8");
    assert!(
        !text.contains("job=\"a\"") && !text.contains("job=\"b\""),
        "{text}"
    );
}

/// A push's own time to live wins over `--push.ttl`, `Never` included; without either
/// a group stays; deleting a group takes its deadline with it.
#[test]
fn a_push_may_ask_for_its_own_ttl() {
    let store = store().with_expiry(Duration::from_mins(1), Arc::default());
    push_at(
        &store,
        "job/short",
        Ttl::After(Duration::from_millis(1_500)),
        100,
    );
    push_at(&store, "job/never", Ttl::Never, 100);
    push_at(&store, "job/default", Ttl::Default, 100);
    push_at(
        &store,
        "job/deleted",
        Ttl::After(Duration::from_secs(1)),
        100,
    );
    delete(&store, "job/deleted");
    assert_eq!(store.expire(nanos_after(101, 499_999_999)), 0);
    assert_eq!(store.expire(nanos_after(101, 500_000_000)), 1);
    assert_eq!(store.expire(at(160)), 1);
    assert_eq!(groups(&store), [key("job/never").to_string()]);
    assert_eq!(store.expire(at(1_000_000)), 0);
    assert_eq!(store.groups_expired(), 2);

    let no_default = self::store();
    push_at(&no_default, "job/a", Ttl::Default, 100);
    assert_eq!(no_default.next_deadline(), None);
    push_at(
        &no_default,
        "job/a",
        Ttl::After(Duration::from_secs(5)),
        200,
    );
    assert_eq!(no_default.next_deadline(), Some(at(205)));
    // A later push without its own goes back to the default: here, never.
    push_at(&no_default, "job/a", Ttl::Default, 201);
    assert_eq!(no_default.next_deadline(), None);
}

/// A restored group keeps its deadline: its own time, or `--push.ttl` (today's) after
/// its last push; a wipe forgets every deadline.
#[test]
fn restored_groups_keep_their_deadlines() {
    let store = store().with_expiry(Duration::from_secs(30), Arc::default());
    push_at(&store, "job/own", Ttl::After(Duration::from_secs(7)), 100);
    push_at(&store, "job/default", Ttl::Default, 100);
    push_at(&store, "job/never", Ttl::Never, 100);
    let snapshot = store.snapshot();
    let restored: Vec<RestoredGroup> = snapshot
        .iter()
        .map(|group| RestoredGroup {
            key: (*group.key).clone(),
            families: group
                .families
                .iter()
                .map(|stored| (stored.family(), stored.pushed_at()))
                .collect(),
            expiry: group.expiry,
        })
        .collect();
    let after = self::store().with_expiry(Duration::from_secs(20), Arc::default());
    assert!(after.restore(restored).is_empty());
    let deadlines: Vec<(String, Option<SystemTime>)> = after
        .snapshot()
        .iter()
        .map(|group| (group.key.to_string(), group.deadline))
        .collect();
    assert_eq!(
        deadlines,
        [
            (key("job/default").to_string(), Some(at(120))),
            (key("job/never").to_string(), None),
            (key("job/own").to_string(), Some(at(107))),
        ]
    );
    after
        .apply(WriteCommand::Wipe, at(101))
        .expect("wipe never fails");
    assert_eq!(after.next_deadline(), None);
}

/// Members leaving a family are taken out of its cached rendering by copying the rest:
/// after deletes and expiry (the HELP's group among them, interleaved series, a family
/// left without series) the scrape is byte for byte a fresh store's with what is left.
#[test]
fn members_leaving_are_cut_from_the_cached_rendering_exactly() {
    let bodies = [
        (
            "job/a",
            "# HELP m First help.\n# TYPE m gauge\nm{k=\"2\"} 1\nm{k=\"5\"} 1\n",
        ),
        (
            "job/b",
            "# HELP m Second help.\n# TYPE m gauge\nm{k=\"1\"} 2\nm{k=\"3\"} 2\n",
        ),
        (
            "job/c",
            "# TYPE m gauge\nm{k=\"4\"} 3\n# TYPE only_c counter\nonly_c 1\n",
        ),
        ("job/d", "# TYPE m gauge\nm{k=\"0\"} 4\nm 4\n"),
    ];
    let load = |store: &MetricStore, keep: &[&str]| {
        for (path, body) in bodies {
            if keep.contains(&path) {
                put(store, path, body).expect("valid push");
            }
        }
    };
    let all: Vec<&str> = bodies.iter().map(|(path, _)| *path).collect();
    for gone in [
        &["job/a"][..],
        &["job/b"],
        &["job/c"],
        &["job/a", "job/d"],
        &["job/a", "job/b", "job/c"],
        &["job/a", "job/b", "job/c", "job/d"],
    ] {
        let store = store();
        load(&store, &all);
        let _ = exposition(&store, &NoSource, Format::Text, Escaping::Values); // fills the caches
        for path in gone {
            delete(&store, path);
        }
        let cut = exposition(&store, &NoSource, Format::Text, Escaping::Values);
        let fresh = self::store();
        let left: Vec<&str> = all.iter().copied().filter(|p| !gone.contains(p)).collect();
        load(&fresh, &left);
        assert_eq!(
            String::from_utf8_lossy(&cut),
            String::from_utf8_lossy(&exposition(
                &fresh,
                &NoSource,
                Format::Text,
                Escaping::Values
            )),
            "after deleting {gone:?}"
        );
    }
    // The same through expiry, several groups in one sweep.
    let store = store().with_expiry(Duration::from_secs(5), Arc::default());
    for (i, (path, body)) in bodies.iter().enumerate() {
        let families = parse(body.as_bytes()).expect("valid test body");
        let ttl = if i % 2 == 0 { Ttl::Default } else { Ttl::Never };
        store
            .apply(
                WriteCommand::Put {
                    key: key(path),
                    families,
                    ttl,
                },
                at(1_000),
            )
            .expect("valid push");
    }
    let _ = exposition(&store, &NoSource, Format::Text, Escaping::Values);
    assert_eq!(store.expire(at(1_005)), 2);
    let fresh = self::store();
    load(&fresh, &["job/b", "job/d"]);
    let without_times = |store: &MetricStore| {
        let text = String::from_utf8(exposition(store, &NoSource, Format::Text, Escaping::Values))
            .expect("UTF-8");
        text.lines()
            .filter(|line| !line.contains("push_"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(without_times(&store), without_times(&fresh));
}

/// A store with UTF-8 names and one push in text, parsed as `--push.enable-utf8-names`
/// parses it.
fn utf8_store(pushes: &[(&str, &str)]) -> MetricStore {
    let store = store().with_names(NameRules::Utf8);
    for (path, body) in pushes {
        let families = crate::codec::text::parse_limited(
            body.as_bytes(),
            crate::codec::limits::PushLimits::UNLIMITED,
            NameRules::Utf8,
        )
        .expect("valid UTF-8 test body");
        let key = GroupingKey::from_path_with(path, NameRules::Utf8).expect("valid path");
        store
            .apply(
                WriteCommand::Put {
                    key,
                    families,
                    ttl: Ttl::Default,
                },
                at(1_000),
            )
            .expect("accepted");
    }
    store
}

/// The pushed series lines (push gauges left out) of a scrape in `format` and `escaping`.
fn series_lines(store: &MetricStore, format: Format, escaping: Escaping) -> Vec<String> {
    let body = exposition(store, &NoSource, format, escaping);
    let text = match format {
        Format::DelimitedProtobuf => {
            let families = crate::codec::protobuf::decode_delimited(&body).expect("decodes");
            let mut out = Vec::new();
            crate::exposition::write_text(&families, &mut out);
            String::from_utf8(out).expect("UTF-8")
        }
        _ => String::from_utf8(body).expect("UTF-8"),
    };
    text.lines()
        .filter(|line| !line.contains("push_") && !line.starts_with("# EOF"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn utf8_names_are_escaped_as_each_scrape_negotiated() {
    let store = utf8_store(&[(
        "job/j/U__zone_2e_name/eu",
        "# HELP \"my.metric\" Help.\n# TYPE \"my.metric\" gauge\n{\"my.metric\",\"lbl.x\"=\"v\"} 1\n# TYPE legacy_metric gauge\nlegacy_metric{a=\"b\"} 2\n",
    )]);
    let table: &[(&str, Format, Escaping, &[&str])] = &[
        (
            "text, underscores",
            Format::Text,
            Escaping::Underscores,
            &[
                "# TYPE legacy_metric gauge",
                "legacy_metric{a=\"b\",instance=\"\",job=\"j\",zone_name=\"eu\"} 2",
                "# HELP my_metric Help.",
                "# TYPE my_metric gauge",
                "my_metric{instance=\"\",job=\"j\",lbl_x=\"v\",zone_name=\"eu\"} 1",
            ],
        ),
        (
            "text, allow-utf-8: quoted",
            Format::Text,
            Escaping::AllowUtf8,
            &[
                "# TYPE legacy_metric gauge",
                "legacy_metric{a=\"b\",instance=\"\",job=\"j\",\"zone.name\"=\"eu\"} 2",
                "# HELP \"my.metric\" Help.",
                "# TYPE \"my.metric\" gauge",
                "{\"my.metric\",instance=\"\",job=\"j\",\"lbl.x\"=\"v\",\"zone.name\"=\"eu\"} 1",
            ],
        ),
        (
            "text, dots",
            Format::Text,
            Escaping::Dots,
            &[
                "# TYPE legacy_metric gauge",
                "legacy_metric{a=\"b\",instance=\"\",job=\"j\",zone_dot_name=\"eu\"} 2",
                "# HELP my_dot_metric Help.",
                "# TYPE my_dot_metric gauge",
                "my_dot_metric{instance=\"\",job=\"j\",lbl_dot_x=\"v\",zone_dot_name=\"eu\"} 1",
            ],
        ),
        (
            "protobuf, values",
            Format::DelimitedProtobuf,
            Escaping::Values,
            &[
                "# TYPE legacy_metric gauge",
                "legacy_metric{a=\"b\",instance=\"\",job=\"j\",U__zone_2e_name=\"eu\"} 2",
                "# HELP U__my_2e_metric Help.",
                "# TYPE U__my_2e_metric gauge",
                "U__my_2e_metric{instance=\"\",job=\"j\",U__lbl_2e_x=\"v\",U__zone_2e_name=\"eu\"} 1",
            ],
        ),
        (
            "protobuf, allow-utf-8: names kept",
            Format::DelimitedProtobuf,
            Escaping::AllowUtf8,
            &[
                "# TYPE legacy_metric gauge",
                "legacy_metric{a=\"b\",instance=\"\",job=\"j\",\"zone.name\"=\"eu\"} 2",
                "# HELP \"my.metric\" Help.",
                "# TYPE \"my.metric\" gauge",
                "{\"my.metric\",instance=\"\",job=\"j\",\"lbl.x\"=\"v\",\"zone.name\"=\"eu\"} 1",
            ],
        ),
        (
            "OpenMetrics, allow-utf-8",
            Format::OpenMetrics { version_1_0: true },
            Escaping::AllowUtf8,
            &[
                "# TYPE legacy_metric gauge",
                "legacy_metric{a=\"b\",instance=\"\",job=\"j\",\"zone.name\"=\"eu\"} 2.0",
                "# HELP \"my.metric\" Help.",
                "# TYPE \"my.metric\" gauge",
                "{\"my.metric\",instance=\"\",job=\"j\",\"lbl.x\"=\"v\",\"zone.name\"=\"eu\"} 1.0",
            ],
        ),
        (
            "OpenMetrics, underscores",
            Format::OpenMetrics { version_1_0: true },
            Escaping::Underscores,
            &[
                "# TYPE legacy_metric gauge",
                "legacy_metric{a=\"b\",instance=\"\",job=\"j\",zone_name=\"eu\"} 2.0",
                "# HELP my_metric Help.",
                "# TYPE my_metric gauge",
                "my_metric{instance=\"\",job=\"j\",lbl_x=\"v\",zone_name=\"eu\"} 1.0",
            ],
        ),
    ];
    for (case, format, escaping, want) in table {
        // Twice: the second answer comes from the cache, keyed by the escaping too.
        for round in ["fresh", "cached"] {
            assert_eq!(
                series_lines(&store, *format, *escaping),
                *want,
                "{case}, {round}"
            );
        }
    }
}

/// As upstream (escaping is applied family by family after the merge, by name), two
/// families that escape to one name are both served, each under its own HELP/TYPE;
/// the scraper then sees the name twice (Prometheus keeps the first sample of a series
/// and reports the others as duplicates). `allow-utf-8` keeps them apart.
#[test]
fn families_that_escape_alike_are_both_served() {
    let store = utf8_store(&[("job/j", "{\"a.b\"} 1\na_b 2\n")]);
    assert_eq!(
        series_lines(&store, Format::Text, Escaping::Underscores),
        [
            "# TYPE a_b untyped",
            "a_b{instance=\"\",job=\"j\"} 1",
            "# TYPE a_b untyped",
            "a_b{instance=\"\",job=\"j\"} 2",
        ]
    );
    assert_eq!(
        series_lines(&store, Format::Text, Escaping::AllowUtf8),
        [
            "# TYPE \"a.b\" untyped",
            "{\"a.b\",instance=\"\",job=\"j\"} 1",
            "# TYPE a_b untyped",
            "a_b{instance=\"\",job=\"j\"} 2",
        ]
    );
}

/// A store without UTF-8 names renders each family once per format, whatever the
/// escaping: the cached bytes are shared, not made again.
#[test]
fn legacy_families_share_one_rendering_across_escapings() {
    let store = utf8_store(&[("job/j", "m{a=\"b\"} 1\n")]);
    let first = store.rendered_families(Format::Text, Escaping::Underscores);
    let second = store.rendered_families(Format::Text, Escaping::AllowUtf8);
    let m = |families: &[RenderedFamily]| {
        families
            .iter()
            .find(|f| &*f.name == "m")
            .expect("m rendered")
            .bytes
            .clone()
    };
    assert_eq!(
        m(&first).as_ptr(),
        m(&second).as_ptr(),
        "one cached rendering"
    );
    // The member with a UTF-8 label leaving makes the family legacy again.
    let store = utf8_store(&[
        ("job/a", "m{\"a.b\"=\"1\"} 1\n"),
        ("job/b", "m{c=\"2\"} 2\n"),
    ]);
    let utf8 = |store: &MetricStore| store.read().families.get("m").expect("m").utf8_names;
    assert!(utf8(&store), "group a has a UTF-8 label");
    delete(&store, "job/a");
    assert!(!utf8(&store), "only group b left");
}
