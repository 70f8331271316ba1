//! What a new user meets in the first hour, with the real binary: help per command, one-line
//! usage errors, the demo's real address, metrics read by Prometheus's own tools, a dead
//! bootstrap said aloud, plain config errors, an input that is not MPEG-TS, `ctl` without a
//! daemon, a missing channel key.

mod common;

use common::{free_port, keygen, tmpdir, Proc, BIN};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const COMMANDS: [&str; 7] = ["keygen", "source", "peer", "run", "ctl", "demo", "sim"];

/// A helper process killed when the test ends, passed or not.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn require(tool: &str, package: &str) {
    let ok = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{tool} is required by this test and was not found on PATH (Debian: apt-get install {package})"
    );
}

/// One HTTP GET: (status line, body), reading at most `wait`.
fn get(port: u16, path: &str, wait: Duration) -> (String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").unwrap();
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    let text = String::from_utf8_lossy(&all).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

#[test]
fn every_command_has_its_own_help_and_a_usage_error_is_one_line_and_a_hint() {
    for c in COMMANDS {
        for form in [vec![c, "--help"], vec![c, "-h"], vec!["help", c]] {
            let (rc, out, err) = run(&form);
            assert_eq!(rc, 0, "{form:?}: {err}");
            assert!(
                out.starts_with(&format!("usage: coolstream {c}")),
                "{form:?}: {out}"
            );
        }
    }
    let (_, sim, _) = run(&["sim", "--help"]);
    assert!(
        sim.contains("--peers") && sim.contains("--scenario"),
        "{sim}"
    );
    let (rc, out, _) = run(&["help"]);
    assert_eq!(rc, 0);
    assert!(COMMANDS.iter().all(|c| out.contains(c)), "{out}");

    for (args, says) in [
        (vec!["sim", "--bogus"], "unknown option --bogus"),
        (vec!["sim", "--peers"], "--peers needs a value"),
        (vec!["ctl", "--bogus"], "unknown option --bogus"),
        (vec!["peer", "--channel", "00"], "64 hex characters"),
    ] {
        let (rc, out, err) = run(&args);
        assert_eq!(rc, 2, "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?}: {out}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 2, "{args:?}: {err}");
        assert!(lines[0].contains(says), "{args:?}: {err}");
        assert!(
            lines[1].contains(&format!("coolstream {} --help", args[0])),
            "{args:?}: {err}"
        );
    }
    let (rc, _, err) = run(&["bogus"]);
    assert_eq!(rc, 2);
    assert!(
        err.contains("unknown command 'bogus'") && err.contains("coolstream help"),
        "{err}"
    );
}

/// With its preferred port taken, the demo prints (and reports in JSON) the port it bound,
/// serves the channel there, and its `/metrics` passes `promtool check metrics` and is
/// scraped by a real Prometheus.
#[test]
fn the_demo_prints_the_address_it_bound_and_prometheus_scrapes_its_metrics() {
    require("promtool", "prometheus");
    require("prometheus", "prometheus");
    let dir = tmpdir("first-demo");
    // Whoever holds 8090 (this listener or another process), the demo cannot have it.
    let _held = std::net::TcpListener::bind("127.0.0.1:8090");
    let mut demo = Command::new(BIN)
        .args(["demo", "--peers", "2", "--seconds", "25", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = demo.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut log = Vec::new();
    let open = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the demo prints the URL to open");
        log.push(line.clone());
        if line.contains(" open ") {
            break line;
        }
    };
    assert!(!open.contains("Ctrl-C"), "{open}");
    assert!(open.contains("stops after 25 s"), "{open}");
    let url = open
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .to_string();
    let port: u16 = url
        .trim_start_matches("http://127.0.0.1:")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("{url}"));
    assert!(port != 0 && port != 8090, "{url}");

    // The channel plays at that address.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /ch/demo.ts HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let n = s.read(&mut buf).unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n.min(200)])
    );
    drop(s);

    // Prometheus scrapes it every second while promtool checks one scrape.
    let prom_port = free_port();
    let yml = dir.join("prometheus.yml");
    std::fs::write(
        &yml,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: coolstream\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
        ),
    )
    .unwrap();
    let prom_log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let prom = Killed(
        Command::new("prometheus")
            .args([
                &format!("--config.file={}", yml.display()),
                &format!("--storage.tsdb.path={}", dir.join("tsdb").display()),
                &format!("--web.listen-address=127.0.0.1:{prom_port}"),
            ])
            .stdout(prom_log.try_clone().unwrap())
            .stderr(prom_log)
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_secs(4));
    let (status, metrics) = get(port, "/metrics", Duration::from_secs(5));
    assert!(status.contains("200"), "{status}");
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let checked = check.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool: {}{}\n{metrics}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    let played = metrics
        .lines()
        .find(|l| l.starts_with("coolstream_segments_played_total{channel=\"demo\",role=\"peer\"}"))
        .unwrap_or_else(|| panic!("{metrics}"));
    let played: f64 = played.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(played >= 1.0, "{metrics}");
    assert!(
        metrics.contains("coolstream_partners{channel=\"demo\""),
        "{metrics}"
    );

    // What Prometheus stored from its scrapes.
    let until = Instant::now() + Duration::from_secs(15);
    let answer = loop {
        let (_, body) = get(
            prom_port,
            "/api/v1/query?query=coolstream_upload_bytes_total",
            Duration::from_secs(3),
        );
        if body.contains("\"job\":\"coolstream\"") || Instant::now() > until {
            break body;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        answer.contains("\"channel\":\"demo\""),
        "prometheus holds no coolstream sample: {answer}"
    );
    drop(prom);

    // The status page shows the channel, its continuity and partners.
    let (_, page) = get(port, "/", Duration::from_secs(5));
    assert!(page.contains("/ch/demo.ts"), "{page}");
    assert!(
        page.contains("class=continuity>") && page.contains("class=partners>"),
        "{page}"
    );

    let out = demo.wait_with_output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["url"].as_str(), Some(url.as_str()));
    let rest: Vec<String> = rx.try_iter().collect();
    assert!(!rest.iter().any(|l| l.contains(" 1 players")), "{rest:?}");
    common::remove_tmpdir(&dir);
}

