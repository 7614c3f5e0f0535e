//! Transport security shared by the coordinator and its clients: TLS (optionally mutual)
//! from PEM files, and a bearer token checked on every call. The token is compared in
//! constant time and never printed: `Debug` of these types hides it.

use std::fmt;
use std::path::{Path, PathBuf};

use subtle::ConstantTimeEq;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};
use tonic::{Request, Status};

#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, SecurityError> {
    std::fs::read(path).map_err(|source| SecurityError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// A bearer token, read from a file or the environment.
#[derive(Clone)]
pub struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    pub fn new(value: impl Into<String>) -> Result<Self, SecurityError> {
        let value: String = value.into().trim().to_string();
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(SecurityError::Invalid(
                "a token must be non-empty printable ASCII without spaces".into(),
            ));
        }
        Ok(Self(value))
    }

    /// The token in `path` (surrounding whitespace ignored).
    pub fn from_file(path: &Path) -> Result<Self, SecurityError> {
        let bytes = read("token file", path)?;
        Self::new(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn header(&self) -> String {
        format!("Bearer {}", self.0)
    }
}

/// Server side: refuses calls that do not carry the token (`UNAUTHENTICATED`). With no
/// token configured every call passes.
#[derive(Clone, Debug, Default)]
pub struct RequireToken(Option<Token>);

impl RequireToken {
    pub fn new(token: Option<Token>) -> Self {
        Self(token)
    }

    /// Whether a token is configured (every call must carry it).
    pub fn is_required(&self) -> bool {
        self.0.is_some()
    }

    /// Checks a token given on its own (not as a header), such as a browser's cookie.
    pub fn allows_token(&self, given: &str) -> bool {
        self.allows(Some(format!("Bearer {given}").as_bytes()))
    }

    /// A value derived from the token and `context` (HMAC-SHA256, hex): stable across
    /// coordinators that share the token, and no way back to the token. `None` without a
    /// token.
    pub fn derive(&self, context: &[u8]) -> Option<String> {
        self.0
            .as_ref()
            .map(|t| hex::encode(hmac_sha256(t.0.as_bytes(), context)))
    }

    /// Whether `given` is the value [`RequireToken::derive`] gives for `context`
    /// (compared in constant time); always true without a token.
    pub fn allows_derived(&self, context: &[u8], given: &str) -> bool {
        match self.derive(context) {
            None => true,
            Some(expected) => {
                given.len() == expected.len()
                    && bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
            }
        }
    }

    /// Checks an `authorization` header value.
    pub fn allows(&self, header: Option<&[u8]>) -> bool {
        match &self.0 {
            None => true,
            Some(token) => {
                let expected = token.header();
                header.is_some_and(|h| {
                    h.len() == expected.len() && bool::from(h.ct_eq(expected.as_bytes()))
                })
            }
        }
    }
}

impl Interceptor for RequireToken {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let header = req.metadata().get("authorization").map(|v| v.as_bytes());
        if self.allows(header) {
            Ok(req)
        } else if header.is_none() {
            Err(Status::unauthenticated(
                "this coordinator requires a bearer token",
            ))
        } else {
            Err(Status::unauthenticated("the bearer token is not valid"))
        }
    }
}

/// HMAC-SHA256 (RFC 2104) of `msg` under `key`.
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// Client side: adds the token, if any, to every call.
#[derive(Clone, Default)]
pub struct AttachToken(Option<MetadataValue<tonic::metadata::Ascii>>);

impl fmt::Debug for AttachToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AttachToken(<redacted>)")
    }
}

impl AttachToken {
    pub fn new(token: Option<&Token>) -> Self {
        // A validated token is printable ASCII, so it is always a valid header value.
        Self(token.and_then(|t| t.header().parse().ok()))
    }
}

impl Interceptor for AttachToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// The server's TLS files: its certificate and key, and for mutual TLS the CA that signs
/// client certificates.
#[derive(Clone, Debug)]
pub struct ServerTlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

impl ServerTlsFiles {
    pub fn load(&self) -> Result<ServerTlsConfig, SecurityError> {
        let identity = Identity::from_pem(
            read("TLS certificate", &self.cert)?,
            read("TLS key", &self.key)?,
        );
        let mut cfg = ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.client_ca {
            cfg = cfg.client_ca_root(Certificate::from_pem(read("client CA", ca)?));
        }
        Ok(cfg)
    }
}

/// A client's TLS files: the CA that signed the server's certificate, and for mutual TLS
/// its own certificate and key.
#[derive(Clone, Debug)]
pub struct ClientTlsFiles {
    pub ca: PathBuf,
    pub identity: Option<(PathBuf, PathBuf)>,
    /// The name the server's certificate must carry, when it is not the endpoint's host.
    pub domain: Option<String>,
}

impl ClientTlsFiles {
    pub fn load(&self) -> Result<ClientTlsConfig, SecurityError> {
        let mut cfg = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read("TLS CA certificate", &self.ca)?));
        if let Some((cert, key)) = &self.identity {
            cfg = cfg.identity(Identity::from_pem(
                read("TLS certificate", cert)?,
                read("TLS key", key)?,
            ));
        }
        if let Some(d) = &self.domain {
            cfg = cfg.domain_name(d.clone());
        }
        Ok(cfg)
    }
}

