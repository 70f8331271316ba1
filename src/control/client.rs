//! `coolstream ctl`: one request over the control socket, its answer printed as a table (or,
//! with `--json`, as the one JSON object the daemon sent).

use super::{Request, MAX_LINE};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Largest answer read (a `stats` answer for every channel fits many times over).
pub const MAX_ANSWER: usize = 1024 * 1024;
/// How long `ctl` waits for the daemon.
pub const CTL_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends `req` to the daemon at `path` and returns its answer.
pub fn call(path: &Path, req: &Request) -> Result<Value, String> {
    let s = UnixStream::connect(path).map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                "; is `coolstream run` running? (or give its socket with --socket PATH)"
            }
            std::io::ErrorKind::PermissionDenied => {
                "; only the daemon's user (and root) may use its control socket"
            }
            _ => "",
        };
        format!(
            "cannot connect to the control socket {}: {e}{why}",
            path.display()
        )
    })?;
    let _ = s.set_read_timeout(Some(CTL_TIMEOUT));
    let _ = s.set_write_timeout(Some(CTL_TIMEOUT));
    let line = req.to_line();
    debug_assert!(line.len() <= MAX_LINE);
    // A daemon that refuses us says why and closes at once, possibly before our request is
    // written: read its line even when the write failed.
    let sent = (&s).write_all(line.as_bytes());
    let mut answer = Vec::new();
    let read =
        BufReader::new(std::io::Read::take(&s, MAX_ANSWER as u64)).read_until(b'\n', &mut answer);
    if answer.is_empty() {
        return Err(match (sent, read) {
            (Err(e), _) => format!("cannot send to {}: {e}", path.display()),
            (_, Err(e)) => format!("no answer from {}: {e}", path.display()),
            _ => format!("{} closed without answering", path.display()),
        });
    }
    serde_json::from_slice(&answer).map_err(|e| format!("unreadable answer: {e}"))
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.2}"),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

/// Rows of cells as aligned columns.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |x| x.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(c, x)| format!("{x:<w$}", w = widths[c]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// One row per output: `http` with its players, a datagram output sending, or failing for
/// how long and why.
fn outputs_rows(outputs: &Value) -> impl Iterator<Item = Vec<String>> + '_ {
    outputs.as_array().into_iter().flatten().map(|o| {
        let what = match (o["kind"].as_str(), o["state"].as_str()) {
            (Some("http"), _) => format!("{} ({} players)", s(&o["target"]), s(&o["players"])),
            (_, Some("failing")) => format!(
                "{} failing for {:.0} s: {} ({} datagrams lost)",
                s(&o["target"]),
                o["since_s"].as_f64().unwrap_or(0.0),
                s(&o["error"]),
                s(&o["episode_errors"])
            ),
            (_, state) => format!("{} {}", s(&o["target"]), state.unwrap_or("-")),
        };
        vec![format!("output {}:", s(&o["kind"])), what]
    })
}

/// The answer to `req` as a person reads it.
pub fn render(req: &Request, v: &Value) -> String {
    match req {
        Request::Status => {
            let keys = [
                "tuned",
                "state",
                "channels",
                "continuity",
                "partners",
                "problem",
                "players",
                "startup_s",
                "lag_s",
                "http",
                "udp",
                "uptime_s",
                "rss_kib",
                "version",
            ];
            let rows: Vec<Vec<String>> = keys
                .iter()
                // `problem` only when there is one.
                .filter(|k| {
                    v.get(**k)
                        .is_some_and(|x| !(x.is_null() && **k == "problem"))
                })
                .map(|k| vec![format!("{k}:"), s(&v[*k])])
                .chain(outputs_rows(&v["outputs"]))
                .collect();
            table(&rows)
        }
        Request::Channels => {
            let mut rows = vec![vec![
                " ".to_string(),
                "#".into(),
                "name".into(),
                "state".into(),
                "members".into(),
                "warm".into(),
                "id".into(),
            ]];
            for c in v["channels"].as_array().into_iter().flatten() {
                let id = s(&c["id"]);
                rows.push(vec![
                    if c["tuned"] == true { "*" } else { " " }.into(),
                    s(&c["number"]),
                    s(&c["name"]),
                    s(&c["state"]),
                    s(&c["members"]),
                    s(&c["warm"]),
                    id.chars().take(16).collect::<String>() + "…",
                ]);
            }
            table(&rows)
        }
        Request::Stall { seconds } => format!("the daemon's main loop stalls for {seconds} s\n"),
        Request::Zap { .. } => format!("tuned to {} (was {})\n", s(&v["tuned"]), s(&v["previous"])),
        Request::Stats => {
            let keys = [
                "name",
                "role",
                "continuity",
                "startup_s",
                "lag_s",
                "partners",
                "segments_played",
                "segments_missed",
                "payload_bytes",
                "control_bytes",
                "upload_bytes",
                "download_bytes",
            ];
            let mut rows = vec![keys.iter().map(|k| k.to_string()).collect::<Vec<_>>()];
            for c in v["channels"].as_array().into_iter().flatten() {
                rows.push(keys.iter().map(|k| s(&c[*k])).collect());
            }
            table(&rows)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn answers_render_as_aligned_tables() {
        let v = json!({"ok": true, "channels": [
            {"name": "news", "number": 1, "tuned": true, "state": "playing", "members": 12,
             "warm": 5, "id": "00112233445566778899"},
            {"name": "sport-hd", "number": null, "tuned": false, "state": "standby",
             "members": 3, "warm": 3, "id": "ff112233445566778899"}]});
        let t = render(&Request::Channels, &v);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[1].starts_with("*  1  news      playing"), "{t}");
        assert!(lines[2].contains("sport-hd  standby"), "{t}");
        let st = render(
            &Request::Status,
            &json!({"ok": true, "tuned": "news", "continuity": 0.5}),
        );
        assert_eq!(st, "tuned:       news\ncontinuity:  0.50\n");
        let st = render(
            &Request::Status,
            &json!({"ok": true, "tuned": "news", "outputs": [
                {"kind": "http", "target": "http://127.0.0.1:8080/", "state": "sending", "players": 2},
                {"kind": "udp", "target": "udp://239.1.1.1:5004", "state": "failing", "since_s": 3.2,
                 "error": "Network is unreachable (os error 101)", "episode_errors": 80}]}),
        );
        assert_eq!(
            st,
            "tuned:        news\noutput http:  http://127.0.0.1:8080/ (2 players)\n\
             output udp:   udp://239.1.1.1:5004 failing for 3 s: Network is unreachable (os error 101) (80 datagrams lost)\n"
        );
    }
}