/// A peer whose bootstrap refuses says so at warn level, names the address, keeps trying,
/// says why in its stats, answers players 503 with the reason, and stops at once on SIGTERM.
#[test]
fn a_dead_bootstrap_is_said_aloud_and_players_get_503_with_the_reason() {
    let dir = tmpdir("first-dead");
    let (_, id) = keygen(&dir);
    let dead = free_port();
    let http = free_port();
    let stats = dir.join("stats.json");
    let log = dir.join("peer.log");
    let mut peer = Proc::start(
        "peer",
        &[
            "peer",
            "--channel",
            &id,
            "--bootstrap",
            &format!("127.0.0.1:{dead}"),
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--http",
            &format!("127.0.0.1:{http}"),
            "--stats-json",
            stats.to_str().unwrap(),
        ],
        &log,
    );
    common::wait_for("the player's answer", Duration::from_secs(5), || {
        TcpStream::connect(("127.0.0.1", http)).ok()
    });
    let asked = Instant::now();
    let (status, body) = get(http, &format!("/ch/{id}.ts"), Duration::from_secs(25));
    let waited = asked.elapsed();
    assert!(status.contains("503"), "{status} {body}");
    assert!(
        body.contains(&format!("127.0.0.1:{dead}")) && body.contains("refused"),
        "{body}"
    );
    // Held a while for the first segment, not forever.
    assert!(
        waited >= Duration::from_secs(10) && waited < Duration::from_secs(20),
        "{waited:?}"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let warns: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("WARN") && l.contains(&format!("bootstrap 127.0.0.1:{dead}")))
        .collect();
    // The first failure, then again after 2, 4 (and 8) tries: it keeps trying.
    assert!(warns.len() >= 3, "{text}");
    assert!(warns[0].contains("refused"), "{text}");
    let s = common::read_json(&stats).unwrap();
    assert!(
        s["problem"]
            .as_str()
            .is_some_and(|p| p.contains(&format!("127.0.0.1:{dead}"))),
        "{s}"
    );
    let t = Instant::now();
    assert_eq!(peer.stop(), Some(0));
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    common::remove_tmpdir(&dir);
}

