//! The `X-Hub-Signature-256` check, pure: an HMAC-SHA256 of the raw body
//! bytes, keyed with a Meta app secret, compared in constant time
//! (`ring::hmac::verify`). Several secrets may be configured (one per Meta
//! app subscribed to the same WABAs); a body signed by any of them passes.
//! The body is never parsed before this says yes.

use std::fmt;

use ring::hmac;

/// The app secrets a signature is checked against. `Debug` never shows them.
#[derive(Clone)]
pub struct AppSecrets {
    keys: Vec<hmac::Key>,
}

impl fmt::Debug for AppSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AppSecrets(<{} redacted>)", self.keys.len())
    }
}

/// Why a signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureError {
    /// No `X-Hub-Signature-256` header.
    Missing,
    /// Not `sha256=` and 64 hex digits.
    Malformed,
    /// Well formed, but no configured secret made it.
    Mismatch,
}

impl fmt::Display for SignatureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SignatureError::Missing => "no X-Hub-Signature-256 header",
            SignatureError::Malformed => "X-Hub-Signature-256 is not sha256=<64 hex digits>",
            SignatureError::Mismatch => "signature made by none of the configured app secrets",
        })
    }
}

impl AppSecrets {
    /// Secrets from one text: separated by commas or line breaks, each
    /// trimmed; empty pieces are ignored. `None` when there is none.
    pub fn parse(text: &str) -> Option<AppSecrets> {
        let keys: Vec<hmac::Key> = text
            .split([',', '\n', '\r'])
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| hmac::Key::new(hmac::HMAC_SHA256, s.as_bytes()))
            .collect();
        (!keys.is_empty()).then_some(AppSecrets { keys })
    }

    /// How many secrets there are.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always false: [`AppSecrets::parse`] refuses an empty list.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks `header` (the `X-Hub-Signature-256` value, if any) over `body`.
    pub fn verify(&self, header: Option<&[u8]>, body: &[u8]) -> Result<(), SignatureError> {
        let header = header.ok_or(SignatureError::Missing)?;
        let tag = parse_header(header).ok_or(SignatureError::Malformed)?;
        // Every key is tried, so the time taken does not say which one matched.
        let mut matched = false;
        for key in &self.keys {
            matched |= hmac::verify(key, body, &tag).is_ok();
        }
        if matched {
            Ok(())
        } else {
            Err(SignatureError::Mismatch)
        }
    }

    /// The header value that `secret` gives `body`: what Meta sends. For the
    /// sandbox that plays Meta, tests and benchmarks.
    pub fn sign(secret: &str, body: &[u8]) -> String {
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
        let tag = hmac::sign(&key, body);
        let mut out = String::with_capacity(7 + 64);
        out.push_str("sha256=");
        for b in tag.as_ref() {
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        out
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `sha256=` and 64 hex digits (either case; Meta sends lower case) → 32 bytes.
fn parse_header(header: &[u8]) -> Option<[u8; 32]> {
    let header = header.trim_ascii();
    let (prefix, hex) = header.split_at_checked(7)?;
    if !prefix.eq_ignore_ascii_case(b"sha256=") {
        return None;
    }
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Compares two byte strings in time that depends only on their lengths (the
/// verify token of the handshake).
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    // A value computed independently: `printf %s '{"a":1}' | openssl dgst
    // -sha256 -hmac secret`.
    const KNOWN: &str = "sha256=aa9e2e3575f5d7098b6caccd790888c36d5fdb63342a73bada2d6a51747a8494";

    #[test]
    fn sign_then_verify_with_any_of_several_secrets() {
        let body = br#"{"object":"whatsapp_business_account"}"#;
        let secrets = AppSecrets::parse("first, second\nthird\n").expect("three secrets");
        assert_eq!(secrets.len(), 3);
        for s in ["first", "second", "third"] {
            let sig = AppSecrets::sign(s, body);
            assert_eq!(secrets.verify(Some(sig.as_bytes()), body), Ok(()), "{s}");
        }
        let other = AppSecrets::sign("fourth", body);
        assert_eq!(
            secrets.verify(Some(other.as_bytes()), body),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn refuses_missing_malformed_and_changed() {
        let secrets = AppSecrets::parse("s3cret").expect("one");
        let body = b"{}";
        let sig = AppSecrets::sign("s3cret", body);
        assert_eq!(secrets.verify(None, body), Err(SignatureError::Missing));
        for bad in [
            "",
            "sha256=",
            "sha1=abcd",
            "sha256=zz",
            &sig[..sig.len() - 1],
        ] {
            assert_eq!(
                secrets.verify(Some(bad.as_bytes()), body),
                Err(SignatureError::Malformed),
                "{bad}"
            );
        }
        assert_eq!(
            secrets.verify(Some(sig.as_bytes()), b"{ }"),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            secrets.verify(
                Some(sig.to_uppercase().replace("SHA256=", "sha256=").as_bytes()),
                body
            ),
            Ok(()),
            "hex case does not matter"
        );
    }

    #[test]
    fn matches_an_independent_hmac() {
        let sig = AppSecrets::sign("secret", br#"{"a":1}"#);
        assert_eq!(sig, KNOWN);
    }

    #[test]
    fn empty_secret_lists_are_refused() {
        assert!(AppSecrets::parse("").is_none());
        assert!(AppSecrets::parse(" ,\n, ").is_none());
        assert!(format!("{:?}", AppSecrets::parse("s3cret").expect("one")).contains("redacted"));
    }

    #[test]
    fn same_secret_compares_whole_strings() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
    }
}
