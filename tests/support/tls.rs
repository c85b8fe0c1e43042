//! A TLS front for a plain-HTTP peer, as a venue's private object store would have: a
//! throwaway CA and a server certificate for 127.0.0.1 made with the `openssl` CLI, and
//! `socat` terminating TLS (OpenSSL's implementation, not ours) and forwarding to the peer.
//! The certificate helpers also serve the daemon's own RTMPS/HTTPS tests, and
//! [`fingerprint_served`] reads the certificate a TLS server presents with `openssl
//! s_client`.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::wait_for;

pub struct TlsFront {
    dir: tempfile::TempDir,
    child: Child,
    addr: SocketAddr,
}

impl TlsFront {
    /// Listens on an ephemeral loopback port and forwards every connection to `target`.
    pub fn start(target: SocketAddr) -> TlsFront {
        let dir = tempfile::tempdir().expect("tempdir");
        make_certificates(dir.path());
        // Pick a free port; socat binds it right after (loopback, nothing else races here).
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let cert = dir.path().join("server.pem");
        let key = dir.path().join("server.key");
        let child = Command::new("socat")
            .arg(format!(
                "OPENSSL-LISTEN:{},bind=127.0.0.1,reuseaddr,fork,cert={},key={},verify=0",
                addr.port(),
                cert.display(),
                key.display()
            ))
            .arg(format!("TCP:{target}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat must be installed (see scripts/install-test-deps.sh)");
        wait_for("socat listening", Duration::from_secs(10), || {
            TcpStream::connect(addr).ok()
        });
        TlsFront { dir, child, addr }
    }

    /// `https://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The PEM of the CA that signed the server certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CA (`ca.pem`) and a server certificate for IP 127.0.0.1 that it signed
/// (`server.pem`, `server.key`), P-256 keys, valid for two days.
pub fn make_certificates(dir: &Path) {
    make_ca(dir);
    sign_server_certificate(dir, "server", 2);
}

fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl must be installed (see scripts/install-test-deps.sh)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

const P256: [&str; 4] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];

/// A throwaway CA in `dir`: `ca.pem`, `ca.key`, valid for two days.
pub fn make_ca(dir: &Path) {
    openssl(
        dir,
        &[
            &[
                "req",
                "-x509",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=edgerec test CA",
            ][..],
            &P256,
            &["-keyout", "ca.key", "-out", "ca.pem"],
            &["-addext", "basicConstraints=critical,CA:TRUE"],
            &["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ]
        .concat(),
    );
}

/// A server certificate for IP 127.0.0.1 signed by the CA in `dir`, with a fresh P-256
/// key: `NAME.pem`, `NAME.key`. `days` below 0 makes one that has already expired
/// (notAfter `-days` days ago). Returns the certificate path.
pub fn sign_server_certificate(dir: &Path, name: &str, days: i32) -> PathBuf {
    let (key, csr, pem) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
    );
    openssl(
        dir,
        &[
            &["req", "-nodes", "-subj", "/CN=127.0.0.1"][..],
            &P256,
            &["-keyout", &key, "-out", &csr],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let days = days.to_string();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            &days,
            "-extfile",
            "server.ext",
            "-out",
            &pem,
        ],
    );
    dir.join(pem)
}

/// The SHA-256 fingerprint of a PEM certificate file, `AA:BB:...` as openssl prints it.
pub fn fingerprint_of(cert: &Path) -> String {
    let out = openssl(
        cert.parent().unwrap_or(Path::new(".")),
        &[
            "x509",
            "-noout",
            "-fingerprint",
            "-sha256",
            "-in",
            cert.to_str().unwrap(),
        ],
    );
    parse_fingerprint(&out)
}

/// The SHA-256 fingerprint of the certificate the TLS server at `addr` presents. With
/// `ca_file`, `openssl s_client -verify_return_error` must also verify it against that CA
/// (panics otherwise); without, any certificate is read (a self-signed one, to pin).
pub fn fingerprint_served(addr: &str, ca_file: Option<&Path>) -> String {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", addr]);
    if let Some(ca) = ca_file {
        cmd.args(["-verify_return_error", "-CAfile"]).arg(ca);
    }
    let out = cmd.stdin(Stdio::null()).output().expect("openssl s_client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let verified = ca_file.is_none() || stdout.contains("Verify return code: 0 (ok)");
    assert!(
        out.status.success() && verified,
        "s_client {addr} (CA {ca_file:?}) failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl x509");
    std::io::Write::write_all(&mut x509.stdin.take().unwrap(), &out.stdout).unwrap();
    let out = x509.wait_with_output().expect("openssl x509");
    assert!(out.status.success(), "no certificate from {addr}");
    parse_fingerprint(&out.stdout)
}

/// `sha256 Fingerprint=AA:BB:...` (OpenSSL 3) or `SHA256 Fingerprint=...` -> `AA:BB:...`.
fn parse_fingerprint(out: &[u8]) -> String {
    let text = String::from_utf8_lossy(out);
    text.trim()
        .split_once('=')
        .map(|(_, fp)| fp.trim().to_uppercase())
        .unwrap_or_else(|| panic!("no fingerprint in {text:?}"))
}