#[test]
fn config_errors_are_all_reported_in_plain_words_with_their_place() {
    let dir = tmpdir("first-config");
    let f = dir.join("bad.toml");
    std::fs::write(
        &f,
        "log_level = \"loud\"\n[limits]\nupload_kbps = \"4000\"\nmax_partners = 2.5\nlistn = 1\n",
    )
    .unwrap();
    let (rc, _, err) = run(&["run", "--config", f.to_str().unwrap()]);
    assert_eq!(rc, 2, "{err}");
    let lines: Vec<&str> = err.lines().collect();
    let at = |i: usize| format!("{}:{i}:", f.display());
    assert_eq!(lines.len(), 4, "{err}");
    assert!(
        lines[0].contains(&at(1)) && lines[0].contains("not a log level"),
        "{err}"
    );
    assert!(
        lines[1].contains(&at(3))
            && lines[1].contains("expected a whole number, found the text \"4000\""),
        "{err}"
    );
    assert!(
        lines[2].contains(&at(4)) && lines[2].contains("found the number 2.5"),
        "{err}"
    );
    assert!(
        lines[3].contains(&at(5)) && lines[3].contains("unknown key `listn`"),
        "{err}"
    );
    assert!(
        !err.contains("i64") && !err.contains("invalid type"),
        "{err}"
    );
    common::remove_tmpdir(&dir);
}

#[test]
fn an_input_that_is_not_mpeg_ts_is_named_as_such() {
    let dir = tmpdir("first-notts");
    let (key, _) = keygen(&dir);
    let text = dir.join("notes.txt");
    std::fs::write(&text, "this is not a transport stream\n".repeat(100)).unwrap();
    let junk = dir.join("junk.bin");
    // 100 kB with no sync byte at all, looped: a warning while it goes on.
    std::fs::write(&junk, vec![0x55u8; 100_000]).unwrap();
    for (input, says) in [
        (format!("file:{}", text.display()), "is not MPEG-TS"),
        (
            format!("file:{}?loop", junk.display()),
            "not MPEG-TS: only 0 of its first",
        ),
    ] {
        let log = dir.join("source.log");
        let mut source = Proc::start(
            "source",
            &[
                "source",
                "--key",
                key.to_str().unwrap(),
                "--name",
                "x",
                "--input",
                &input,
                "--listen",
                &format!("127.0.0.1:{}", free_port()),
            ],
            &log,
        );
        common::wait_for(says, Duration::from_secs(10), || {
            std::fs::read_to_string(&log)
                .unwrap()
                .lines()
                .any(|l| l.contains(&input) && l.contains(says))
                .then_some(())
        });
        source.stop();
    }
    common::remove_tmpdir(&dir);
}

