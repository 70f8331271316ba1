//! The simulator driving the real core: determinism, invariants, and small-swarm figures.
//!
//! The big figures (1,000 and 10,000 peers) are benchmarks (`docs/SIMULATION.md`); these are
//! the fast versions that `cargo test` runs on every change.

use coolstream::sim::{Scenario, Sim, SimConfig};

/// Every peer can be dialled here (the figures below are of the mesh itself); swarms behind
/// home routers are `swarms_behind_nats`.
fn config(peers: usize, scenario: Scenario, duration_s: f64, seed: u64) -> SimConfig {
    SimConfig {
        peers,
        scenario,
        duration_s,
        seed,
        nat_fraction: 0.0,
        ..SimConfig::default()
    }
}

/// The summary as JSON, without the one field that may differ between identical runs.
fn comparable(cfg: SimConfig) -> serde_json::Value {
    let mut v = serde_json::to_value(Sim::new(cfg).run()).unwrap();
    v.as_object_mut().unwrap().remove("wall_s");
    v
}

#[test]
fn same_seed_same_result_and_other_seeds_differ() {
    let a = comparable(config(60, Scenario::Churn, 90.0, 3));
    let b = comparable(config(60, Scenario::Churn, 90.0, 3));
    let c = comparable(config(60, Scenario::Churn, 90.0, 4));
    assert_eq!(a, b, "same seed, same everything");
    assert_ne!(a["trace_hash"], c["trace_hash"]);
    assert!(a["events"].as_u64().unwrap() > 10_000, "the run did work");
}

#[test]
fn caps_and_partner_symmetry_hold_through_churn() {
    let mut sim = Sim::new(SimConfig {
        mean_session_s: 40.0,
        ..config(120, Scenario::Churn, 150.0, 11)
    });
    for t in [20.0, 45.0, 80.0, 120.0, 150.0] {
        sim.run_until(t);
        sim.check_invariants()
            .unwrap_or_else(|e| panic!("at {t} s: {e}"));
    }
    // Churn happened: more sessions than the steady population.
    assert!(sim.peer_slots() > 150, "{} sessions", sim.peer_slots());
}

#[test]
fn three_peers_join_trade_and_survive_a_partner_crash() {
    let mut sim = Sim::new(config(3, Scenario::Static, 80.0, 5));
    sim.run_until(30.0);
    for ix in 1..=3 {
        let st = sim.node_stats(ix).expect("all three are in");
        assert!(st.first_play_at.is_some(), "peer {ix} plays: {st:?}");
        assert!(st.partners >= 2, "peer {ix} has partners: {st:?}");
    }
    let before: Vec<_> = (1..=2).map(|ix| sim.node_stats(ix).unwrap()).collect();
    sim.remove_peer(3, true);
    sim.run_until(80.0);
    for (k, ix) in (1..=2).enumerate() {
        let st = sim.node_stats(ix).unwrap();
        let played = st.played - before[k].played;
        let missed = st.missed - before[k].missed;
        // 50 s of stream after the crash; the survivors keep playing it.
        assert!(played >= 45, "peer {ix} played {played} after the crash");
        assert!(missed <= 3, "peer {ix} missed {missed} after the crash");
        assert!(st.partners >= 1, "peer {ix} still has the source: {st:?}");
    }
}

#[test]
fn sequence_numbers_wrap_without_a_stall() {
    let base = Sim::new(config(30, Scenario::Static, 90.0, 8)).run();
    let wrapped = Sim::new(SimConfig {
        start_seq: u32::MAX - 40,
        ..config(30, Scenario::Static, 90.0, 8)
    })
    .run();
    // 90 segments from u32::MAX - 40 cross the wrap half way through the run.
    assert!(
        wrapped.segments_played > 30 * 60,
        "{}",
        wrapped.segments_played
    );
    assert!(
        wrapped.continuity_mean >= base.continuity_mean - 0.05,
        "wrap {:.3} vs plain {:.3}",
        wrapped.continuity_mean,
        base.continuity_mean
    );
}

