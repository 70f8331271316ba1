//! A small, tolerant scanner for the XML a router sends (device descriptions, SOAP answers).
//!
//! It does not build a tree: it walks tags and text once, ignoring prefixes (`s:Body` is
//! `Body`), attributes, comments, processing instructions and doctype, and it never allocates
//! more than the bounded values it returns. A document that is not well formed yields what
//! could be read from it, never a panic; the caller bounds the document's size before it
//! gets here.

/// The longest element value kept (a URL, a service type, an address, an error text).
pub const MAX_VALUE: usize = 512;
/// The most services read from one description (a real IGD lists a handful).
pub const MAX_SERVICES: usize = 64;

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Tok<'a> {
    Open(&'a str),
    Close(&'a str),
    Text(&'a str),
}

/// The tag's local name: no prefix, no attributes.
fn local(name: &str) -> &str {
    let name = name
        .split(|c: char| c.is_ascii_whitespace())
        .next()
        .unwrap_or("");
    name.rsplit(':').next().unwrap_or(name)
}

struct Scanner<'a> {
    doc: &'a str,
    pos: usize,
    /// The close of a `<empty/>` element, returned right after its open.
    pending: Option<&'a str>,
}

fn scan(doc: &str) -> Scanner<'_> {
    Scanner {
        doc,
        pos: 0,
        pending: None,
    }
}

impl<'a> Iterator for Scanner<'a> {
    type Item = Tok<'a>;
    fn next(&mut self) -> Option<Tok<'a>> {
        if let Some(n) = self.pending.take() {
            return Some(Tok::Close(n));
        }
        loop {
            let doc = self.doc;
            let rest = doc.get(self.pos..)?;
            if rest.is_empty() {
                return None;
            }
            if !rest.starts_with('<') {
                let end = rest.find('<').unwrap_or(rest.len());
                self.pos += end;
                return Some(Tok::Text(&rest[..end]));
            }
            // Markup that carries no element: skip to its own terminator.
            let mut skipped = false;
            for (open, close) in [("<!--", "-->"), ("<![CDATA[", "]]>"), ("<?", "?>")] {
                if rest.starts_with(open) {
                    let end = rest.find(close).map_or(rest.len(), |i| i + close.len());
                    self.pos += end;
                    skipped = true;
                    break;
                }
            }
            if skipped {
                continue;
            }
            let Some(end) = rest.find('>') else {
                self.pos = doc.len();
                return None;
            };
            self.pos += end + 1;
            let inner = &rest[1..end];
            if inner.starts_with('!') {
                continue;
            }
            if let Some(name) = inner.strip_prefix('/') {
                return Some(Tok::Close(local(name.trim())));
            }
            if let Some(name) = inner.strip_suffix('/') {
                let n = local(name.trim());
                self.pending = Some(n);
                return Some(Tok::Open(n));
            }
            return Some(Tok::Open(local(inner.trim())));
        }
    }
}

/// Text with the five predefined entities and numeric references decoded, trimmed; `None`
/// when it is longer than [`MAX_VALUE`].
fn value(raw: &str) -> Option<String> {
    let raw = raw.trim();
    if raw.len() > MAX_VALUE {
        return None;
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        // Entities are short; the search stays on bytes (a char boundary is not needed).
        let Some(semi) = rest.as_bytes()[..rest.len().min(12)]
            .iter()
            .position(|&b| b == b';')
        else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let ent = &rest[1..semi];
        let c = match ent {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => ent
                .strip_prefix("#x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| ent.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match c {
            Some(c) => {
                out.push(c);
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    Some(out)
}

/// The text of the first element named `name` (local name, any prefix) that holds only text.
pub fn first_text(doc: &str, name: &str) -> Option<String> {
    let mut it = scan(doc);
    while let Some(t) = it.next() {
        if t == Tok::Open(name) {
            return match it.next() {
                Some(Tok::Text(s)) => value(s),
                Some(Tok::Close(n)) if n == name => Some(String::new()),
                _ => None,
            };
        }
    }
    None
}

/// One `<service>` of a device description.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Service {
    pub service_type: String,
    pub control_url: String,
}

/// Every `<service>` with a type and a control URL, in document order, at most
/// [`MAX_SERVICES`].
pub fn services(doc: &str) -> Vec<Service> {
    let mut out = Vec::new();
    let mut cur: Option<Service> = None;
    let mut field: Option<&str> = None;
    for t in scan(doc) {
        match t {
            Tok::Open("service") => cur = Some(Service::default()),
            Tok::Close("service") => {
                if let Some(s) = cur.take() {
                    if !s.service_type.is_empty() && !s.control_url.is_empty() {
                        out.push(s);
                        if out.len() == MAX_SERVICES {
                            break;
                        }
                    }
                }
            }
            Tok::Open(n @ ("serviceType" | "controlURL")) if cur.is_some() => field = Some(n),
            Tok::Text(s) => {
                if let (Some(f), Some(c)) = (field, cur.as_mut()) {
                    let v = value(s).unwrap_or_default();
                    if f == "serviceType" {
                        c.service_type = v;
                    } else {
                        c.control_url = v;
                    }
                }
            }
            _ => field = None,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_services_with_prefixes_comments_and_entities() {
        let doc = r#"<?xml version="1.0"?><!-- hi --><root xmlns="urn:x"><URLBase>http://10.0.0.1:5000</URLBase>
<device><serviceList><service><serviceType>urn:schemas-upnp-org:service:Layer3Forwarding:1</serviceType>
<controlURL>/ctl/L3F</controlURL></service></serviceList><deviceList><device><serviceList>
<u:service><u:serviceType> urn:schemas-upnp-org:service:WANIPConnection:2 </u:serviceType>
<eventSubURL/><u:controlURL>/ctl/IPConn?a=1&amp;b=2</u:controlURL></u:service></serviceList></device></deviceList></device></root>"#;
        let s = services(doc);
        assert_eq!(s.len(), 2);
        assert_eq!(
            s[1].service_type,
            "urn:schemas-upnp-org:service:WANIPConnection:2"
        );
        assert_eq!(s[1].control_url, "/ctl/IPConn?a=1&b=2");
        assert_eq!(
            first_text(doc, "URLBase").as_deref(),
            Some("http://10.0.0.1:5000")
        );
        assert_eq!(first_text(doc, "eventSubURL").as_deref(), Some(""));
    }

    #[test]
    fn broken_documents_give_what_they_hold() {
        for doc in [
            "",
            "<",
            "<<<>>>",
            "<service><serviceType>x",
            "</service>",
            "<!--",
            "<a>&#xFFFFFFFF;&#55296;&bogus;&",
            "<service><controlURL>/c</controlURL><serviceType>t</serviceType>",
        ] {
            let _ = services(doc);
            let _ = first_text(doc, "a");
        }
        assert_eq!(
            first_text("<a>&#xFFFFFFFF;&#65;&bogus;&</a>", "a").as_deref(),
            Some("&#xFFFFFFFF;A&bogus;&")
        );
        // An entity search window that ends inside a multi-byte character.
        assert_eq!(
            first_text("<a>&abcdefghij\u{e9};</a>", "a").as_deref(),
            Some("&abcdefghij\u{e9};")
        );
        let long = format!("<a>{}</a>", "x".repeat(MAX_VALUE + 1));
        assert_eq!(first_text(&long, "a"), None);
    }

    #[test]
    fn service_count_is_capped() {
        let one = "<service><serviceType>t</serviceType><controlURL>/c</controlURL></service>";
        let doc = one.repeat(MAX_SERVICES * 2);
        assert_eq!(services(&doc).len(), MAX_SERVICES);
    }
}