#[test]
fn ctl_without_a_daemon_and_a_missing_key_say_what_is_missing() {
    let dir = tmpdir("first-ctl");
    let sock = dir.join("control.sock");
    let (rc, _, err) = run(&["ctl", "--socket", sock.to_str().unwrap(), "status"]);
    assert_eq!(rc, 1);
    assert!(
        err.contains(&sock.display().to_string()) && err.contains("`coolstream run` running"),
        "{err}"
    );
    let key = dir.join("nope.key");
    let (rc, _, err) = run(&[
        "source",
        "--key",
        key.to_str().unwrap(),
        "--name",
        "x",
        "--input",
        "-",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(rc, 1);
    assert!(
        err.contains("channel key") && err.contains("coolstream keygen"),
        "{err}"
    );
    common::remove_tmpdir(&dir);
}

/// An HD stream (about 3.5 Mbit/s H.264) with default settings: the source uploads a few
/// copies of what it measured (not the 3000 kbit/s default below one copy), a peer fed by it
/// plays, and a peer whose cap is below the stream's rate is told so.
#[test]
fn an_hd_stream_gets_a_source_upload_that_fits_and_a_short_peer_is_warned() {
    common::require_ffmpeg();
    let dir = tmpdir("first-hd");
    let (key, id) = keygen(&dir);
    let ts = dir.join("hd.ts");
    let made = Command::new("ffmpeg")
        .args([
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=1280x720:rate=25",
            "-t",
            "8",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-b:v",
            "3200k",
            "-minrate",
            "3200k",
            "-maxrate",
            "3400k",
            "-bufsize",
            "3400k",
            "-g",
            "25",
            "-x264-params",
            "nal-hrd=cbr",
            "-f",
            "mpegts",
        ])
        .arg(&ts)
        .status()
        .unwrap();
    assert!(made.success());
    let sp = free_port();
    let slog = dir.join("source.log");
    let _source = Proc::start(
        "source",
        &[
            "source",
            "--key",
            key.to_str().unwrap(),
            "--name",
            "hd",
            "--input",
            &format!("file:{}?loop", ts.display()),
            "--listen",
            &format!("127.0.0.1:{sp}"),
        ],
        &slog,
    );
    let stats = dir.join("peer.json");
    let plog = dir.join("peer.log");
    std::thread::sleep(Duration::from_secs(3));
    let mut peer = Proc::start(
        "peer",
        &[
            "peer",
            "--channel",
            &id,
            "--bootstrap",
            &format!("127.0.0.1:{sp}"),
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--stats-json",
            stats.to_str().unwrap(),
        ],
        &plog,
    );
    std::thread::sleep(Duration::from_secs(20));
    let s = common::read_json(&stats).unwrap();
    let text = std::fs::read_to_string(&slog).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("the input runs at"))
        .unwrap_or_else(|| panic!("{text}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let num = |after: &str| -> u64 {
        let i = words.iter().position(|w| *w == after).unwrap();
        words[i + 1].parse().unwrap_or_else(|_| panic!("{line}"))
    };
    let (input, cap) = (num("at"), num("cap"));
    assert!((3000..4500).contains(&input), "{line}");
    assert_eq!(cap, 4 * input, "{line}");
    let ci = s["continuity"].as_f64().unwrap();
    assert!(ci >= 0.95, "continuity {ci}: {s}");
    assert!(s["segments_played"].as_u64().unwrap() >= 12, "{s}");
    let kbps = s["stream_kbps"].as_f64().unwrap();
    assert!((3000.0..4500.0).contains(&kbps), "{s}");
    // The peer's default cap (3000 kbit/s) cannot relay one copy: said at warn level.
    let w = s["upload_warning"]
        .as_str()
        .unwrap_or_else(|| panic!("{s}"));
    assert!(
        w.contains("upload cap 3000 kbit/s is below the stream's"),
        "{w}"
    );
    let plog_text = std::fs::read_to_string(&plog).unwrap();
    assert!(
        plog_text
            .lines()
            .any(|l| l.contains("WARN") && l.contains("upload cap 3000 kbit/s")),
        "{plog_text}"
    );
    let t = Instant::now();
    assert_eq!(peer.stop(), Some(0));
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    common::remove_tmpdir(&dir);
}

/// The status page as a real browser shows it: headless Chromium renders `/` of a playing
/// demo to a screenshot and to its DOM, which has the channel, its continuity and partners.
#[test]
fn the_status_page_renders_in_chromium_with_channel_continuity_and_partners() {
    require("chromium", "chromium");
    let dir = tmpdir("first-chromium");
    let mut demo = Command::new(BIN)
        .args(["demo", "--peers", "2", "--seconds", "30"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = demo.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines().map_while(Result::ok);
    let open = lines
        .find(|l| l.contains(" open "))
        .expect("the demo prints its URL");
    std::thread::spawn(move || lines.for_each(drop));
    let url = open
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap();
    let page = url.split("/ch/").next().unwrap().to_string() + "/";
    // Let the peers play a few segments.
    std::thread::sleep(Duration::from_secs(8));
    let chromium = |args: &[&str]| {
        Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--window-size=1000,600",
            ])
            .args(args)
            .arg(&page)
            .output()
            .unwrap()
    };
    let shot = dir.join("status.png");
    let out = chromium(&[&format!("--screenshot={}", shot.display())]);
    assert!(out.status.success(), "{out:?}");
    let png = std::fs::read(&shot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let w = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert_eq!((w, h), (1000, 600));
    // A blank page compresses to well under a kilobyte; this one has a table of text.
    assert!(png.len() > 5_000, "{} bytes", png.len());
    let dom = String::from_utf8_lossy(&chromium(&["--dump-dom"]).stdout).to_string();
    let cell = |class: &str| -> String {
        let tag = format!("class=\"{class}\">");
        let at = dom
            .find(&tag)
            .unwrap_or_else(|| panic!("no {class}: {dom}"))
            + tag.len();
        dom[at..].split('<').next().unwrap().to_string()
    };
    assert!(dom.contains("<a href=\"/ch/demo.ts\">demo</a>"), "{dom}");
    assert_eq!(cell("state"), "playing", "{dom}");
    let ci: f64 = cell("continuity").parse().unwrap();
    assert!(ci > 0.9, "{dom}");
    let partners: u32 = cell("partners").parse().unwrap();
    assert!(partners >= 1, "{dom}");
    let _ = demo.kill();
    let _ = demo.wait();
    common::remove_tmpdir(&dir);
}

const ASSET: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/demo.ts");

/// A source of the bundled stream named `name` at `port`, logging to `log`.
fn asset_source(
    key: &std::path::Path,
    name: &str,
    port: u16,
    extra: &[&str],
    log: &std::path::Path,
) -> Proc {
    let input = format!("file:{ASSET}?loop");
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec![
        "source",
        "--key",
        key.to_str().unwrap(),
        "--name",
        name,
        "--input",
        &input,
        "--listen",
        &listen,
    ];
    args.extend_from_slice(extra);
    Proc::start("source", &args, log)
}

/// Peers not told the channel's name learn it from the stream, with or without outputs: their
/// stats, the `players:` log line, `/playlist.m3u` and the metrics' label all say it, and
/// none says the id's prefix any more.
#[test]
fn a_peer_calls_the_channel_by_its_real_name_once_learnt_with_or_without_outputs() {
    let dir = tmpdir("first-name");
    let (key, id) = keygen(&dir);
    let short = &id[..12];
    let sp = free_port();
    let _source = asset_source(&key, "news", sp, &[], &dir.join("source.log"));
    std::thread::sleep(Duration::from_secs(2));
    let bare_stats = dir.join("bare.json");
    let seen_stats = dir.join("seen.json");
    let http = free_port();
    let boot = format!("127.0.0.1:{sp}");
    let _bare = Proc::start(
        "bare peer",
        &[
            "peer",
            "--channel",
            &id,
            "--bootstrap",
            &boot,
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--stats-json",
            bare_stats.to_str().unwrap(),
        ],
        &dir.join("bare.log"),
    );
    let seen_log = dir.join("seen.log");
    let _seen = Proc::start(
        "peer with outputs",
        &[
            "peer",
            "--channel",
            &id,
            "--bootstrap",
            &boot,
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--http",
            &format!("127.0.0.1:{http}"),
            "--stats-json",
            seen_stats.to_str().unwrap(),
        ],
        &seen_log,
    );
    for stats in [&bare_stats, &seen_stats] {
        let s = common::wait_for("segments played", Duration::from_secs(30), || {
            common::read_json(stats).filter(|s| s["segments_played"].as_u64() >= Some(3))
        });
        // Rewritten every 2 s: the next document has seen the played segments' SDT.
        std::thread::sleep(Duration::from_millis(2500));
        let s2 = common::read_json(stats).unwrap_or(s);
        assert_eq!(s2["name"], "news", "{}: {s2}", stats.display());
    }
    let (_, m3u) = get(http, "/playlist.m3u", Duration::from_secs(2));
    assert!(
        m3u.contains(&format!("http://127.0.0.1:{http}/ch/news.ts")) && !m3u.contains(short),
        "{m3u}"
    );
    let (_, metrics) = get(http, "/metrics", Duration::from_secs(2));
    assert!(
        metrics.contains("coolstream_segments_played_total{channel=\"news\",role=\"peer\"}")
            && !metrics.contains(short),
        "{metrics}"
    );
    let (_, page) = get(http, "/", Duration::from_secs(2));
    assert!(
        page.contains("news") && !page.contains(&format!(">{short}")),
        "{page}"
    );
    let log = std::fs::read_to_string(&seen_log).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains(&format!("players: http://127.0.0.1:{http}/ch/news.ts"))),
        "{log}"
    );
    let bare_log = std::fs::read_to_string(dir.join("bare.log")).unwrap();
    assert!(
        bare_log.contains("channel name from the stream: news"),
        "{bare_log}"
    );
    common::remove_tmpdir(&dir);
}

/// A peer starved by a source that uploads far less than one copy of the stream: startup
/// and lag are absent until a segment has played by its deadline, and then plausible (lag no
/// more than the time the peer has run plus the start buffer, not growing with wall time
/// while nothing new arrives); continuity says the starvation.
#[test]
fn a_starved_peer_reports_plausible_startup_and_lag() {
    let dir = tmpdir("first-starved");
    let (key, id) = keygen(&dir);
    let sp = free_port();
    let slog = dir.join("source.log");
    // The bundled stream runs at about 410 kbit/s: 300 kbit/s is three quarters of one copy.
    let _source = asset_source(&key, "tiny", sp, &["--upload-kbps", "300"], &slog);
    std::thread::sleep(Duration::from_secs(2));
    let stats = dir.join("peer.json");
    let mut peer = Proc::start(
        "starved peer",
        &[
            "peer",
            "--channel",
            &id,
            "--bootstrap",
            &format!("127.0.0.1:{sp}"),
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--stats-json",
            stats.to_str().unwrap(),
        ],
        &dir.join("peer.log"),
    );
    let mut samples = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(40) {
        std::thread::sleep(Duration::from_secs(4));
        if let Some(s) = common::read_json(&stats) {
            eprintln!(
                "starved sample: played {} missed {} startup {} lag {} uptime {} ci {}",
                s["segments_played"],
                s["segments_missed"],
                s["startup_s"],
                s["lag_s"],
                s["uptime_s"],
                s["continuity"]
            );
            samples.push(s);
        }
    }
    assert!(samples.len() >= 5, "{samples:?}");
    let mut played_before = 0;
    for s in &samples {
        let played = s["segments_played"].as_u64().unwrap();
        // A counter: a stall does not take back what was counted played.
        assert!(
            played >= played_before,
            "{played} after {played_before}: {s}"
        );
        played_before = played;
        let uptime = s["uptime_s"].as_f64().unwrap();
        if played == 0 {
            assert!(s["startup_s"].is_null() && s["lag_s"].is_null(), "{s}");
            continue;
        }
        let startup = s["startup_s"].as_f64().unwrap_or_else(|| panic!("{s}"));
        let lag = s["lag_s"].as_f64().unwrap_or_else(|| panic!("{s}"));
        assert!(startup > 0.0 && startup < uptime, "{s}");
        // The start buffer is a few segments behind the edge; beyond that, lag only grows
        // as far as the edge moves on while the picture waits, never past the time run.
        assert!(lag >= 0.0 && lag < uptime + 5.0, "{s}");
        let ci = s["continuity"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&ci), "{s}");
    }
    let last = samples.last().unwrap();
    eprintln!("starved peer: {last}");
    assert!(
        last["continuity"].as_f64().unwrap() < 0.95,
        "three quarters of one copy cannot feed a peer: {last}"
    );
    let t = Instant::now();
    assert_eq!(peer.stop(), Some(0));
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    common::remove_tmpdir(&dir);
}

