//! Who may read the coordinator's HTTP side, and how it is encrypted. With a token
//! configured, everything but the probes needs it: scripts and Prometheus send it as a
//! bearer header; a browser signs in once by POSTing it to `/login` (never in a URL, so it
//! stays out of logs and history) and gets a session cookie: an HMAC of the token (opaque,
//! the token cannot be recovered from it, and the same on every coordinator sharing the
//! token, so a session survives a takeover), `HttpOnly`, `SameSite=Strict`, and `Secure`
//! when the HTTP side serves TLS, from the same certificate and key files as gRPC.

use std::sync::Arc;

use automaldesc_proto::security::{RequireToken, SecurityError, ServerTlsFiles};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The session cookie's name.
pub const COOKIE: &str = "automaldesc_session";

/// What the session value is derived for (a new value here signs every browser out).
const SESSION: &[u8] = b"automaldesc dashboard session v1";

/// The HTTP side's credentials check.
#[derive(Clone, Debug)]
pub struct Access {
    token: RequireToken,
    /// The HTTP side serves TLS: the cookie is `Secure`.
    secure: bool,
}

impl Access {
    pub fn new(token: RequireToken, secure: bool) -> Self {
        Self { token, secure }
    }

    /// Whether a request with these `Authorization` and `Cookie` headers may read.
    pub fn allows(&self, authorization: Option<&str>, cookie: Option<&str>) -> bool {
        if !self.token.is_required() || self.token.allows(authorization.map(str::as_bytes)) {
            return true;
        }
        let session = cookie.unwrap_or("").split(';').find_map(|c| {
            let (k, v) = c.trim().split_once('=')?;
            (k == COOKIE).then_some(v)
        });
        session.is_some_and(|v| self.token.allows_derived(SESSION, v))
    }

    /// The `Set-Cookie` value for a sign-in form (`token=...`, form-encoded), or `None`
    /// when it does not carry the token.
    pub fn sign_in(&self, form: &[u8]) -> Option<String> {
        let form = std::str::from_utf8(form).ok()?;
        let given = form
            .split('&')
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| *k == "token")
            .and_then(|(_, v)| percent_decode(v))?;
        if !self.token.allows_token(&given) {
            return None;
        }
        let value = self.token.derive(SESSION).unwrap_or_default();
        let secure = if self.secure { "; Secure" } else { "" };
        Some(format!(
            "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict{secure}"
        ))
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hex = [bytes.next()?, bytes.next()?];
                out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

/// A TLS acceptor for the HTTP side from the gRPC side's certificate and key (PEM).
pub fn tls_acceptor(files: &ServerTlsFiles) -> Result<tokio_rustls::TlsAcceptor, SecurityError> {
    let invalid = |what: &str, e: &dyn std::fmt::Display| {
        SecurityError::Invalid(format!("HTTP TLS {what}: {e}"))
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| invalid("certificate", &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| invalid("certificate", &e))?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| invalid("key", &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("protocol versions", &e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| invalid("certificate and key", &e))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Whether `addr` (`host:port`) listens on loopback only.
pub fn is_loopback(addr: &str) -> bool {
    match addr.parse::<std::net::SocketAddr>() {
        Ok(a) => a.ip().is_loopback(),
        Err(_) => addr.starts_with("localhost:"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use automaldesc_proto::security::Token;

    fn access(secure: bool) -> Access {
        Access::new(
            RequireToken::new(Some(Token::new("s3cr=t;%").unwrap())),
            secure,
        )
    }

    #[test]
    fn signing_in_by_form_gives_an_opaque_session_cookie() {
        let a = access(false);
        let cookie = a.sign_in(b"token=s3cr%3Dt%3B%25").unwrap();
        assert!(
            cookie.ends_with("; Path=/; HttpOnly; SameSite=Strict"),
            "{cookie}"
        );
        let pair = cookie.split(';').next().unwrap();
        let value = pair.strip_prefix("automaldesc_session=").unwrap();
        // Not the token, nor a reversible encoding of it.
        assert_eq!(value.len(), 64);
        assert!(!value.contains(&hex::encode("s3cr=t;%")));
        assert!(a.allows(None, Some(&format!("other=1; {pair}"))));
        assert!(!a.allows(None, Some(&format!("{COOKIE}={}", hex::encode("s3cr=t;%")))));
        assert!(!a.allows(None, Some("automaldesc_token=73336372")));
        assert!(!a.allows(None, None));
        assert!(a.allows(Some("Bearer s3cr=t;%"), None));
        assert_eq!(a.sign_in(b"token=wrong"), None);
        assert_eq!(a.sign_in(b"user=s3cr%3Dt%3B%25"), None);
        // Under TLS the cookie is Secure; without a token everything passes.
        assert!(access(true)
            .sign_in(b"token=s3cr%3Dt%3B%25")
            .unwrap()
            .ends_with("; Secure"));
        assert!(Access::new(RequireToken::default(), false).allows(None, None));
    }

    #[test]
    fn loopback_addresses_are_told_apart() {
        assert!(is_loopback("127.0.0.1:8080"));
        assert!(is_loopback("[::1]:8080"));
        assert!(is_loopback("localhost:8080"));
        assert!(!is_loopback("0.0.0.0:8080"));
        assert!(!is_loopback("10.1.2.3:50051"));
    }
}
