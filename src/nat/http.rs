//! The HTTP/1.1 a UPnP client needs: URLs of the form `http://IPv4[:port]/path`, one request
//! per connection (`Connection: close`), and an answer read to a size cap and parsed with
//! `httparse` (Content-Length, chunked, or up to the end of the connection).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::NatError;

/// The most headers read from an answer.
const MAX_HEADERS: usize = 32;
/// The longest URL kept.
pub const MAX_URL: usize = 256;

/// An `http://` URL on an IPv4 address (routers give addresses, not names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub addr: SocketAddrV4,
    pub path: String,
}

impl std::fmt::Display for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}{}", self.addr, self.path)
    }
}

fn clean_path(p: &str) -> Result<String, String> {
    if p.len() > MAX_URL || p.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err("a URL path with spaces, controls or over 256 bytes".into());
    }
    Ok(if p.starts_with('/') {
        p.to_string()
    } else {
        format!("/{p}")
    })
}

/// Parses `http://a.b.c.d[:port][/path]`.
pub fn parse_url(s: &str) -> Result<Url, String> {
    if s.len() > MAX_URL {
        return Err("a URL over 256 bytes".into());
    }
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("HTTP://"))
        .ok_or_else(|| format!("not an http:// URL: {s:?}"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>().map_err(|_| format!("bad port in {s:?}"))?,
        ),
        None => (hostport, 80),
    };
    let ip: Ipv4Addr = host
        .parse()
        .map_err(|_| format!("not an IPv4 address in {s:?}"))?;
    if port == 0 {
        return Err(format!("port 0 in {s:?}"));
    }
    Ok(Url {
        addr: SocketAddrV4::new(ip, port),
        path: clean_path(path)?,
    })
}

/// A reference (absolute URL, absolute path or relative path) against a base URL.
pub fn resolve(base: &Url, r: &str) -> Result<Url, String> {
    if r.starts_with("http://") || r.starts_with("HTTP://") {
        return parse_url(r);
    }
    if r.starts_with('/') {
        return Ok(Url {
            addr: base.addr,
            path: clean_path(r)?,
        });
    }
    let dir = &base.path[..base.path.rfind('/').map_or(0, |i| i + 1)];
    Ok(Url {
        addr: base.addr,
        path: clean_path(&format!("{dir}{r}"))?,
    })
}

/// An answer: status and body.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Parses an answer held in `buf` (`eof`: the connection has ended). `Ok(None)`: more bytes
/// are needed. A body over `cap` is an error before anything is copied.
pub fn parse_answer(buf: &[u8], eof: bool, cap: usize) -> Result<Option<Answer>, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if eof => return Err("the answer ends in its headers".into()),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("not an HTTP answer: {e}")),
    };
    let status = resp.code.unwrap_or(0);
    let mut length = None;
    let mut chunked = false;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or("a bad Content-Length")?;
            length = Some(v);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = h
                .value
                .windows(7)
                .any(|w| w.eq_ignore_ascii_case(b"chunked"));
        }
    }
    let rest = &buf[head..];
    if chunked {
        return dechunk(rest, eof, cap).map(|b| b.map(|body| Answer { status, body }));
    }
    match length {
        Some(n) if n > cap => Err(format!("a body of {n} bytes (at most {cap} taken)")),
        Some(n) if rest.len() >= n => Ok(Some(Answer {
            status,
            body: rest[..n].to_vec(),
        })),
        Some(_) if eof => Err("the connection ended inside the body".into()),
        Some(_) => Ok(None),
        None if rest.len() > cap => Err(format!("a body over {cap} bytes")),
        None if eof => Ok(Some(Answer {
            status,
            body: rest.to_vec(),
        })),
        None => Ok(None),
    }
}