/// `run --stats-json FILE`, like `peer`'s: one JSON document rewritten every 2 s with every
/// configured channel (the tuned one playing, the other on standby) and the outputs, as
/// `ctl stats` answers them.
#[test]
fn run_writes_every_channels_figures_to_its_stats_json() {
    let dir = tmpdir("first-runstats");
    let (key, id) = keygen(&dir);
    let sp = free_port();
    let _source = asset_source(&key, "news", sp, &[], &dir.join("source.log"));
    let quiet = dir.join("quiet");
    std::fs::create_dir_all(&quiet).unwrap();
    let (_, other) = keygen(&quiet);
    let sock = dir.join("ctl.sock");
    let stats = dir.join("box.json");
    let config = dir.join("box.toml");
    std::fs::write(
        &config,
        format!(
            "control_socket = \"{}\"\nlisten = \"127.0.0.1:0\"\n\
             [outputs]\nhttp = \"127.0.0.1:{}\"\n\
             [[channel]]\nname = \"news\"\nid = \"{id}\"\nbootstrap = [\"127.0.0.1:{sp}\"]\n\
             [[channel]]\nname = \"quiet\"\nid = \"{other}\"\nbootstrap = [\"127.0.0.1:{}\"]\n",
            sock.display(),
            free_port(),
            free_port()
        ),
    )
    .unwrap();
    let mut run = Proc::start(
        "run",
        &[
            "run",
            "--config",
            config.to_str().unwrap(),
            "--stats-json",
            stats.to_str().unwrap(),
        ],
        &dir.join("run.log"),
    );
    let s = common::wait_for("the tuned channel playing", Duration::from_secs(30), || {
        common::read_json(&stats)
            .filter(|s| s["channels"][0]["segments_played"].as_u64() >= Some(3))
    });
    let chans = s["channels"].as_array().unwrap();
    assert_eq!(chans.len(), 2, "{s}");
    assert_eq!(chans[0]["name"], "news", "{s}");
    assert_eq!(chans[0]["tuned"], true, "{s}");
    assert_eq!(chans[0]["state"], "playing", "{s}");
    assert!(chans[0]["continuity"].as_f64().unwrap() > 0.9, "{s}");
    assert_eq!(chans[1]["name"], "quiet", "{s}");
    assert_eq!(chans[1]["tuned"], false, "{s}");
    assert!(s["outputs"].is_array() && s.get("ok").is_none(), "{s}");
    // Rewritten while it runs: uptime moves on.
    let up = chans[0]["uptime_s"].as_f64().unwrap();
    let later = common::wait_for("a newer document", Duration::from_secs(6), || {
        common::read_json(&stats).filter(|s| {
            s["channels"][0]["uptime_s"]
                .as_f64()
                .is_some_and(|u| u > up)
        })
    });
    assert!(later["channels"][0]["segments_played"].as_u64() >= Some(3));
    assert_eq!(run.stop(), Some(0));
    common::remove_tmpdir(&dir);
}

