//! TLS to database servers: libpq's `sslmode` and `sslrootcert`, for both clients we use.
//!
//! tokio-postgres knows only `disable`, `prefer` and `require`, and verifies nothing: it hands the TCP stream to
//! whatever [`MakeTlsConnect`] it is given. [`MakeTls`] is ours, over rustls (the TLS stack sqlx uses too, with the
//! ring provider), shaped like `tokio-postgres-rustls` and `postgres-native-tls` (a maker per connection, a
//! connect future, a stream wrapper) but with the verification libpq does per mode:
//!
//! | mode | encrypted | certificate checked against `sslrootcert` | host name checked |
//! |---|---|---|---|
//! | `disable` | no | no | no |
//! | `prefer` | if the server offers TLS | only when `sslrootcert` is given | no |
//! | `require` | yes, or the connection fails | only when `sslrootcert` is given (as libpq) | no |
//! | `verify-ca` | yes | yes (`sslrootcert` required) | no |
//! | `verify-full` | yes | yes (`sslrootcert` required) | yes: DNS name or IP address in the certificate |
//!
//! `allow` is refused (it would try plain text first), and so are client certificates (`sslcert`/`sslkey`), which
//! mandant does not implement. Without `sslmode`, a TCP host that is not loopback gets `require`; loopback hosts
//! get libpq's default `prefer`, Unix sockets never use TLS (PostgreSQL does not offer it there), so the local
//! URLs of the embedded cluster and of tests keep working as they are.
//!
//! sqlx (the control plane) gets the same mode and root certificate through its own rustls support
//! ([`Tls::apply_to_sqlx`]). SCRAM channel binding is not offered over our connector (tokio-postgres then
//! authenticates with plain SCRAM-SHA-256 and tells the server it cannot bind).
//!
//! Never: prints a password; the errors here name the mode and the certificate file only.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use deadpool_postgres::tokio_postgres;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

/// libpq's `sslmode`, without `allow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn parse(value: &str) -> Result<Self, String> {
        match value {
            "disable" => Ok(Self::Disable),
            "prefer" => Ok(Self::Prefer),
            "require" => Ok(Self::Require),
            "verify-ca" => Ok(Self::VerifyCa),
            "verify-full" => Ok(Self::VerifyFull),
            "allow" => Err(
                "sslmode=allow is not supported (it tries an unencrypted connection first); use prefer or \
                 stronger"
                    .to_owned(),
            ),
            _ => Err(
                "sslmode must be one of disable, prefer, require, verify-ca, verify-full".to_owned(),
            ),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

/// How one target talks TLS: the mode, the root certificate file, and the rustls configuration built from them
/// (once, when the target is parsed, so a bad certificate file is reported then, not on every connect).
#[derive(Clone)]
pub struct Tls {
    mode: SslMode,
    /// Whether the mode was written in the URL (then it is written back by `to_url`).
    explicit: bool,
    root_cert: Option<PathBuf>,
    config: Option<Arc<ClientConfig>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("mode", &self.mode)
            .field("root_cert", &self.root_cert)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// No TLS (Unix sockets).
    pub fn disabled() -> Self {
        Self {
            mode: SslMode::Disable,
            explicit: false,
            root_cert: None,
            config: None,
        }
    }

    /// The TLS of a target: `mode` as given in the URL, or the default for the host (see the module doc).
    pub fn new(
        mode: Option<SslMode>,
        root_cert: Option<PathBuf>,
        host: Option<&str>,
    ) -> Result<Self, String> {
        let explicit = mode.is_some();
        let mode = match (mode, host) {
            (_, None) => SslMode::Disable,
            (Some(mode), Some(_)) => mode,
            (None, Some(host)) if is_loopback(host) => SslMode::Prefer,
            (None, Some(_)) => SslMode::Require,
        };
        if host.is_none()
            && matches!(
                mode,
                SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
            )
            && explicit
        {
            return Err(format!(
                "sslmode={} needs a TCP host (a Unix socket has no TLS)",
                mode.as_str()
            ));
        }
        let config = match mode {
            SslMode::Disable => None,
            SslMode::Prefer | SslMode::Require => Some(match &root_cert {
                Some(path) => client_config(path, Verify::Chain)?,
                None => unverified_config()?,
            }),
            SslMode::VerifyCa | SslMode::VerifyFull => {
                let path = root_cert.as_deref().ok_or_else(|| {
                    format!(
                        "sslmode={} needs sslrootcert=<file with the CA certificate(s)>",
                        mode.as_str()
                    )
                })?;
                let verify = if mode == SslMode::VerifyFull {
                    Verify::Full
                } else {
                    Verify::Chain
                };
                Some(client_config(path, verify)?)
            }
        };
        Ok(Self {
            mode,
            explicit,
            root_cert,
            config,
        })
    }

    pub fn mode(&self) -> SslMode {
        self.mode
    }

    pub fn root_cert(&self) -> Option<&Path> {
        self.root_cert.as_deref()
    }

    /// The URL query parameters that reproduce this TLS (empty for a default mode without a root certificate).
    pub fn url_params(&self) -> Vec<(&'static str, String)> {
        let mut params = Vec::new();
        if self.explicit {
            params.push(("sslmode", self.mode.as_str().to_owned()));
        }
        if let Some(path) = &self.root_cert {
            params.push(("sslrootcert", path.display().to_string()));
        }
        params
    }

    /// tokio-postgres' own mode: it decides whether to ask for TLS; our connector decides what is verified.
    pub fn tokio_mode(&self) -> tokio_postgres::config::SslMode {
        match self.mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        }
    }

    /// The connector for tokio-postgres.
    pub fn connector(&self) -> MakeTls {
        MakeTls {
            config: self.config.clone(),
        }
    }

    /// The same mode and root certificate for sqlx (which implements `verify-ca`/`verify-full` itself).
    pub fn apply_to_sqlx(&self, options: PgConnectOptions) -> PgConnectOptions {
        let options = options.ssl_mode(match self.mode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require => PgSslMode::Require,
            SslMode::VerifyCa => PgSslMode::VerifyCa,
            SslMode::VerifyFull => PgSslMode::VerifyFull,
        });
        match &self.root_cert {
            Some(path) => options.ssl_root_cert(path),
            None => options,
        }
    }
}

