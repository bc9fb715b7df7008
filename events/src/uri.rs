//! RFC 3986 syntax checks for the CloudEvents `source` (URI-reference) and
//! `dataschema` (URI) attributes.
//!
//! The CloudEvents SDK stores `source` as an unchecked `String`, so palworker
//! checks it itself. This is a syntax check (allowed characters, percent
//! encoding, scheme, one fragment, brackets only around an IP-literal host),
//! not a full RFC 3986 grammar; it rejects what producers actually get wrong
//! (spaces, non-ASCII, stray `%`, `1http:`) without a URL-parsing dependency.

/// Checks that `text` is a syntactically valid URI-reference (absolute URI or
/// relative reference); the error names the first problem.
pub(crate) fn check_uri_reference(text: &str) -> Result<(), &'static str> {
    let bytes = text.as_bytes();
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        if byte == b'%' {
            let hex_follows = bytes.get(index + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(index + 2).is_some_and(u8::is_ascii_hexdigit);
            if !hex_follows {
                return Err("malformed percent-encoding");
            }
            index += 3;
            continue;
        }
        let allowed = byte.is_ascii_alphanumeric() || b"-._~:/?#[]@!$&'()*+,;=".contains(&byte);
        if !allowed {
            return Err("contains a character that must be percent-encoded");
        }
        index += 1;
    }

    if text.matches('#').count() > 1 {
        return Err("more than one '#'");
    }

    // A ':' before the first '/', '?' or '#' ends a scheme; a relative
    // reference may not have one there (RFC 3986 section 4.2).
    let first_delimiter = text.find(['/', '?', '#']).unwrap_or(text.len());
    let scheme_end = match text[..first_delimiter].find(':') {
        Some(colon) => {
            if !is_scheme(&text[..colon]) {
                return Err("invalid scheme");
            }
            colon + 1
        }
        None => 0,
    };

    // '[' and ']' are only allowed around an IP-literal host in the authority.
    let authority = match text[scheme_end..].strip_prefix("//") {
        Some(rest) => &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())],
        None => "",
    };
    let authority_start = if authority.is_empty() {
        0
    } else {
        scheme_end + 2
    };
    let authority_end = authority_start + authority.len();
    let bracket_outside_authority = text
        .match_indices(['[', ']'])
        .any(|(position, _)| position < authority_start || position >= authority_end);
    if bracket_outside_authority || !brackets_well_placed(authority) {
        return Err("'[' or ']' outside an IP-literal host");
    }
    Ok(())
}

/// True when `text` is a URI-reference that starts with a scheme (an absolute
/// URI, RFC 3986 section 4.3; a fragment is tolerated as the SDK does).
pub(crate) fn is_absolute_uri(text: &str) -> bool {
    if check_uri_reference(text).is_err() {
        return false;
    }
    let first_delimiter = text.find(['/', '?', '#']).unwrap_or(text.len());
    text[..first_delimiter].contains(':')
}

fn is_scheme(text: &str) -> bool {
    let mut bytes = text.bytes();
    bytes
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic())
        && bytes.all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'+' | b'-' | b'.'))
}

/// In an authority `userinfo@host:port`, brackets may only enclose the whole
/// host: `[` right at the start of the host, `]` once, followed by nothing or `:port`.
fn brackets_well_placed(authority: &str) -> bool {
    let host_and_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let userinfo = &authority[..authority.len() - host_and_port.len()];
    if userinfo.contains(['[', ']']) {
        return false;
    }
    if !host_and_port.contains(['[', ']']) {
        return true;
    }
    let Some(inside) = host_and_port.strip_prefix('[') else {
        return false;
    };
    let Some((literal, after)) = inside.split_once(']') else {
        return false;
    };
    !literal.is_empty()
        && !literal.contains(['[', ']'])
        && (after.is_empty()
            || after
                .strip_prefix(':')
                .is_some_and(|port| port.bytes().all(|b| b.is_ascii_digit())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_absolute_uris_urns_and_relative_references() {
        for good in [
            "urn:contoso:workday",
            "https://hr.contoso.example/api/events?x=1#frag",
            "https://[2001:db8::1]:8443/hr",
            "http://user@[::1]/",
            "/hr/workday",
            "workday",
            "./a/b:c",
            "//hr.contoso.example",
            "?query=1",
            "#fragment",
            "mailto:hr@contoso.example",
            "tag:contoso.example,2026:workday",
            "urn:uuid:7f1c2a9e-5d1b-4c61-9a43-0c2f6f1de0b1",
            "a%20b",
        ] {
            assert_eq!(check_uri_reference(good), Ok(()), "{good}");
        }
    }

    #[test]
    fn rejects_what_is_not_a_uri_reference() {
        let cases = [
            (
                "urn:contoso workday",
                "contains a character that must be percent-encoded",
            ),
            (
                "urn:contoso:wörkday",
                "contains a character that must be percent-encoded",
            ),
            (
                "urn:contoso\n",
                "contains a character that must be percent-encoded",
            ),
            ("a\"b", "contains a character that must be percent-encoded"),
            ("a%2", "malformed percent-encoding"),
            ("a%zz", "malformed percent-encoding"),
            ("a#b#c", "more than one '#'"),
            ("1http://x", "invalid scheme"),
            (":x", "invalid scheme"),
            ("ht_tp://x", "invalid scheme"),
            (
                "https://example.com/a[1]",
                "'[' or ']' outside an IP-literal host",
            ),
            (
                "https://example.com/?q=[1]",
                "'[' or ']' outside an IP-literal host",
            ),
            (
                "https://example.com/#[1]",
                "'[' or ']' outside an IP-literal host",
            ),
            (
                "https://ex[ample].com/",
                "'[' or ']' outside an IP-literal host",
            ),
            ("https://[::1", "'[' or ']' outside an IP-literal host"),
            ("https://[::1]x/", "'[' or ']' outside an IP-literal host"),
            ("https://[u]@host/", "'[' or ']' outside an IP-literal host"),
        ];
        for (bad, expected) in cases {
            assert_eq!(check_uri_reference(bad), Err(expected), "{bad}");
        }
    }

    #[test]
    fn absolute_uris_need_a_scheme() {
        assert!(is_absolute_uri(
            "https://schemas.contoso.example/departed.json"
        ));
        assert!(is_absolute_uri("urn:contoso:schema"));
        assert!(!is_absolute_uri("/schemas/departed.json"));
        assert!(!is_absolute_uri("schemas/departed.json"));
        assert!(!is_absolute_uri("https://exa mple"));
    }
}