/// An MPTS input (two programs made by ffmpeg, named `alpha` and `beta` in its SDT): a peer's
/// players see both programs, the first under the channel's name and the second under its
/// own, as ffprobe lists them from the peer's HTTP output.
#[test]
fn every_program_of_an_mpts_keeps_a_service_name_players_see() {
    common::require_ffmpeg();
    let dir = tmpdir("first-mpts");
    let (key, id) = keygen(&dir);
    let ts = dir.join("two.ts");
    let made = Command::new("ffmpeg")
        .args([
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x240:rate=25",
            "-f",
            "lavfi",
            "-i",
            "smptebars=size=320x240:rate=25",
            "-t",
            "6",
            "-map",
            "0:v",
            "-map",
            "1:v",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "25",
            "-b:v",
            "300k",
            "-program",
            "program_num=1:title=alpha:st=0",
            "-program",
            "program_num=2:title=beta:st=1",
            "-f",
            "mpegts",
        ])
        .arg(&ts)
        .status()
        .unwrap();
    assert!(made.success());
    let services = |path: &std::path::Path| -> Vec<String> {
        let out = Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-show_entries",
                "program=program_num:program_tags=service_name",
                "-of",
                "csv=p=0",
            ])
            .arg(path)
            .output()
            .unwrap();
        let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim_end_matches(',').to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(services(&ts), vec!["1,alpha", "2,beta"]);
    let sp = free_port();
    let _source = Proc::start(
        "source",
        &[
            "source",
            "--key",
            key.to_str().unwrap(),
            "--name",
            "news",
            "--input",
            &format!("file:{}?loop", ts.display()),
            "--listen",
            &format!("127.0.0.1:{sp}"),
        ],
        &dir.join("source.log"),
    );
    std::thread::sleep(Duration::from_secs(2));
    let http = free_port();
    let stats = dir.join("peer.json");
    let _peer = Proc::start(
        "peer",
        &[
            "peer",
            "--channel",
            &id,
            "--bootstrap",
            &format!("127.0.0.1:{sp}"),
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--http",
            &format!("127.0.0.1:{http}"),
            "--stats-json",
            stats.to_str().unwrap(),
        ],
        &dir.join("peer.log"),
    );
    common::wait_for("segments played", Duration::from_secs(30), || {
        common::read_json(&stats).filter(|s| s["segments_played"].as_u64() >= Some(3))
    });
    let (head, body) = common::http_get(http, "/ch/news.ts", Duration::from_secs(4), 4 << 20);
    assert!(head.contains("200"), "{head}");
    let got = dir.join("got.ts");
    std::fs::write(&got, &body).unwrap();
    assert_eq!(
        services(&got),
        vec!["1,news", "2,beta"],
        "{} bytes",
        body.len()
    );
    common::remove_tmpdir(&dir);
}
