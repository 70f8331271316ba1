//! The HTTP output: a small HTTP/1.1 server for players on the box (localhost by default).
//!
//! - `GET /ch/NAME.ts`: `200`, `video/mp2t`, no length. The player starts at the feed's start
//!   point (see [`super::Feed::subscribe`]), spliced per player ([`crate::media::splice`]):
//!   - **the catch-up burst**: everything from the start point to the newest played segment
//!     goes out at once, and what the node plays next too until the player has had
//!     [`START_BURST`] of stream: that fills the player's probe buffer, so it shows a picture
//!     fast, even right after a channel change, when the node holds little yet;
//!   - **then paced by the stream's clock** ([`super::pace`]): each segment the node plays
//!     next goes out as the PCR places its packets, written every [`WRITE_TICK`], so the
//!     player gets its frames at the rate they play, not a segment's worth at once and then
//!     nothing for a segment's duration. Pacing waits only for the stream's own time: the
//!     start of a segment is never sent more than [`MAX_DELAY`](super::pace::MAX_DELAY)
//!     after the node played it (the player catches up in a burst instead).
//!
//!   Asking for another channel's URL is how an HTTP player changes channel in a process that
//!   serves several ([`super::Channels`]).
//! - Each client reads from its own bounded queue ([`super::FEED_QUEUE`] segments) into its
//!   pacer (at most [`MAX_PACED_BYTES`](super::pace::MAX_PACED_BYTES) waiting). A client
//!   that falls that far behind skips ahead to the next entry point (the break is signalled
//!   in the stream); one that falls behind again within [`LAG_WINDOW`], or takes longer than
//!   [`WRITE_STALL`] to take a segment, is closed. The node and the other players never wait
//!   for it.
//!   A channel that has played nothing yet holds the request up to [`FIRST_DATA_WAIT`] for
//!   its first segment (a player opened while the node joins just starts a little later),
//!   then answers `503` with the reason and `Retry-After`: a player shows an error rather
//!   than a black screen that never ends.
//! - `GET /playlist.m3u`: every channel as an `#EXTM3U` playlist (VLC, Kodi).
//! - `GET /`: a short status page: each channel, its continuity, partners and players.
//! - `GET /metrics`: the node's figures in the Prometheus text format ([`metrics`]).
//!
//! At most [`MAX_HTTP_CLIENTS`] connections; the request head is read with a deadline and a
//! size cap, and parsed with `httparse`.

use super::pace::Pacer;
use super::{metrics, Channels, Feed, FeedItem};
use crate::daemon::stats::NodeReport;
use crate::media::splice::Splicer;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, Semaphore};
use tokio::task::JoinSet;

/// Connections served at once (players, playlist and status requests).
pub const MAX_HTTP_CLIENTS: usize = 16;
/// Largest request head read.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// Headers parsed at most.
pub const MAX_HEADERS: usize = 32;
/// Time a client has to send its request head.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a player may take to accept one segment before it is dropped.
pub const WRITE_STALL: Duration = Duration::from_secs(10);
/// A player that falls behind twice within this long cannot keep up and is closed.
pub const LAG_WINDOW: Duration = Duration::from_secs(30);
/// Stream time a player gets at once when it starts, as fast as the node has it, before its
/// bytes are paced: enough for a player to probe the stream and show a picture without
/// waiting for real time to pass (libavformat's players, ffplay, mpv and Kodi among them,
/// read 5 s by default), with a second to spare.
pub const START_BURST: Duration = Duration::from_secs(6);
/// How often a paced player is written to: everything due goes out in one write. Frames are
/// 33-40 ms apart at 25-30 fps, so 20 ms keeps each within a frame time of where its PCR
/// places it, at 50 writes a second per player rather than one per packet.
pub const WRITE_TICK: Duration = Duration::from_millis(20);

/// How long a request for a channel that has played nothing yet waits for its first segment.
pub const FIRST_DATA_WAIT: Duration = Duration::from_secs(15);
/// What a `503` for a channel with no data yet asks the player to wait, seconds.
const RETRY_AFTER_S: u32 = 5;

/// The figures of the nodes behind this server (one per channel it serves), for `/` and
/// `/metrics`; the daemon supplies them.
pub type StatusFn = Arc<dyn Fn() -> Vec<NodeReport> + Send + Sync>;

/// What a request asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    Stream(String),
    Playlist,
    Index,
    Metrics,
    NotFound,
    MethodNotAllowed,
}

/// A parsed request head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub route: Route,
    pub host: Option<String>,
}

