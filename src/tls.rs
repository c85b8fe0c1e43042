//! Server certificates for RTMPS ingest and the HTTPS API: loading a PEM chain and key into
//! a rustls `ServerConfig`, swapping it on SIGHUP, and the self-signed RTMPS certificate
//! made on first start when none is configured.
//!
//! Owns: [`ServerTls`] (the current `Arc<ServerConfig>` of one listener behind a
//! `RwLock`, cheap to read at every accept; a reload that fails keeps the old one) and
//! [`self_signed`]. Never touches sockets: the listeners take [`ServerTls::current`] per
//! connection, so a reload affects only connections accepted after it and live streams
//! keep their session.
//!
//! Crates: rustls with the ring provider (no OpenSSL and no aws-lc-rs, which needs cmake
//! and a C cross toolchain for the ARM builds); PEM parsing with `rustls-pki-types`'
//! `PemObject`; rcgen (the rustls project's generator) for the self-signed certificate;
//! yasna (the DER reader and writer rcgen is built on, so already linked) to read
//! `notBefore`/`notAfter`, because rustls serves an expired certificate without a word
//! and the operator would only learn about it from encoders failing to connect. (It was
//! x509-parser, which parses every extension and carries an OID registry: ~100 KB of a
//! binary with a 10 MB budget, for two dates.) SHA-256 fingerprints come from ring,
//! already linked for rustls.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

/// A certificate or key could not be used. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: no PEM certificate in the file ({reason})", path.display())]
    NoCertificate { path: PathBuf, reason: String },
    #[error("{}: no PEM private key in the file ({reason})", path.display())]
    NoKey { path: PathBuf, reason: String },
    #[error("{}: the certificate cannot be parsed: {reason}", path.display())]
    BadCertificate { path: PathBuf, reason: String },
    #[error("{}: the certificate expired on {not_after}", path.display())]
    Expired { path: PathBuf, not_after: String },
    #[error("{}: the certificate is not valid before {not_before}", path.display())]
    NotYetValid { path: PathBuf, not_before: String },
    #[error("{} with key {}: {reason}", cert.display(), key.display())]
    Rejected {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("cannot write the self-signed certificate {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(String),
}

/// A loaded certificate: the rustls config serving it and the leaf's SHA-256 fingerprint.
#[derive(Debug)]
pub struct Loaded {
    pub config: Arc<ServerConfig>,
    /// SHA-256 of the leaf certificate's DER, as `AA:BB:...` (what `openssl x509
    /// -fingerprint -sha256` prints).
    pub fingerprint: String,
}

/// Reads `cert_file` (a PEM chain, leaf first) and `key_file` (PKCS#8, PKCS#1 or SEC1
/// PEM), checks the leaf's validity period against the clock and that the key matches,
/// and builds a server config offering `alpn` (empty: no ALPN).
pub fn load(cert_file: &Path, key_file: &Path, alpn: &[&[u8]]) -> Result<Loaded, TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let cert_pem = read(cert_file)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::NoCertificate {
            path: cert_file.to_owned(),
            reason: e.to_string(),
        })?;
    let Some(leaf) = chain.first() else {
        return Err(TlsError::NoCertificate {
            path: cert_file.to_owned(),
            reason: "no CERTIFICATE block".into(),
        });
    };
    check_validity(cert_file, leaf, crate::clock::now_ms() / 1000)?;
    let fingerprint = fingerprint(leaf);
    let key = PrivateKeyDer::from_pem_slice(&read(key_file)?).map_err(|e| TlsError::NoKey {
        path: key_file.to_owned(),
        reason: e.to_string(),
    })?;
    let rejected = |e: rustls::Error| TlsError::Rejected {
        cert: cert_file.to_owned(),
        key: key_file.to_owned(),
        reason: match e {
            rustls::Error::InconsistentKeys(_) => {
                "the private key does not match the certificate".into()
            }
            e => e.to_string(),
        },
    };
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(rejected)?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(rejected)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Loaded {
        config: Arc::new(config),
        fingerprint,
    })
}