/// Whether a host name or address is this machine's loopback (`localhost`, `127.0.0.0/8`, `::1`).
pub fn is_loopback(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Verify {
    /// The chain up to a root of `sslrootcert`, any name (`verify-ca`).
    Chain,
    /// The chain and the host name (`verify-full`).
    Full,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn builder() -> Result<rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>, String> {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))
}

/// Encrypts, verifies no certificate (libpq's `require` and `prefer` without a root certificate). Handshake
/// signatures are still checked, so the peer holds the key of the certificate it shows.
fn unverified_config() -> Result<Arc<ClientConfig>, String> {
    let config = builder()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate {
            provider: provider(),
        }))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn client_config(root_cert: &Path, verify: Verify) -> Result<Arc<ClientConfig>, String> {
    let shown = root_cert.display();
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(root_cert)
        .map_err(|e| format!("sslrootcert {shown}: cannot read it ({e})"))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("sslrootcert {shown}: not a PEM certificate ({e})"))?;
        roots
            .add(cert)
            .map_err(|e| format!("sslrootcert {shown}: not a usable CA certificate ({e})"))?;
    }
    if roots.is_empty() {
        return Err(format!("sslrootcert {shown}: holds no certificate"));
    }
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| format!("sslrootcert {shown}: {e}"))?;
    let config = match verify {
        Verify::Full => builder()?
            .with_webpki_verifier(webpki)
            .with_no_client_auth(),
        Verify::Chain => builder()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainOnly { webpki }))
            .with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// `verify-ca`: the chain must lead to a trusted root; the name in the certificate is not compared.
#[derive(Debug)]
struct ChainOnly {
    webpki: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain (and validity dates) before the name: a name error means the chain is good.
        match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// `require`/`prefer` without a root certificate: any certificate, as libpq does.
#[derive(Debug)]
struct AnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The tokio-postgres connector: one [`TlsConnector`] per connection, for the host being connected to.
#[derive(Clone)]
pub struct MakeTls {
    config: Option<Arc<ClientConfig>>,
}

impl<S> MakeTlsConnect<S> for MakeTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsConnection<S>;
    type TlsConnect = TlsConnector;
    type Error = io::Error;

    /// Called for every host before connecting, also when no TLS will be asked for (`disable`, Unix sockets):
    /// what cannot work is reported by `connect`, which then is never reached.
    fn make_tls_connect(&mut self, domain: &str) -> io::Result<TlsConnector> {
        Ok(TlsConnector {
            config: self.config.clone(),
            name: ServerName::try_from(domain.to_owned()).ok(),
            domain: domain.to_owned(),
        })
    }
}

pub struct TlsConnector {
    config: Option<Arc<ClientConfig>>,
    name: Option<ServerName<'static>>,
    domain: String,
}

impl<S> TlsConnect<S> for TlsConnector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsConnection<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TlsConnection<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let config = self.config.ok_or_else(|| {
                io::Error::other("TLS is disabled for this server (sslmode=disable)")
            })?;
            let name = self.name.ok_or_else(|| {
                io::Error::other(format!("{:?} is not a valid TLS server name", self.domain))
            })?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, stream)
                .await?;
            Ok(TlsConnection(Box::new(stream)))
        })
    }
}

/// An established TLS stream (boxed: rustls' connection state is large).
pub struct TlsConnection<S>(Box<tokio_rustls::client::TlsStream<S>>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsConnection<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsConnection<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for TlsConnection<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_mode_is_require_for_remote_hosts_and_prefer_for_loopback() {
        let remote = Tls::new(None, None, Some("db.example")).unwrap();
        assert_eq!(remote.mode(), SslMode::Require);
        for host in ["localhost", "127.0.0.1", "127.1.2.3", "::1", "[::1]"] {
            assert_eq!(
                Tls::new(None, None, Some(host)).unwrap().mode(),
                SslMode::Prefer,
                "{host}"
            );
        }
        assert_eq!(Tls::new(None, None, None).unwrap().mode(), SslMode::Disable);
    }

    #[test]
    fn verifying_modes_need_a_root_certificate_and_allow_is_refused() {
        let err = Tls::new(Some(SslMode::VerifyFull), None, Some("db.example")).unwrap_err();
        assert!(err.contains("sslrootcert"), "{err}");
        assert!(
            SslMode::parse("allow")
                .unwrap_err()
                .contains("not supported")
        );
        assert!(SslMode::parse("bogus").is_err());
    }

    #[test]
    fn an_unreadable_root_certificate_is_named_in_the_error() {
        let err = Tls::new(
            Some(SslMode::VerifyCa),
            Some(PathBuf::from("/nonexistent/ca.pem")),
            Some("db.example"),
        )
        .unwrap_err();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    }
}