/// Parses a request head: `Ok(None)` if more bytes are needed.
pub fn parse_request(buf: &[u8]) -> Result<Option<Request>, httparse::Error> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf)? {
        httparse::Status::Partial => Ok(None),
        httparse::Status::Complete(_) => {
            let host = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("host"))
                .and_then(|h| std::str::from_utf8(h.value).ok())
                .map(|s| s.to_string());
            let path = req.path.unwrap_or("/");
            let path = path.split(['?', '#']).next().unwrap_or("/");
            let route = if !matches!(req.method, Some("GET") | Some("HEAD")) {
                Route::MethodNotAllowed
            } else if path == "/" || path == "/index.html" {
                Route::Index
            } else if path == "/playlist.m3u" || path == "/playlist.m3u8" {
                Route::Playlist
            } else if path == "/metrics" {
                Route::Metrics
            } else if let Some(name) = path
                .strip_prefix("/ch/")
                .and_then(|n| n.strip_suffix(".ts"))
            {
                Route::Stream(name.to_string())
            } else {
                Route::NotFound
            };
            Ok(Some(Request { route, host }))
        }
    }
}

/// Serves players on `listener` until the task is dropped (which also ends every client).
pub async fn serve(listener: TcpListener, channels: Arc<Channels>, status: StatusFn) {
    serve_limited(listener, channels, status, MAX_HTTP_CLIENTS).await
}

/// [`serve`] with at most `max_clients` connections (at most [`MAX_HTTP_CLIENTS`]): a box
/// with little memory takes fewer players.
pub async fn serve_limited(
    listener: TcpListener,
    channels: Arc<Channels>,
    status: StatusFn,
    max_clients: usize,
) {
    let limit = Arc::new(Semaphore::new(max_clients.clamp(1, MAX_HTTP_CLIENTS)));
    let local = listener.local_addr().ok();
    let mut clients = JoinSet::new();
    loop {
        // Reap finished clients so the set stays as small as the limit.
        while clients.try_join_next().is_some() {}
        let (sock, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                log::warn!("http accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            let _ = sock
                .try_write(b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
            continue;
        };
        let channels = channels.clone();
        let status = status.clone();
        clients.spawn(async move {
            let _permit = permit;
            let fallback_host = local.map(|a| a.to_string()).unwrap_or_default();
            if let Err(e) = client(sock, &channels, &status, &fallback_host).await {
                log::debug!("http client: {e}");
            }
        });
    }
}

async fn read_head(sock: &mut TcpStream) -> std::io::Result<Option<Request>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        match parse_request(&buf) {
            Ok(Some(r)) => return Ok(Some(r)),
            Ok(None) if buf.len() < MAX_REQUEST_HEAD => continue,
            _ => return Ok(None),
        }
    }
}

async fn respond(
    sock: &mut TcpStream,
    status: &str,
    ctype: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-cache\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await?;
    sock.write_all(body.as_bytes()).await?;
    sock.shutdown().await
}

async fn client(
    mut sock: TcpStream,
    channels: &Channels,
    status: &StatusFn,
    fallback_host: &str,
) -> std::io::Result<()> {
    let req = match tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut sock)).await {
        Ok(r) => r?,
        Err(_) => None,
    };
    let Some(req) = req else {
        return respond(&mut sock, "400 Bad Request", "text/plain", "bad request\n").await;
    };
    let host = req
        .host
        .clone()
        .unwrap_or_else(|| fallback_host.to_string());
    match req.route {
        Route::Stream(n) => match channels.find(&n) {
            Some(feed) => stream(sock, feed, status).await,
            None => {
                respond(
                    &mut sock,
                    "404 Not Found",
                    "text/plain",
                    "no such channel\n",
                )
                .await
            }
        },
        Route::NotFound => respond(&mut sock, "404 Not Found", "text/plain", "not found\n").await,
        Route::MethodNotAllowed => {
            respond(
                &mut sock,
                "405 Method Not Allowed",
                "text/plain",
                "GET only\n",
            )
            .await
        }
        Route::Playlist => {
            let body = playlist(&channels.list(), &host);
            respond(&mut sock, "200 OK", "audio/x-mpegurl", &body).await
        }
        Route::Metrics => {
            let body = metrics::render(&status());
            respond(&mut sock, "200 OK", metrics::CONTENT_TYPE, &body).await
        }
        Route::Index => {
            let body = index_page(&channels.list(), &status());
            respond(&mut sock, "200 OK", "text/html; charset=utf-8", &body).await
        }
    }
}