/// Errors unless `now_s` (Unix seconds) is within the certificate's validity period.
fn check_validity(path: &Path, der: &CertificateDer<'_>, now_s: i64) -> Result<(), TlsError> {
    let (not_before, not_after) = validity(der).map_err(|e| TlsError::BadCertificate {
        path: path.to_owned(),
        reason: format!("not an X.509 certificate: {e}"),
    })?;
    let date = |s: i64| crate::clock::rfc3339(s.saturating_mul(1000));
    if now_s > not_after {
        return Err(TlsError::Expired {
            path: path.to_owned(),
            not_after: date(not_after),
        });
    }
    if now_s < not_before {
        return Err(TlsError::NotYetValid {
            path: path.to_owned(),
            not_before: date(not_before),
        });
    }
    Ok(())
}

/// A certificate's `notBefore` and `notAfter` (Unix seconds), from its DER (RFC 5280
/// section 4.1: `Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version
/// OPTIONAL, serialNumber, signature, issuer, validity SEQUENCE { notBefore, notAfter },
/// ... }, signatureAlgorithm, signatureValue }`).
fn validity(der: &[u8]) -> Result<(i64, i64), yasna::ASN1Error> {
    use yasna::{ASN1Result, BERReader, BERReaderSeq, Tag};
    fn time(r: BERReader<'_, '_>) -> ASN1Result<i64> {
        Ok(if r.lookahead_tag()? == yasna::tags::TAG_UTCTIME {
            r.read_utctime()?.datetime().unix_timestamp()
        } else {
            r.read_generalized_time()?.datetime().unix_timestamp()
        })
    }
    fn skip_rest(seq: &mut BERReaderSeq<'_, '_>) -> ASN1Result<()> {
        while seq.read_optional(|r| r.read_der())?.is_some() {}
        Ok(())
    }
    yasna::parse_der(der, |r| {
        r.read_sequence(|cert| {
            let validity = cert.next().read_sequence(|tbs| {
                tbs.read_optional(|r| r.read_tagged(Tag::context(0), |r| r.read_der()))?;
                for _ in 0..3 {
                    tbs.next().read_der()?; // serialNumber, signature, issuer
                }
                let validity = tbs
                    .next()
                    .read_sequence(|v| Ok((time(v.next())?, time(v.next())?)))?;
                skip_rest(tbs)?;
                Ok(validity)
            })?;
            skip_rest(cert)?;
            Ok(validity)
        })
    })
}

/// SHA-256 of a DER certificate as colon-separated upper-case hex.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// One listener's certificate: the files it comes from and the config now served.
pub struct ServerTls {
    /// `rtmps` or `https`, for log lines.
    pub name: &'static str,
    cert_file: PathBuf,
    key_file: PathBuf,
    alpn: Vec<&'static [u8]>,
    current: RwLock<Arc<ServerConfig>>,
}

impl ServerTls {
    /// Loads the certificate once; an error here should stop the daemon from starting.
    pub fn load(
        name: &'static str,
        cert_file: PathBuf,
        key_file: PathBuf,
        alpn: Vec<&'static [u8]>,
    ) -> Result<(ServerTls, String), TlsError> {
        let loaded = load(&cert_file, &key_file, &alpn)?;
        let tls = ServerTls {
            name,
            cert_file,
            key_file,
            alpn,
            current: RwLock::new(loaded.config),
        };
        Ok((tls, loaded.fingerprint))
    }

    /// The config for a connection accepted now.
    pub fn current(&self) -> Arc<ServerConfig> {
        match self.current.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reads the files again; on success new connections get the new certificate (and its
    /// fingerprint is returned), on error the old one stays.
    pub fn reload(&self) -> Result<String, TlsError> {
        let loaded = load(&self.cert_file, &self.key_file, &self.alpn)?;
        match self.current.write() {
            Ok(mut c) => *c = loaded.config,
            Err(poisoned) => *poisoned.into_inner() = loaded.config,
        }
        Ok(loaded.fingerprint)
    }

    pub fn cert_file(&self) -> &Path {
        &self.cert_file
    }
}

/// Reloads every certificate on each SIGHUP until `cancel`: a good file is logged with its
/// new fingerprint, a bad one is logged as an error and the old certificate kept.
pub async fn reload_on_sighup(
    certs: Vec<Arc<ServerTls>>,
    cancel: tokio_util::sync::CancellationToken,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install the SIGHUP handler; certificates will not reload");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = hup.recv() => if r.is_none() { return },
        }
        if certs.is_empty() {
            tracing::info!("SIGHUP: no TLS certificates configured, nothing to reload");
        }
        for tls in &certs {
            let t = tls.clone();
            match tokio::task::spawn_blocking(move || t.reload()).await {
                Ok(Ok(fp)) => {
                    tracing::info!(listener = tls.name, file = %tls.cert_file().display(), sha256 = %fp, "SIGHUP: certificate reloaded")
                }
                Ok(Err(e)) => {
                    tracing::error!(listener = tls.name, error = %e, "SIGHUP: certificate not reloaded, keeping the old one")
                }
                Err(e) => {
                    tracing::error!(listener = tls.name, error = %e, "SIGHUP: reload task failed, keeping the old certificate")
                }
            }
        }
    }
}

