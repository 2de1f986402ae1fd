//! `dropgate run`'s diagnose rounds read the host (a dozen `ip`, `iptables-save` and
//! `nft` processes) only when something may have changed, and at least every two
//! minutes. These tests change the host without sending a packet and expect the
//! finding to follow within seconds: a sysctl, and a ruleset change that only nf_tables'
//! change notifications announce.

use std::time::{Duration, Instant};

use dropgate_tests::{
    diagnose::{privileged, RunInNamespace},
    netns::DockerLikeHost,
};

/// Far below the two minutes between reads that nothing asked for.
const FOLLOWS_WITHIN: Duration = Duration::from_secs(15);

/// Whether `dropgate_problem{kind="forwarding_off"}` is 1.
fn forwarding_off_raised(run: &RunInNamespace) -> bool {
    run.problems()
        .iter()
        .any(|p| p.contains("kind=\"forwarding_off\""))
}

/// Waits until `forwarding_off_raised` is `raised`; how long that took.
fn until_raised(run: &RunInNamespace, raised: bool, what: &str) -> Duration {
    let started = Instant::now();
    while forwarding_off_raised(run) != raised {
        assert!(
            started.elapsed() < FOLLOWS_WITHIN,
            "{what}: dropgate_problem{{kind=\"forwarding_off\"}} still {} after {FOLLOWS_WITHIN:?}: {:?}",
            u8::from(!raised),
            run.problems()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    started.elapsed()
}

#[test]
fn rounds_follow_sysctl_and_ruleset_changes_without_traffic() {
    if !privileged("rounds_follow_sysctl_and_ruleset_changes_without_traffic") {
        return;
    }
    // A Docker-like host with its port published, healthy at first.
    let topo = DockerLikeHost::build();
    topo.set_forwarding(true);
    let run = RunInNamespace::start(&topo.host, "1s", &[]);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !forwarding_off_raised(&run),
        "a healthy host has a forwarding problem: {:?}",
        run.problems()
    );

    // Forwarding switched off (a sysctl reset): no packet is sent, the published port
    // alone needs it.
    topo.set_forwarding(false);
    let took = until_raised(&run, true, "forwarding switched off");
    eprintln!("forwarding off raised after {took:?}");
    // Rounds with nothing new judge the same state again: the finding stays.
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            forwarding_off_raised(&run),
            "the finding went away while nothing changed: {:?}",
            run.problems()
        );
    }

    // The published port and source NAT removed (iptables-nft: only nf_tables'
    // notification tells of it): nothing needs forwarding any more.
    topo.unpublish();
    let took = until_raised(&run, false, "the published port removed");
    eprintln!("cleared after the ruleset change after {took:?}");

    // Published again with an nft rule of its own.
    topo.host.sh(&format!(
        "nft add table ip dgpub && \
         nft 'add chain ip dgpub prerouting {{ type nat hook prerouting priority dstnat; }}' && \
         nft add rule ip dgpub prerouting tcp dport {p} dnat to {c}:{cp}",
        p = DockerLikeHost::PUBLISHED_PORT,
        c = DockerLikeHost::CTR_ADDR,
        cp = DockerLikeHost::CTR_PORT,
    ));
    let took = until_raised(&run, true, "the port published again with nft");
    eprintln!("raised after the nft rule after {took:?}");
}