/// The status page: per channel its link, state, continuity, partners and players, then
/// every figure of its node.
pub fn index_page(feeds: &[Arc<Feed>], reports: &[NodeReport]) -> String {
    let mut rows = String::new();
    for f in feeds {
        let n = html_escape(&f.name());
        let r = reports
            .iter()
            .find(|r| f.answers_to(&r.name) || f.answers_to(&r.channel));
        let cell = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        let state = match r {
            Some(r) if r.segments_played > 0 || r.role == "source" => "playing".to_string(),
            Some(r) => match &r.problem {
                Some(p) => format!("waiting: {}", html_escape(p)),
                None => "joining".to_string(),
            },
            None => "-".to_string(),
        };
        rows.push_str(&format!(
            "<tr><td><a href=\"/ch/{n}.ts\">{n}</a></td><td class=state>{state}</td>\
             <td class=continuity>{}</td><td class=partners>{}</td><td class=players>{}</td></tr>",
            cell(r.map(|r| format!("{:.3}", r.continuity))),
            cell(r.map(|r| r.partners.to_string())),
            f.subscribers(),
        ));
    }
    let details: String = reports
        .iter()
        .map(|r| html_escape(&serde_json::to_string_pretty(r).unwrap_or_default()))
        .collect::<Vec<_>>()
        .join("\n");
    format!(
        "<!doctype html><meta charset=utf-8><title>coolstream</title>\
         <style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:.2em 1em;text-align:left}}\
         table{{border-collapse:collapse;font-size:1.4em}}tr{{border-bottom:1px solid #ccc}}</style>\
         <h1>coolstream</h1><table><tr><th>channel</th><th>state</th><th>continuity</th>\
         <th>partners</th><th>players</th></tr>{rows}</table>\
         <p><a href=\"/playlist.m3u\">playlist</a> &middot; <a href=\"/metrics\">metrics</a></p>\
         <details><summary>all figures</summary><pre>{details}</pre></details>\n"
    )
}

