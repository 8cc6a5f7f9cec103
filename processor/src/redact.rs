//! Secrets never leave the process as text. Connection strings and client settings carry
//! passwords (a PostgreSQL URL `postgres://user:pw@host/db`, a registry URL with
//! credentials, `--kafka-config sasl.password=...`, a libpq `password=...`); they must not
//! reach a log line, an error message, `weir status`, `/metrics` or the web page.
//!
//! [`redact`] masks them by shape, wherever the text came from: the password of a URL's
//! user info, and the value after any key ending in `password`, `passwd` or `secret` (or
//! `sasl.jaas.config`, `basic.auth.user.info`) followed by `=` or `:`. The log writer, the
//! server's responses and the CLI's error line all pass through it. A leaf module: it
//! imports nothing from the crate.

/// The mask written in place of a secret.
pub const MASK: &str = "***";

const KEY_SUFFIXES: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "sasl.jaas.config",
    "basic.auth.user.info",
];

/// `text` with every secret it recognises replaced by [`MASK`].
pub fn redact(text: &str) -> String {
    if !might_hold_secret(text) {
        return text.to_string();
    }
    redact_keys(&redact_urls(text))
}

/// A cheap test that lets almost every log line through untouched.
fn might_hold_secret(text: &str) -> bool {
    text.contains("://") || {
        let lower = text.to_ascii_lowercase();
        KEY_SUFFIXES.iter().any(|k| lower.contains(k))
    }
}

fn ends_value(c: char) -> bool {
    c.is_whitespace() || matches!(c, '"' | '\'' | '&' | ',' | ';' | '}' | ')' | '\\' | '`')
}

/// `scheme://user:password@host` -> `scheme://user:***@host`.
fn redact_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        out.push_str(&rest[..i + 3]);
        rest = &rest[i + 3..];
        // The authority: up to the first `/`, `?`, `#` or a character that ends a value.
        let end = rest
            .find(|c: char| matches!(c, '/' | '?' | '#') || ends_value(c))
            .unwrap_or(rest.len());
        let authority = &rest[..end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.find(':') {
                    Some(colon) => {
                        out.push_str(&userinfo[..colon + 1]);
                        out.push_str(MASK);
                    }
                    None => out.push_str(userinfo),
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// `sasl.password=x`, `password: x`, `"password":"x"` -> the value masked.
fn redact_keys(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut search = 0;
    while search < text.len() {
        // The nearest key at or after `search`.
        let Some((at, key)) = KEY_SUFFIXES
            .iter()
            .filter_map(|k| lower[search..].find(k).map(|i| (search + i, k.len())))
            .min()
        else {
            break;
        };
        let mut j = at + key;
        let bytes = text.as_bytes();
        let skip = |j: &mut usize, f: &dyn Fn(u8) -> bool| {
            while *j < bytes.len() && f(bytes[*j]) {
                *j += 1;
            }
        };
        skip(&mut j, &|b| b == b'"' || b == b'\'');
        skip(&mut j, &|b| b == b' ' || b == b'\t');
        if j < bytes.len() && (bytes[j] == b'=' || bytes[j] == b':') {
            j += 1;
            skip(&mut j, &|b| b == b' ' || b == b'\t');
            skip(&mut j, &|b| b == b'"' || b == b'\'');
            let start = j;
            let len = text[start..].find(ends_value).unwrap_or(text.len() - start);
            if len > 0 && &text[start..start + len] != MASK {
                out.push_str(&text[copied..start]);
                out.push_str(MASK);
                copied = start + len;
            }
            search = start + len.max(1);
        } else {
            search = at + key;
        }
    }
    out.push_str(&text[copied.min(text.len())..]);
    out
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn masks_url_passwords_and_secret_settings() {
        let cases = [
            (
                "cannot connect to postgres://app:s3cret@127.0.0.1:5432/test: refused",
                "cannot connect to postgres://app:***@127.0.0.1:5432/test: refused",
            ),
            (
                "registry http://user:p%40ss@reg:8081/schemas/ids/1",
                "registry http://user:***@reg:8081/schemas/ids/1",
            ),
            (
                "http://host:8081/x and http://u@h/",
                "http://host:8081/x and http://u@h/",
            ),
            (
                "--kafka-config sasl.password=hunter2 sasl.username=bob",
                "--kafka-config sasl.password=*** sasl.username=bob",
            ),
            (
                r#"{"sasl.password":"hunter2","ssl.key.password": "k"}"#,
                r#"{"sasl.password":"***","ssl.key.password": "***"}"#,
            ),
            (
                "host=db user=app password=pw1 dbname=x",
                "host=db user=app password=*** dbname=x",
            ),
            (
                "url: x\\n    password: pw2\\n",
                "url: x\\n    password: ***\\n",
            ),
            (
                "password authentication failed for user",
                "password authentication failed for user",
            ),
            ("no secrets here", "no secrets here"),
            ("PASSWORD=Up", "PASSWORD=***"),
            ("password=", "password="),
        ];
        for (input, want) in cases {
            assert_eq!(redact(input), want, "{input}");
        }
    }

    #[test]
    fn never_panics_on_odd_text() {
        for s in [
            "://",
            "a://@",
            "password",
            "password:",
            "é://ü:ö@x",
            "secret=é",
            "x://a:b",
        ] {
            let _ = redact(s);
        }
    }
}
