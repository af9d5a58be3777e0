//! The TLS of `https:` checks, with rustls: the handshake over the check's connection,
//! then the HTTP exchange inside it. Without `tls_verify` the certificate is accepted as
//! it is (an NLB target group's HTTPS check does not verify either), but the handshake
//! itself is still checked: the server must prove it holds the certificate's key.

use super::probe::FailReason;
use super::spec::TlsCheck;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Debian's bundle of the system's trusted CAs (package ca-certificates).
pub const SYSTEM_CA: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Runs the TLS handshake over `stream` (a connection to `target`), naming the server
/// `host` (the `Host` header without its port) or else the target's address.
pub async fn connect(
    stream: TcpStream,
    target: SocketAddr,
    host: Option<&str>,
    spec: &TlsCheck,
) -> Result<TlsStream<TcpStream>, FailReason> {
    let config = client_config(spec)?;
    let name = server_name(host, target);
    TlsConnector::from(config)
        .connect(name, stream)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData | std::io::ErrorKind::Other => {
                FailReason::Tls(e.to_string())
            }
            _ => FailReason::from(&e),
        })
}

/// The name the client sends (SNI) and verifies: the host part of the `Host` header if
/// it has one, else the backend's address.
fn server_name(host: Option<&str>, target: SocketAddr) -> ServerName<'static> {
    let from_host = host.and_then(|h| {
        let bare = match h.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(v6),
            None => h.rsplit_once(':').map_or(h, |(name, _)| name),
        };
        ServerName::try_from(bare.to_string()).ok()
    });
    from_host.unwrap_or_else(|| ServerName::IpAddress(target.ip().into()))
}

/// Client configurations by (verify, CA file).
type Configs = HashMap<(bool, Option<PathBuf>), Arc<ClientConfig>>;

/// The client configuration of `spec`, built once per (verify, CA file) and shared by
/// every check that uses it.
fn client_config(spec: &TlsCheck) -> Result<Arc<ClientConfig>, FailReason> {
    static CONFIGS: Mutex<Option<Configs>> = Mutex::new(None);
    let key = (spec.verify, spec.ca.clone());
    let mut configs = CONFIGS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = configs.get_or_insert_with(HashMap::new).get(&key) {
        return Ok(c.clone());
    }
    let config = Arc::new(build(spec).map_err(FailReason::Tls)?);
    configs
        .get_or_insert_with(HashMap::new)
        .insert(key, config.clone());
    Ok(config)
}

fn build(spec: &TlsCheck) -> Result<ClientConfig, String> {
    // rustls deprecates ring's provider for its lack of post-quantum key exchange. A
    // health check carries no secret worth recording for later decryption, and ring
    // builds with a C compiler alone (aws-lc-rs, the other provider, needs cmake).
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let config = if spec.verify {
        let ca = spec.ca.as_deref().unwrap_or(Path::new(SYSTEM_CA));
        builder
            .with_root_certificates(roots(ca)?)
            .with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth()
    };
    Ok(config)
}

/// The CA certificates of a PEM file; an error names the file and what is wrong.
pub fn roots(path: &Path) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    let certs =
        CertificateDer::pem_file_iter(path).map_err(|e| format!("{}: {e}", path.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
        store
            .add(cert)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if store.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(store)
}

/// Accepts any certificate, but checks the handshake's signatures with it.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_name_is_the_host_headers_host_else_the_address() {
        let target: SocketAddr = "198.18.1.11:443".parse().unwrap();
        let dns = |n: &str| ServerName::try_from(n.to_string()).unwrap();
        let ip = |a: &str| ServerName::IpAddress(a.parse::<std::net::IpAddr>().unwrap().into());
        assert_eq!(
            server_name(Some("api.example.com:8443"), target),
            dns("api.example.com")
        );
        assert_eq!(
            server_name(Some("api.example.com"), target),
            dns("api.example.com")
        );
        assert_eq!(server_name(Some("[fd00::1]:443"), target), ip("fd00::1"));
        assert_eq!(server_name(None, target), ip("198.18.1.11"));
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused_by_name() {
        let dir = std::env::temp_dir().join(format!("lb-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = roots(&empty).unwrap_err();
        assert!(e.contains("empty.pem"), "{e}");
        let e = roots(&dir.join("missing.pem")).unwrap_err();
        assert!(e.contains("missing.pem"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
