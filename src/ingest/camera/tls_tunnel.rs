//! `rtsps://` cameras: retina 0.4 has no TLS, so each session runs through a one-shot
//! local tunnel. We open the TCP connection to the camera, do the TLS handshake with
//! rustls (ring provider), and hand retina `rtsp://127.0.0.1:PORT/path` on a loopback
//! listener that accepts exactly one connection and pipes it to the TLS stream. RTP comes
//! interleaved on that connection (RTSPS with UDP is refused by the config).
//!
//! Owns: the client TLS config of a source, verifying the camera either against
//! `ca_file` (a PEM bundle; webpki rules, the URL's host must match the certificate) or
//! against a pinned SHA-256 certificate fingerprint (`tls_fingerprint`, for the
//! self-signed certificates cameras ship with), and the tunnel task's lifetime: it ends
//! when either side closes, and is aborted when the feed is dropped.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::config::SourceSpec;

/// The default RTSPS port (RFC 7826).
const RTSPS_PORT: u16 = 322;
/// retina must connect to the loopback end within this.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(10);

/// A live tunnel: the URL retina connects to, and the task piping it to the camera.
pub struct Tunnel {
    pub local_url: url::Url,
    task: JoinHandle<()>,
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Connects to the camera of an `rtsps://` `url` (credentials already removed) and
/// returns the tunnel retina should use instead.
pub async fn open(spec: &SourceSpec, url: &url::Url) -> Result<Tunnel, String> {
    let config = client_config(spec)?;
    let host = url.host_str().unwrap_or_default().to_owned();
    let port = url.port().unwrap_or(RTSPS_PORT);
    let tcp = TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
        .map_err(|e| format!("bad host {host:?} for TLS: {e}"))?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake with {host}:{port} failed: {e}"))?;
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("tunnel listener: {e}"))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("tunnel listener: {e}"))?;
    let task = tokio::spawn(async move {
        let Ok(Ok((mut inner, _))) = tokio::time::timeout(ACCEPT_TIMEOUT, listener.accept()).await
        else {
            return;
        };
        drop(listener); // One connection only.
        let _ = inner.set_nodelay(true);
        let _ = tokio::io::copy_bidirectional(&mut inner, &mut tls).await;
    });
    let mut local_url = url.clone();
    let rewritten = local_url.set_scheme("rtsp").is_ok()
        && local_url.set_host(Some("127.0.0.1")).is_ok()
        && local_url.set_port(Some(local.port())).is_ok();
    if !rewritten {
        task.abort();
        return Err(format!("cannot tunnel {url}"));
    }
    Ok(Tunnel { local_url, task })
}

/// The source's TLS client config: its CA bundle, or its pinned fingerprint.
fn client_config(spec: &SourceSpec) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    if let Some(pin) = &spec.tls_fingerprint {
        let verifier = Pinned {
            sha256: normalize(pin),
            provider,
        };
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth());
    }
    let Some(ca_file) = &spec.ca_file else {
        return Err("rtsps needs ca_file or tls_fingerprint".into());
    };
    let pem = std::fs::read(ca_file).map_err(|e| format!("ca_file {}: {e}", ca_file.display()))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("ca_file {}: {e}", ca_file.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("ca_file {}: {e}", ca_file.display()))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "ca_file {} holds no certificate",
            ca_file.display()
        ));
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// `AA:BB:..` upper-case, whatever separators and case the operator used.
pub fn normalize(fingerprint: &str) -> String {
    let hex: Vec<char> = fingerprint
        .chars()
        .filter(char::is_ascii_hexdigit)
        .map(|c| c.to_ascii_uppercase())
        .collect();
    hex.chunks(2)
        .map(|pair| pair.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join(":")
}

/// Accepts exactly the certificate with the pinned SHA-256 fingerprint (its chain, names
/// and dates are not checked: the pin is the trust), and still verifies the handshake's
/// signatures with it.
#[derive(Debug)]
struct Pinned {
    sha256: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = crate::tls::fingerprint(end_entity);
        if got == self.sha256 {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the camera's certificate fingerprint {got} is not the pinned tls_fingerprint"
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
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
        rustls::crypto::verify_tls13_signature(
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

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn fingerprints_compare_in_one_form() {
        assert_eq!(normalize("ab:cd:0f"), "AB:CD:0F");
        assert_eq!(normalize("ABCD0F"), "AB:CD:0F");
        assert_eq!(normalize("ab-CD-0f"), "AB:CD:0F");
    }
}