/// How long a client waits on a coordinator before it gives up on it: a frozen or cut-off
/// coordinator keeps its TCP connections open, so without a request deadline and HTTP/2
/// keepalive a call to it never returns and the standby is never tried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadlines {
    pub connect: std::time::Duration,
    /// Until the response's headers arrive (a stream's messages after them are not bound:
    /// the keepalive watches those).
    pub request: std::time::Duration,
    /// A ping every `keepalive`, and the connection is dropped when one goes unanswered
    /// for as long again.
    pub keepalive: std::time::Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self::from_request(std::time::Duration::from_secs(10))
    }
}

impl Deadlines {
    /// Connects within `request`, pings every half of it: a silent peer is abandoned within
    /// about `request` whether a call is in flight or a stream is open.
    pub fn from_request(request: std::time::Duration) -> Self {
        let request = request.max(std::time::Duration::from_millis(100));
        Self {
            connect: request.min(std::time::Duration::from_secs(5)),
            request,
            keepalive: request / 2,
        }
    }
}

/// How a client reaches the coordinator.
#[derive(Clone, Debug, Default)]
pub struct ClientSecurity {
    pub token: Option<Token>,
    pub tls: Option<ClientTlsFiles>,
}

impl ClientSecurity {
    /// A channel to `endpoint` (`http://` or, with TLS, `https://`), connected lazily, with
    /// the default [`Deadlines`].
    pub fn channel(&self, endpoint: &str) -> Result<tonic::transport::Channel, SecurityError> {
        self.channel_with(endpoint, Deadlines::default())
    }

    /// A channel to `endpoint` whose calls give up after `deadlines`.
    pub fn channel_with(
        &self,
        endpoint: &str,
        deadlines: Deadlines,
    ) -> Result<tonic::transport::Channel, SecurityError> {
        let mut ep = tonic::transport::Endpoint::from_shared(endpoint.to_string())
            .map_err(|e| SecurityError::Invalid(format!("endpoint {endpoint:?}: {e}")))?
            .connect_timeout(deadlines.connect)
            .timeout(deadlines.request)
            .http2_keep_alive_interval(deadlines.keepalive)
            .keep_alive_timeout(deadlines.keepalive)
            .keep_alive_while_idle(true)
            .tcp_nodelay(true);
        if let Some(tls) = &self.tls {
            ep = ep
                .tls_config(tls.load()?)
                .map_err(|e| SecurityError::Invalid(format!("TLS for {endpoint}: {e}")))?;
        }
        Ok(ep.connect_lazy())
    }

    pub fn interceptor(&self) -> AttachToken {
        AttachToken::new(self.token.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_check_needs_the_exact_header() {
        let check = RequireToken::new(Some(Token::new("s3cret").unwrap()));
        assert!(check.allows(Some(b"Bearer s3cret")));
        assert!(!check.allows(Some(b"Bearer s3cre")));
        assert!(!check.allows(Some(b"Bearer s3cret2")));
        assert!(!check.allows(Some(b"bearer s3cret")));
        assert!(!check.allows(None));
        assert!(RequireToken::new(None).allows(None));
    }

    #[test]
    fn tokens_are_validated_and_never_printed() {
        assert!(Token::new("  ").is_err());
        assert!(Token::new("two words").is_err());
        let t = Token::new(" abc\n").unwrap();
        assert_eq!(t.header(), "Bearer abc");
        assert!(!format!("{t:?}").contains("abc"));
        assert!(!format!(
            "{:?}",
            ClientSecurity {
                token: Some(t),
                tls: None
            }
        )
        .contains("abc"));
    }

    #[test]
    fn deadlines_follow_the_request_timeout() {
        let d = Deadlines::from_request(std::time::Duration::from_secs(4));
        assert_eq!(d.request, std::time::Duration::from_secs(4));
        assert_eq!(d.keepalive, std::time::Duration::from_secs(2));
        assert_eq!(d.connect, std::time::Duration::from_secs(4));
        let long = Deadlines::from_request(std::time::Duration::from_secs(60));
        assert_eq!(long.connect, std::time::Duration::from_secs(5));
        assert_eq!(
            Deadlines::default().request,
            std::time::Duration::from_secs(10)
        );
    }

    #[test]
    fn hmac_matches_rfc_4231_and_derived_values_hide_the_token() {
        // RFC 4231, test cases 2 and 6 (a key longer than the block).
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex::encode(hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
        let check = RequireToken::new(Some(Token::new("s3cret").unwrap()));
        let v = check.derive(b"session").unwrap();
        assert!(!v.contains(&hex::encode("s3cret")) && !v.contains("s3cret"));
        assert!(check.allows_derived(b"session", &v));
        assert!(!check.allows_derived(b"other", &v));
        assert!(!check.allows_derived(b"session", "s3cret"));
        assert!(RequireToken::new(None).allows_derived(b"session", ""));
    }
}