fn dechunk(mut rest: &[u8], eof: bool, cap: usize) -> Result<Option<Vec<u8>>, String> {
    let mut body = Vec::new();
    loop {
        let Some(line) = rest.windows(2).position(|w| w == b"\r\n") else {
            return if eof {
                Err("the connection ended inside a chunk".into())
            } else {
                Ok(None)
            };
        };
        let size = std::str::from_utf8(&rest[..line])
            .ok()
            .map(|l| l.split(';').next().unwrap_or("").trim())
            .filter(|l| !l.is_empty() && l.len() <= 8)
            .and_then(|l| usize::from_str_radix(l, 16).ok())
            .ok_or("a bad chunk size")?;
        if size > cap.saturating_sub(body.len()) {
            return Err(format!("a chunked body over {cap} bytes"));
        }
        rest = &rest[line + 2..];
        if size == 0 {
            return Ok(Some(body));
        }
        if rest.len() < size + 2 {
            return if eof {
                Err("the connection ended inside a chunk".into())
            } else {
                Ok(None)
            };
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// Sends `request` to `url`'s address and reads the answer, all within `timeout`. Returns the
/// answer and this host's address on the connection (the LAN address the router sees).
pub async fn exchange(
    url: &Url,
    request: &[u8],
    cap: usize,
    timeout: Duration,
) -> Result<(Answer, Ipv4Addr), NatError> {
    let io = |e: std::io::Error| NatError::Io(format!("{url}: {e}"));
    let work = async {
        let mut s = TcpStream::connect(url.addr).await.map_err(io)?;
        let local = match s.local_addr().map_err(io)? {
            std::net::SocketAddr::V4(a) => *a.ip(),
            std::net::SocketAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
        };
        s.write_all(request).await.map_err(io)?;
        // Headers come on top of the body cap.
        let limit = cap + 8 * 1024;
        let mut buf = Vec::with_capacity(4096.min(limit));
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).await.map_err(io)?;
            if buf.len() + n > limit {
                return Err(NatError::Protocol(format!(
                    "{url}: an answer over {limit} bytes"
                )));
            }
            buf.extend_from_slice(&chunk[..n]);
            match parse_answer(&buf, n == 0, cap) {
                Ok(Some(a)) => return Ok((a, local)),
                Ok(None) => {}
                Err(e) => return Err(NatError::Protocol(format!("{url}: {e}"))),
            }
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| NatError::Timeout(format!("{url} did not answer within {timeout:?}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = parse_url("http://10.99.1.1:5000/rootDesc.xml").unwrap();
        assert_eq!(u.addr, "10.99.1.1:5000".parse().unwrap());
        assert_eq!(u.to_string(), "http://10.99.1.1:5000/rootDesc.xml");
        assert_eq!(parse_url("http://10.0.0.1").unwrap().path, "/");
        assert_eq!(resolve(&u, "/ctl/IPConn").unwrap().path, "/ctl/IPConn");
        assert_eq!(resolve(&u, "ctl").unwrap().path, "/ctl");
        let d = parse_url("http://10.0.0.1/a/b.xml").unwrap();
        assert_eq!(resolve(&d, "c").unwrap().path, "/a/c");
        assert_eq!(
            resolve(&d, "http://10.0.0.2:1/x").unwrap().addr,
            "10.0.0.2:1".parse().unwrap()
        );
        for bad in [
            "https://10.0.0.1/",
            "http://router.lan/",
            "http://10.0.0.1:0/",
            "http://10.0.0.1:99999/",
            "http://[::1]/",
            "http://10.0.0.1/a b",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
        assert!(parse_url(&format!("http://10.0.0.1/{}", "a".repeat(300))).is_err());
    }

    #[test]
    fn answers() {
        let a = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(
            parse_answer(a, false, 100).unwrap(),
            Some(Answer {
                status: 200,
                body: b"hello".to_vec()
            })
        );
        assert_eq!(parse_answer(&a[..40], false, 100).unwrap(), None);
        assert!(parse_answer(&a[..40], true, 100).is_err());
        assert!(parse_answer(a, false, 4).is_err());
        let c = b"HTTP/1.1 500 Internal\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x\r\nde\r\n0\r\n\r\n";
        let got = parse_answer(c, false, 100).unwrap().unwrap();
        assert_eq!((got.status, &got.body[..]), (500, &b"abcde"[..]));
        assert!(parse_answer(c, false, 4).is_err());
        let e = b"HTTP/1.0 200 OK\r\n\r\nuntil the end";
        assert_eq!(parse_answer(e, false, 100).unwrap(), None);
        assert_eq!(
            parse_answer(e, true, 100).unwrap().unwrap().body,
            b"until the end"
        );
        for bad in [
            &b"garbage\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFF\r\n",
        ] {
            assert!(parse_answer(bad, true, 100).is_err());
        }
    }
}