/// The core's figures at small scale (100 peers, churn, 180 s, seed 1, every peer dialable),
/// asserted near what this deterministic run gives on the commit that set them (continuity mean
/// 0.966, p5 0.915, startup p50 1.61 s and p95 3.52 s, overhead 0.0044): a change that costs a
/// percent of continuity or a tenth of a second of startup fails here and has to say why.
/// History: 0.977 / 0.909 / 1.62 s / 3.55 s / 0.0033 while the simulator let a relay forward a
/// segment still arriving (no driver did); segments forwarded only whole and checked, with the
/// manifests' piece hashes: 0.977 / 0.900 / 1.63 / 3.37 / 0.0042; joiners then waited for the
/// origin's dial-back before it handed out their records (startup p50 +0.2 s); control messages
/// then shared the sender's uplink with segments, as in the daemon (startup p95 -0.25 s with
/// the dial-back wait, +0.25 s without it): 0.976 / 0.926 / 1.84 / 3.81 / 0.0044; then peers
/// short of partners asked a partner for members and stopped waiting on dials unanswered for
/// a second (for swarms behind NATs): 0.975 / 0.917 / 1.85 / 3.74 / 0.0044; a segment then
/// served from its first checked piece (cut-through; one upload at a time, whole or still
/// arriving): 0.980 / 0.929 / 1.75 / 3.69 / 0.0044; then a node announced its record to its
/// partners the moment it became dialable: 0.981 / 0.943 / 1.75 / 3.47 / 0.0044; then every
/// segment went to the supplier that delivers it soonest (a gain at 1,000 peers; here seed 1
/// fell, seeds 2-4 rose: 0.9655 / 0.9787 / 0.9754 / 0.9731 against 0.9814 / 0.9766 / 0.9728 /
/// 0.9698): the figures above. The goals (continuity 0.99, p5 0.97, startup p50
/// 1.0 s, p95 2.5 s; docs/SIMULATION.md) are not met yet.
#[test]
fn small_churn_swarm_figures() {
    let s = Sim::new(config(100, Scenario::Churn, 180.0, 1)).run();
    let figures = format!(
        "continuity {:.4} p5 {:.4}, startup p50 {:.2} s p95 {:.2} s, overhead {:.4}",
        s.continuity_mean, s.continuity_p5, s.startup_p50_s, s.startup_p95_s, s.overhead
    );
    eprintln!("{figures}");
    assert!(s.continuity_mean >= 0.963, "{figures}");
    assert!(s.continuity_p5 >= 0.905, "{figures}");
    assert!(s.startup_p50_s <= 1.7, "{figures}");
    assert!(s.startup_p95_s <= 3.6, "{figures}");
    assert!(s.overhead <= 0.0046, "{figures}");
    assert!(
        s.never_started == 0,
        "{} sessions never played",
        s.never_started
    );
}

/// What the swarm asks of its source, with the source's budget (1.9 stream rates by default,
/// which the simulated source never exceeds) raised to 4: measured 2.018 stream rates on the
/// commit that set this, against a goal of 2 (docs/SIMULATION.md).
#[test]
fn the_source_of_a_small_churn_swarm_uploads_about_two_copies() {
    let s = Sim::new(SimConfig {
        source_budget: 4.0,
        ..config(100, Scenario::Churn, 180.0, 1)
    })
    .run();
    eprintln!("source upload {:.3} stream rates", s.source_upload_ratio);
    assert!(
        (1.0..=2.1).contains(&s.source_upload_ratio),
        "source upload {:.3} stream rates",
        s.source_upload_ratio
    );
}

/// A flash crowd: 200 peers join within 10 s of the start. Their startup (join to first
/// segment played) at the 95th percentile stays within 4.9 s: measured 4.68 / 4.01 / 3.48 s for
/// seeds 1-3 (the first arrivals partner with each other before anyone holds a segment, and a
/// start fed by peers waits until it is two durations old). Control messages travelling free
/// on the uplink gave 4.18 / 3.94 / 3.49 s; the daemon sends them between a segment's records.
#[test]
fn a_flash_crowd_of_200_starts_within_4_9_s() {
    for seed in 1..=3 {
        let s = Sim::new(config(200, Scenario::Flash, 60.0, seed)).run();
        assert!(
            s.startup_p95_s <= 4.9,
            "seed {seed}: startup p95 {:.2} s (p50 {:.2} s)",
            s.startup_p95_s,
            s.startup_p50_s
        );
    }
}

