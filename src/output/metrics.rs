//! `GET /metrics`: a node's figures in the Prometheus text exposition format (version 0.0.4).
//!
//! One sample per node and metric, labelled with the channel's name and the node's role.
//! Names follow Prometheus's conventions: base units (seconds, bytes), `_total` on counters,
//! a ratio in `[0, 1]` as `_ratio`. Figures not known yet (a startup time before the first
//! segment played) are left out rather than sent as zero. docs/INTERFACE.md lists them.

use crate::daemon::stats::NodeReport;
use std::fmt::Write;

/// The exposition format's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

enum Kind {
    Gauge,
    Counter,
}

/// One metric: its name, type, help text and how to read it from a report.
struct Metric {
    name: &'static str,
    kind: Kind,
    help: &'static str,
    value: fn(&NodeReport) -> Option<f64>,
}

const METRICS: &[Metric] = &[
    Metric {
        name: "coolstream_continuity_ratio",
        kind: Kind::Gauge,
        help: "Segments played before their deadline over segments due since playback began (0 before it begins; 1 for the source).",
        value: |r| Some(r.continuity),
    },
    Metric {
        name: "coolstream_startup_seconds",
        kind: Kind::Gauge,
        help: "Join to the first segment handed to the player.",
        value: |r| r.startup_s,
    },
    Metric {
        name: "coolstream_lag_seconds",
        kind: Kind::Gauge,
        help: "Source ingest to playout deadline of the latest segment played.",
        value: |r| r.lag_s,
    },
    Metric {
        name: "coolstream_partners",
        kind: Kind::Gauge,
        help: "Partners exchanging buffer maps with this node.",
        value: |r| Some(r.partners as f64),
    },
    Metric {
        name: "coolstream_members",
        kind: Kind::Gauge,
        help: "Members in this node's membership cache.",
        value: |r| Some(r.members as f64),
    },
    Metric {
        name: "coolstream_links",
        kind: Kind::Gauge,
        help: "Open TCP links to other nodes.",
        value: |r| Some(r.links as f64),
    },
    Metric {
        name: "coolstream_players",
        kind: Kind::Gauge,
        help: "Players connected to this node's outputs.",
        value: |r| Some(r.players as f64),
    },
    Metric {
        name: "coolstream_store_bytes",
        kind: Kind::Gauge,
        help: "Payload bytes in the segment store.",
        value: |r| Some(r.store_bytes as f64),
    },
    Metric {
        name: "coolstream_uptime_seconds",
        kind: Kind::Gauge,
        help: "Time since the node started.",
        value: |r| Some(r.uptime_s),
    },
    Metric {
        name: "coolstream_segments_played_total",
        kind: Kind::Counter,
        help: "Segments handed to the player by their deadline.",
        value: |r| Some(r.segments_played as f64),
    },
    Metric {
        name: "coolstream_segments_missed_total",
        kind: Kind::Counter,
        help: "Segments whose deadline passed before they arrived.",
        value: |r| Some(r.segments_missed as f64),
    },
    Metric {
        name: "coolstream_segments_ingested_total",
        kind: Kind::Counter,
        help: "Segments cut and signed (source only).",
        value: |r| Some(r.segments_ingested as f64),
    },
    Metric {
        name: "coolstream_upload_bytes_total",
        kind: Kind::Counter,
        help: "Bytes written to other nodes, whole frames.",
        value: |r| Some(r.upload_bytes as f64),
    },
    Metric {
        name: "coolstream_download_bytes_total",
        kind: Kind::Counter,
        help: "Bytes read from other nodes, whole frames.",
        value: |r| Some(r.download_bytes as f64),
    },
    Metric {
        name: "coolstream_payload_bytes_total",
        kind: Kind::Counter,
        help: "Media bytes inside segment frames, sent and received.",
        value: |r| Some(r.payload_bytes as f64),
    },
    Metric {
        name: "coolstream_control_bytes_total",
        kind: Kind::Counter,
        help: "Bytes sent and received that are not media.",
        value: |r| Some(r.control_bytes as f64),
    },
    Metric {
        name: "coolstream_stalls_total",
        kind: Kind::Counter,
        help: "Times playback paused for a late segment.",
        value: |r| Some(r.stalls as f64),
    },
    Metric {
        name: "coolstream_stall_seconds_total",
        kind: Kind::Counter,
        help: "Time playback stood still in stalls.",
        value: |r| Some(r.diag.stall_s),
    },
    Metric {
        name: "coolstream_request_timeouts_total",
        kind: Kind::Counter,
        help: "Segment requests that timed out.",
        value: |r| Some(r.request_timeouts as f64),
    },
    Metric {
        name: "coolstream_bad_segments_total",
        kind: Kind::Counter,
        help: "Segments that failed verification (each closed its link).",
        value: |r| Some(r.bad_segments as f64),
    },
    Metric {
        name: "coolstream_bad_frames_total",
        kind: Kind::Counter,
        help: "Frames that could not be read (each closed its link).",
        value: |r| Some(r.bad_frames as f64),
    },
    Metric {
        name: "coolstream_bans_total",
        kind: Kind::Counter,
        help: "Peers banned for sending segments that failed verification.",
        value: |r| Some(r.bans_total as f64),
    },
];

/// A label value with `\`, `"` and newlines escaped, as the format requires.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The exposition text for these nodes' reports.
pub fn render(reports: &[NodeReport]) -> String {
    let mut out = String::new();
    for m in METRICS {
        let kind = match m.kind {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        };
        let _ = writeln!(out, "# HELP {} {}", m.name, m.help);
        let _ = writeln!(out, "# TYPE {} {kind}", m.name);
        for r in reports {
            let Some(v) = (m.value)(r).filter(|v| v.is_finite()) else {
                continue;
            };
            let _ = writeln!(
                out,
                "{}{{channel=\"{}\",role=\"{}\"}} {v}",
                m.name,
                label(&r.name),
                label(&r.role)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP coolstream_build_info The running version (always 1).\n# TYPE coolstream_build_info gauge\ncoolstream_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_node_gets_a_labelled_sample_and_unknowns_are_left_out() {
        let r = NodeReport {
            role: "peer".into(),
            name: "ne\"ws".into(),
            continuity: 0.5,
            segments_played: 7,
            ..NodeReport::default()
        };
        let t = render(&[r]);
        assert!(
            t.contains("coolstream_segments_played_total{channel=\"ne\\\"ws\",role=\"peer\"} 7\n"),
            "{t}"
        );
        assert!(t.contains("coolstream_continuity_ratio{channel=\"ne\\\"ws\",role=\"peer\"} 0.5\n"));
        assert!(t.contains("# TYPE coolstream_startup_seconds gauge\n"));
        assert!(!t.contains("coolstream_startup_seconds{"), "{t}");
    }
}