/// An `#EXTM3U` playlist of `feeds` at `host`.
pub fn playlist(feeds: &[Arc<Feed>], host: &str) -> String {
    let mut body = String::from("#EXTM3U\n");
    for f in feeds {
        let n = f.name();
        body.push_str(&format!("#EXTINF:-1,{n}\nhttp://{host}/ch/{n}.ts\n"));
    }
    body
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Sends the channel to one player until it goes away, stalls, or cannot keep up.
async fn stream(mut sock: TcpStream, feed: Arc<Feed>, status: &StatusFn) -> std::io::Result<()> {
    let _ = sock.set_nodelay(true);
    let (mut start, mut rx) = feed.subscribe(Instant::now());
    if !start.iter().any(|i| matches!(i, FeedItem::Segment { .. })) {
        // Nothing played yet: wait a while for the first segment before promising a stream.
        let first = tokio::time::timeout(FIRST_DATA_WAIT, async {
            loop {
                match rx.recv().await {
                    Ok(item @ FeedItem::Segment { .. }) => return Some(item),
                    Ok(FeedItem::Gap { .. }) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .await;
        match first {
            Ok(Some(item)) => start = vec![item],
            _ => {
                let name = feed.name();
                let why = status()
                    .iter()
                    .find_map(|r| r.problem.clone())
                    .unwrap_or_else(|| "no partner has sent it yet".into());
                log::info!("http: a player asked for {name}, which has no data yet: {why}");
                let body = format!("channel {name} has played nothing yet: {why}\n");
                let head = format!(
                    "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nRetry-After: {RETRY_AFTER_S}\r\nConnection: close\r\nCache-Control: no-cache\r\n\r\n",
                    body.len()
                );
                sock.write_all(head.as_bytes()).await?;
                sock.write_all(body.as_bytes()).await?;
                return sock.shutdown().await;
            }
        }
    }
    sock.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\nConnection: close\r\nCache-Control: no-cache\r\n\r\n",
    )
    .await?;
    let mut splicer = Splicer::new();
    let mut buf = Vec::new();
    // The catch-up burst: the player's probe buffer fills at once.
    let mut burst = Duration::ZERO;
    for item in &start {
        burst += splice(&mut splicer, item, &mut buf);
        write(&mut sock, &buf).await?;
    }
    drop(start);
    // A node that has just started (a channel change) holds less than a probe's worth: the
    // burst goes on with what it plays next, as fast as it comes.
    let mut last_lag = None;
    while burst < START_BURST {
        match rx.recv().await {
            Ok(item) => {
                burst += splice(&mut splicer, &item, &mut buf);
                write(&mut sock, &buf).await?;
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                // Too slow for the burst: the break is signalled, and paced from here on.
                log::info!("http player fell {n} segments behind; skipping ahead");
                last_lag = Some(Instant::now());
                buf.clear();
                splicer.gap(&mut buf);
                write(&mut sock, &buf).await?;
                break;
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
    let mut pacer = Pacer::new();
    let r = paced(
        &mut sock,
        &mut rx,
        &mut splicer,
        &mut pacer,
        &mut buf,
        last_lag,
    )
    .await;
    log::debug!(
        "http player gone: paced segments waited at most {} ms to start, {} catch-ups",
        pacer.longest_wait.as_millis(),
        pacer.catch_ups
    );
    r
}

/// The live part of a player's stream: each item as the pacer schedules it. `last_lag`: when
/// the player last fell behind.
async fn paced(
    sock: &mut TcpStream,
    rx: &mut broadcast::Receiver<FeedItem>,
    splicer: &mut Splicer,
    pacer: &mut Pacer,
    buf: &mut Vec<u8>,
    mut last_lag: Option<Instant>,
) -> std::io::Result<()> {
    let mut next_write = Instant::now();
    loop {
        let wake = pacer.next_ready(Instant::now()).map(|d| d.max(next_write));
        tokio::select! {
            r = rx.recv() => {
                let now = Instant::now();
                match r {
                    Ok(item) => {
                        let dur = splice(splicer, &item, buf);
                        let caught_up = pacer.catch_ups;
                        pacer.push(buf, dur, now);
                        if pacer.catch_ups != caught_up {
                            log::debug!(
                                "http player more than {:?} behind the feed: caught up",
                                super::pace::MAX_DELAY
                            );
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        if last_lag.is_some_and(|t| now.duration_since(t) < LAG_WINDOW) {
                            log::info!("http player fell behind again ({n} segments); closing it");
                            return Ok(());
                        }
                        log::info!("http player fell {n} segments behind; skipping ahead");
                        last_lag = Some(now);
                        buf.clear();
                        splicer.gap(buf);
                        pacer.push(buf, Duration::ZERO, now);
                    }
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                }
            }
            _ = tokio::time::sleep_until(wake.unwrap_or(next_write).into()), if wake.is_some() => {
                let now = Instant::now();
                let n = pacer.ready(now);
                write(sock, pacer.take(n)).await?;
                next_write = now + WRITE_TICK;
            }
        }
    }
}

/// Splices one feed item into the player's stream in `buf`; returns its nominal duration.
fn splice(splicer: &mut Splicer, item: &FeedItem, buf: &mut Vec<u8>) -> Duration {
    buf.clear();
    match item {
        FeedItem::Segment { seg, .. } => {
            let f = seg.flags;
            splicer.segment(
                &seg.payload.data,
                f & crate::proto::wire::flags::ENTRY_POINT != 0,
                f & crate::proto::wire::flags::DISCONTINUITY != 0,
                buf,
            );
            Duration::from_micros(seg.duration_us as u64)
        }
        FeedItem::Gap { .. } => {
            splicer.gap(buf);
            Duration::ZERO
        }
    }
}

async fn write(sock: &mut TcpStream, data: &[u8]) -> std::io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    match tokio::time::timeout(WRITE_STALL, sock.write_all(data)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "player stalled",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_to_routes() {
        let r = parse_request(b"GET /ch/news.ts HTTP/1.1\r\nHost: box:8080\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(r.route, Route::Stream("news".into()));
        assert_eq!(r.host.as_deref(), Some("box:8080"));
        let route = |b: &[u8]| parse_request(b).unwrap().unwrap().route;
        assert_eq!(
            route(b"GET /playlist.m3u HTTP/1.1\r\n\r\n"),
            Route::Playlist
        );
        assert_eq!(route(b"GET /?x=1 HTTP/1.0\r\n\r\n"), Route::Index);
        assert_eq!(route(b"GET /ch/x.mp4 HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route(b"POST / HTTP/1.1\r\n\r\n"), Route::MethodNotAllowed);
        // Incomplete heads ask for more; garbage is an error, not a panic.
        assert_eq!(parse_request(b"GET /ch/a.ts HTTP/1.1\r\nHo").unwrap(), None);
        assert!(parse_request(b"\x00\x01\x02 junk\r\n\r\n").is_err());
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("X-{i}: y\r\n"))
            .collect();
        assert!(parse_request(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()).is_err());
    }
}