/// The self-signed RTMPS certificate in `dir` (`rtmps.pem`, `rtmps.key`): generated with
/// rcgen on first use, then reused so a fingerprint pinned in an encoder stays valid.
/// Returns the two paths and whether they were just made.
pub fn self_signed(dir: &Path) -> Result<(PathBuf, PathBuf, bool), TlsError> {
    let cert_file = dir.join("rtmps.pem");
    let key_file = dir.join("rtmps.key");
    if cert_file.exists() && key_file.exists() {
        return Ok((cert_file, key_file, false));
    }
    let write_err = |path: &Path| {
        let path = path.to_owned();
        move |source| TlsError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(write_err(dir))?;
    // Encoders pin the fingerprint; the names only help a human reading the certificate.
    let names = vec!["edgerec".to_owned(), "localhost".to_owned()];
    let mut params =
        rcgen::CertificateParams::new(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "edgerec RTMPS (self-signed)");
    let key = rcgen::KeyPair::generate().map_err(|e| TlsError::Generate(e.to_string()))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    // The key first and only readable by us; the certificate last, since its presence
    // (with the key) is what marks the pair complete.
    write_private(&key_file, key.serialize_pem().as_bytes()).map_err(write_err(&key_file))?;
    let tmp = cert_file.with_extension("pem.tmp");
    std::fs::write(&tmp, cert.pem()).map_err(write_err(&tmp))?;
    std::fs::rename(&tmp, &cert_file).map_err(write_err(&cert_file))?;
    Ok((cert_file, key_file, true))
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_is_made_once_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, made) = self_signed(dir.path()).unwrap();
        assert!(made);
        let first = load(&cert, &key, &[]).unwrap().fingerprint;
        assert_eq!(first.len(), 32 * 3 - 1, "{first}");
        let (cert, key, made) = self_signed(dir.path()).unwrap();
        assert!(!made, "reused on the next start");
        assert_eq!(load(&cert, &key, &[]).unwrap().fingerprint, first);
    }

    #[test]
    fn garbage_and_missing_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.pem");
        std::fs::write(&bad, "not a certificate\n").unwrap();
        let err = load(&bad, &bad, &[]).unwrap_err().to_string();
        assert!(
            err.contains("bad.pem") && err.contains("no PEM certificate"),
            "{err}"
        );
        let missing = dir.path().join("missing.pem");
        let err = load(&missing, &bad, &[]).unwrap_err().to_string();
        assert!(
            err.contains("cannot read") && err.contains("missing.pem"),
            "{err}"
        );
    }

    #[test]
    fn a_key_that_does_not_match_is_rejected() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (cert, _, _) = self_signed(a.path()).unwrap();
        let (_, other_key, _) = self_signed(b.path()).unwrap();
        let err = load(&cert, &other_key, &[]).unwrap_err();
        assert!(matches!(err, TlsError::Rejected { .. }), "{err}");
    }

    #[test]
    fn validity_is_checked_against_the_clock() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _, _) = self_signed(dir.path()).unwrap();
        let pem = std::fs::read(&cert).unwrap();
        let der = CertificateDer::from_pem_slice(&pem).unwrap();
        // rcgen's default period: 1975-01-01 to 4096-01-01.
        assert!(check_validity(&cert, &der, 1_700_000_000).is_ok());
        let err = check_validity(&cert, &der, 0).unwrap_err();
        assert!(matches!(err, TlsError::NotYetValid { .. }), "{err}");
        let err = check_validity(&cert, &der, 70_000_000_000).unwrap_err();
        assert!(err.to_string().contains("expired"), "{err}");
    }
}