/// Sixteen peers whose uplinks carry several streams each (as on loopback without caps) play
/// every deadline but a handful: the source turns away at once a request it will not serve
/// (the segment has had its copies), so that the requester asks one of the dozen other
/// holders in time. Without that, such requests waited in the source's queue behind
/// fresher segments until their deadline passed: mean 0.9964 over these seeds, then 0.9991;
/// 0.9979 since peers short of partners pull members and segments are served from their first
/// checked piece (each of those alone: 0.9981 / 0.9982; a tenth of a segment per peer in 300).
#[test]
fn sixteen_peers_with_ample_uplinks_miss_almost_nothing() {
    let mut sum = 0.0;
    for seed in 1..=6 {
        let s = Sim::new(SimConfig {
            rate_kbps: 441,
            upload_mix: vec![(6.8, 1.0)],
            ..config(16, Scenario::Static, 300.0, seed)
        })
        .run();
        eprintln!(
            "seed {seed}: continuity {:.4} p5 {:.4}",
            s.continuity_mean, s.continuity_p5
        );
        assert!(
            s.continuity_p5 >= 0.985,
            "seed {seed}: p5 {:.4}",
            s.continuity_p5
        );
        sum += s.continuity_mean;
    }
    let mean = sum / 6.0;
    assert!(mean >= 0.9975, "continuity mean over seeds 1-6 {mean:.4}");
}

/// The same swarm with 60 % of the peers behind NATs nobody can dial (the simulator's
/// default), as measured on the commit that set this: with hole punching continuity 0.957
/// (p5 0.846), startup p50 2.82 s, 45 % of the live peers found reachable (the draw), every
/// one of them found out, 41 % of punches linked (before nodes announced their records the
/// moment they became dialable: 0.960, 0.864, 2.66 s; with segments served whole only:
/// 0.964, 0.862, 2.78 s; before peers short of partners asked for
/// members and stopped waiting on unanswered dials: 0.962, 0.889, 3.25 s, 41 %; seeds 2-4
/// went 0.944 / 0.960 / 0.932 -> 0.960 / 0.971 / 0.970, p5 0.78 / 0.88 / 0.84 -> 0.86 /
/// 0.92 / 0.89: the p5 of 137 sessions is their 7th worst); without it continuity falls to
/// 0.822: two undialable peers never meet, and the dialable ones cannot take them all.
#[test]
fn swarms_behind_nats() {
    let nat = |punch| {
        Sim::new(SimConfig {
            nat_fraction: 0.6,
            punch,
            ..config(100, Scenario::Churn, 180.0, 1)
        })
        .run()
    };
    let s = nat(true);
    let figures = format!(
        "continuity {:.4} p5 {:.4}, startup p50 {:.2} s, reachable {:.3} (known {:.3}), \
         punches {} linked {:.3}",
        s.continuity_mean,
        s.continuity_p5,
        s.startup_p50_s,
        s.reachable_fraction,
        s.reach_known_fraction,
        s.punches,
        s.punch_success
    );
    eprintln!("{figures}");
    assert!(s.continuity_mean >= 0.953, "{figures}");
    assert!(s.continuity_p5 >= 0.83, "{figures}");
    assert!(s.startup_p50_s <= 2.95, "{figures}");
    assert!((0.35..=0.55).contains(&s.reachable_fraction), "{figures}");
    assert!(s.reach_known_fraction >= 0.97, "{figures}");
    assert!(s.punches > 1200 && s.punch_success >= 0.35, "{figures}");
    let off = nat(false);
    assert_eq!(off.punches, 0);
    assert!(
        off.continuity_mean <= s.continuity_mean - 0.08,
        "without punching {:.4}, with {:.4}",
        off.continuity_mean,
        s.continuity_mean
    );
}
